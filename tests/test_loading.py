"""The real loaders, exercised on locally saved random-init weights in the real formats."""

import json
import shutil
import warnings

import pytest
import torch

from isacir.errors import FoundationLoadError, UnknownModelError
from isacir.foundation import create_foundation
from isacir.foundation.openclip import RandomInitWarning


def test_openclip_folder_and_file_forms_load_the_same_model(tiny_openclip_dir):
    as_dir, as_file = tiny_openclip_dir
    a, b = create_foundation(as_dir), create_foundation(as_file)
    assert a.fingerprint == b.fingerprint
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a.encode_image(x), b.encode_image(x))
        assert torch.equal(a.encode_text(["a red dog"]), b.encode_text(["a red dog"]))


def test_local_dir_schema_also_works(tiny_openclip_dir):
    folder = tiny_openclip_dir[0].split("@", 1)[1]
    f = create_foundation(f"openclip:local-dir:{folder}")
    assert f.fingerprint == create_foundation(tiny_openclip_dir[0]).fingerprint


def test_fingerprint_changes_with_weights_and_architecture(tmp_path, tiny_openclip_dir, blip_fnd):
    from isacir.testing import save_tiny_openclip

    base = create_foundation(tiny_openclip_dir[0])
    other_seed = create_foundation(save_tiny_openclip(tmp_path / "seed1", seed=1))
    assert other_seed.fingerprint != base.fingerprint
    # one changed weight is enough
    from safetensors.torch import load_file, save_file

    src = tiny_openclip_dir[0].split("@", 1)[1]
    dst = tmp_path / "edited"
    shutil.copytree(src, dst)
    state = load_file(str(dst / "open_clip_model.safetensors"))
    state["ln_final.bias"] = state["ln_final.bias"].clone()
    state["ln_final.bias"][0] += 1e-3
    save_file(state, str(dst / "open_clip_model.safetensors"))
    edited = create_foundation(f"openclip:x@{dst}")
    assert edited.fingerprint != base.fingerprint
    # a different architecture config with otherwise equal layout still differs
    cfg = json.loads((dst / "open_clip_config.json").read_text())
    cfg["model_cfg"]["quick_gelu"] = True
    (dst / "open_clip_config.json").write_text(json.dumps(cfg))
    assert create_foundation(f"openclip:x@{dst}").fingerprint != edited.fingerprint
    assert blip_fnd.fingerprint != base.fingerprint


def test_blip_saved_with_save_pretrained_loads_by_path(tiny_blip_name):
    f = create_foundation(tiny_blip_name)
    assert f.family == "hf-blip" and f.has_matching_head
    assert f.fingerprint == create_foundation(tiny_blip_name).fingerprint


def test_builtin_arch_without_tag_is_random_init_with_warning():
    with pytest.warns(RandomInitWarning, match="RANDOM weights drawn from the fixed seed 0"):
        f = create_foundation("openclip:ViT-S-32")
    assert f.word_dim == 384 and f.context_length == 77


def test_random_init_is_the_same_in_every_process_and_leaves_the_callers_rng_alone(tmp_path):
    """index, train and serve run in separate processes: they must agree on the random weights."""
    import subprocess
    import sys

    code = (
        "import warnings, torch; warnings.simplefilter('ignore'); torch.manual_seed({seed}); "
        "from isacir.foundation import create_foundation; "
        "before = torch.random.get_rng_state(); f = create_foundation('openclip:ViT-S-32'); "
        "assert torch.equal(before, torch.random.get_rng_state()); print(f.fingerprint)"
    )
    prints = {
        subprocess.run(
            [sys.executable, "-c", code.format(seed=s)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for s in (1, 2)
    }
    assert len(prints) == 1 and len(next(iter(prints))) == 16
    with pytest.warns(RandomInitWarning):
        assert create_foundation("openclip:ViT-S-32").fingerprint in prints


def test_same_name_other_weights_says_what_to_do(tmp_path, tiny_openclip_dir):
    """A query encoder whose foundation has the same name but other weights gets told how to fix it."""
    from isacir.errors import FoundationMismatchError
    from isacir.query import QueryEncoder
    from isacir.testing import save_tiny_openclip

    name = save_tiny_openclip(tmp_path / "clip", seed=0)
    qe = QueryEncoder.create(create_foundation(name), backbone="mobilenetv3_small_050", num_tokens=2, image_size=32)
    save_tiny_openclip(tmp_path / "clip", seed=1)  # retrained in place: same name, other weights
    with pytest.raises(FoundationMismatchError, match="Both are called .* but the weights differ"):
        qe.check_foundation(create_foundation(name))


def test_unknown_names_give_clear_errors():
    with pytest.raises(UnknownModelError, match="did you mean 'openclip'"):
        create_foundation("opencip:ViT-B-32")
    with pytest.raises(UnknownModelError, match="no family prefix"):
        create_foundation("ViT-B-32")
    with pytest.raises(UnknownModelError, match="Did you mean: ViT-B-32"):
        create_foundation("openclip:ViT-B-33")
    with pytest.raises(UnknownModelError, match="no pretrained tag 'nosuchtag'.*openai"):
        create_foundation("openclip:ViT-B-32/nosuchtag")


def test_missing_local_paths_are_reported(tmp_path):
    with pytest.raises(FoundationLoadError, match="checkpoint not found"):
        create_foundation(f"openclip:ViT-B-32@{tmp_path}/nope.pt")
    with pytest.raises(FoundationLoadError, match="without open_clip_config.json"):
        create_foundation(f"openclip:ViT-B-32@{tmp_path}")
    with pytest.raises(FoundationLoadError, match="folder not found"):
        create_foundation(f"hf-blip:{tmp_path}/missing")


def test_corrupt_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FoundationLoadError, match="cannot load open_clip model"):
        create_foundation(f"openclip:ViT-S-32@{bad}")


def test_offline_tag_names_model_and_local_path_option(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FoundationLoadError) as info:
            create_foundation("openclip:ViT-B-32/laion2b_s34b_b79k")
    msg = str(info.value)
    assert "ViT-B-32" in msg and "laion2b_s34b_b79k" in msg and "openclip:ViT-B-32@/path/to/checkpoint.pt" in msg


def test_offline_blip_id_explains_save_pretrained(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FoundationLoadError) as info:
        create_foundation("hf-blip:Salesforce/blip-itm-base-coco")
    msg = str(info.value)
    assert "Salesforce/blip-itm-base-coco" in msg and "save_pretrained" in msg and "hf-blip:DIR" in msg
