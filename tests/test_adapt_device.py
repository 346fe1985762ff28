"""Where the adapter lives: on its foundation's device, for training and for serving.

The hooks of an adapter run inside the foundation's forward, on that forward's tensors, so an
adapter served or trained with a foundation on a GPU must be there too. Without a GPU the move is
checked against torch's ``meta`` device, which any machine has; the GPU test runs where there is one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from serve_helpers import build_service
from test_adapt import _synthetic_feedback

from isacir.adapt import AdaptSettings, adapt
from isacir.adapter import QueryAdapter, new_adapter


def _lora_adapter(fnd) -> QueryAdapter:
    return new_adapter(fnd, "qe", 2, "a photo of {} that {}", [5, 7], ["x", "y"], 8, lora_rank=2, lora_attention=True)


def test_an_adapter_follows_its_foundations_device(openclip_fnd):
    adapter = _lora_adapter(openclip_fnd)
    assert adapter.device == openclip_fnd.device == torch.device("cpu")
    elsewhere = SimpleNamespace(device=torch.device("meta"))
    adapter.follow(elsewhere)
    assert adapter.device.type == "meta"
    assert all(p.device.type == "meta" for p in adapter.parameters())
    assert all(b.device.type == "meta" for b in adapter.buffers())
    params = list(adapter.parameters())
    adapter.follow(elsewhere)  # already there: nothing moves
    assert all(a is b for a, b in zip(adapter.parameters(), params, strict=True))


def test_attaching_moves_the_adapter_to_its_foundation(openclip_fnd):
    """Serving attaches the adapter to the foundation (the search pipeline, the registry's line-up),
    so attach is where the move happens: a CPU adapter meets a CPU foundation, untouched."""
    adapter = _lora_adapter(openclip_fnd)
    calls = []
    adapter.follow = lambda fnd: calls.append(fnd)  # type: ignore[method-assign]
    adapter.attach(openclip_fnd)
    adapter.attach(openclip_fnd)  # hooked already: still checks the device
    assert calls == [openclip_fnd, openclip_fnd]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the CPU path is every other test)")
def test_adapt_trains_on_the_gpu_and_saves_a_folder_a_cpu_loads(tmp_path, tiny_openclip_dir, openclip_fnd):
    from isacir.foundation import create_foundation

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    _synthetic_feedback(state, 24, seed=3)
    gpu = create_foundation(tiny_openclip_dir[0], device="cuda")
    assert gpu.fingerprint == openclip_fnd.fingerprint  # the same weights: the gallery belongs to both
    settings = AdaptSettings(steps=8, lr=1e-2, batch_size=8, hidden=16, lora_rank=2, lora_attention=True)
    report = adapt(state.gallery, gpu, state.query_encoder, state.feedback, tmp_path / "a", settings, progress=False)
    saved = QueryAdapter.from_pretrained(tmp_path / "a")
    assert saved.device.type == "cpu" and saved.fingerprint == report["fingerprint"]
    assert report["loss"]["last"] < report["loss"]["first"]
    tokens = torch.randn(2, state.query_encoder.num_tokens, gpu.word_dim) * gpu.word_embedding_rms()
    on_gpu = saved.compose(gpu, tokens, ["red", "blue"], "a photo of {} that {}").cpu()
    assert saved.device.type == "cuda"
    on_cpu = saved.compose(openclip_fnd, tokens, ["red", "blue"], "a photo of {} that {}")
    assert torch.nn.functional.cosine_similarity(on_gpu, on_cpu).min() > 0.99
