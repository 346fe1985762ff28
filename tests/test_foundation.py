"""The foundation interface, proved identically for open_clip and BLIP."""

import pytest
import torch
import torch.nn.functional as F

from isacir.compose import PromptTemplate
from isacir.errors import PseudoTokenError

TEMPLATE = "a photo of {} that {}"


def _spliced_vs_plain(fnd, words: str, modifier: str):
    emb = fnd.embed_words(words).unsqueeze(0)
    spliced = fnd.encode_composed(emb, [modifier], TEMPLATE)
    plain = fnd.encode_text([PromptTemplate.parse(TEMPLATE).render(words, modifier)])
    return spliced, plain


@pytest.mark.parametrize(
    "words,modifier",
    [("dog", ""), ("dog", "is red"), ("red car", "make it blue"), ("sleeveless dress", "same but in black leather")],
)
def test_splicing_real_word_embeddings_equals_plain_text(foundation, words, modifier):
    with torch.no_grad():
        spliced, plain = _spliced_vs_plain(foundation, words, modifier)
    assert spliced.shape == (1, foundation.embed_dim)
    assert torch.allclose(spliced, plain, atol=1e-5), (spliced - plain).abs().max()


def test_splicing_batch_with_mixed_modifiers(foundation):
    words = ["dog", "cat", "red car"]
    mods = ["is red", "", "that is on the left"]
    n = max(len(foundation.tokenizer.encode(w)) for w in words)
    # pad shorter words with the embedding of "a" so all queries have the same N
    pad = foundation.embed_words("a")[0]
    toks, texts = [], []
    for w, m in zip(words, mods, strict=True):
        e = foundation.embed_words(w)
        extra = n - e.shape[0]
        toks.append(torch.cat([pad.expand(extra, -1), e]) if extra else e)
        texts.append(PromptTemplate.parse(TEMPLATE).render(("a " * extra) + w, m))
    with torch.no_grad():
        spliced = foundation.encode_composed(torch.stack(toks), mods, TEMPLATE)
        plain = foundation.encode_text(texts)
    assert torch.allclose(spliced, plain, atol=1e-5)


def test_several_modifiers_are_averaged(foundation):
    emb = foundation.embed_words("dog").unsqueeze(0)
    with torch.no_grad():
        both = foundation.encode_composed(emb, [["is red", "is small"]])
        a = foundation.encode_composed(emb, ["is red"])
        b = foundation.encode_composed(emb, ["is small"])
    expected = F.normalize(a + b, dim=-1)
    assert torch.allclose(both, expected, atol=1e-6)


def test_long_modifier_is_truncated_and_tokens_kept(foundation):
    n = foundation.max_pseudo_tokens(TEMPLATE)
    long_mod = " ".join(["red blue green"] * 40)
    tokens = torch.randn(2, n, foundation.word_dim)
    with torch.no_grad():
        out = foundation.encode_composed(tokens, [long_mod, ""])
    assert out.shape == (2, foundation.embed_dim) and torch.isfinite(out).all()
    with pytest.raises(PseudoTokenError, match="exceed"):
        foundation.encode_composed(torch.randn(1, n + 1, foundation.word_dim), [""])


def test_truncation_matches_library_tokenizer_for_openclip(openclip_fnd):
    """open_clip keeps the first context-1 tokens plus EOT; our composition does the same."""
    fnd = openclip_fnd
    long_mod = " ".join(["red blue green"] * 20)
    emb = fnd.embed_words("dog").unsqueeze(0)
    with torch.no_grad():
        spliced = fnd.encode_composed(emb, [long_mod])
        plain = fnd.encode_text([f"a photo of dog that {long_mod}"])
    assert torch.allclose(spliced, plain, atol=1e-5)


def test_plain_tokenization_equals_library(openclip_fnd, blip_fnd):
    import open_clip

    texts = ["a photo of a dog", "Red, blue & GREEN!", ""]
    ids, _ = openclip_fnd.tokenize(texts)
    lib = open_clip.get_tokenizer(openclip_fnd.name.split("@", 1)[1].join(["local-dir:", ""]))(texts)
    assert torch.equal(ids, lib)
    ids, mask = blip_fnd.tokenize(texts)
    hf = blip_fnd.processor.tokenizer(texts, padding=True, return_tensors="pt")
    assert torch.equal(ids, hf["input_ids"]) and torch.equal(mask, hf["attention_mask"])


def test_image_features_global_and_local(foundation):
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        g = foundation.encode_image(pixels)
        feats = foundation.encode_image_features(pixels)
    assert g.shape == (3, foundation.embed_dim)
    assert torch.allclose(g, feats.global_, atol=1e-6)
    assert torch.allclose(g.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert feats.local.shape == (3, 16, foundation.embed_dim)  # 32 px / patch 8 = 4x4 patches


def test_openclip_global_matches_library_encode_image(openclip_fnd):
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = openclip_fnd.encode_image(pixels)
        openclip_fnd.model.visual.output_tokens = False
        try:
            lib = openclip_fnd.model.encode_image(pixels, normalize=True)
        finally:
            openclip_fnd.model.visual.output_tokens = True
    assert torch.allclose(ours, lib, atol=1e-6)


def test_blip_itc_matches_library_forward(blip_fnd):
    pixels = torch.randn(2, 3, 32, 32)
    ids, mask = blip_fnd.tokenize(["a photo of dog", "a red car"])
    with torch.no_grad():
        lib = blip_fnd.model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_itm_head=False).itm_score
        ours = blip_fnd.encode_image(pixels) @ blip_fnd.encode_text(["a photo of dog", "a red car"]).T
    assert torch.allclose(ours, lib, atol=1e-5)


def test_blip_itm_composed_equals_text_and_library(blip_fnd):
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        hidden = blip_fnd.encode_image_features(pixels).hidden
        by_text = blip_fnd.match_score(hidden, texts=["a photo of dog that is red", "a photo of cat"])
        emb = torch.stack([blip_fnd.embed_words("dog"), blip_fnd.embed_words("cat")])
        by_tokens = blip_fnd.match_score(hidden, pseudo_tokens=emb, modifiers=["is red", ""])
        ids, mask = blip_fnd.tokenize(["a photo of dog that is red", "a photo of cat"])
        logits = blip_fnd.model(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_itm_head=True).itm_score
    assert torch.allclose(by_text, by_tokens, atol=1e-5)
    assert torch.allclose(by_text, logits[:, 1] - logits[:, 0], atol=1e-5)


def test_openclip_has_no_matching_head(openclip_fnd):
    assert openclip_fnd.match_score(torch.zeros(1, 2, 3), texts=["x"]) is None


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda f: torch.randn(1, 2, f.word_dim + 1), r"D=\d+"),
        (lambda f: torch.randn(1, 0, f.word_dim), "at least one"),
        (lambda f: torch.randn(2, f.word_dim), r"\[B, N, D\]"),
        (lambda f: torch.full((1, 2, f.word_dim), float("nan")), "NaN or Inf"),
        (lambda f: torch.ones(1, 2, f.word_dim, dtype=torch.long), "floating point"),
        (lambda f: [[0.0]], "torch.Tensor"),
    ],
)
def test_bad_pseudo_tokens_are_refused(foundation, make, match):
    with pytest.raises(PseudoTokenError, match=match):
        foundation.encode_composed(make(foundation), None)


def test_wrong_token_count_for_encoder_is_refused(foundation):
    with pytest.raises(PseudoTokenError, match="expected N=8"):
        foundation.encode_composed(torch.randn(1, 4, foundation.word_dim), [""], expected_tokens=8)


def test_inf_in_one_query_names_it(foundation):
    t = torch.randn(3, 2, foundation.word_dim)
    t[2, 1, 0] = float("inf")
    with pytest.raises(PseudoTokenError, match=r"queries \[2\]"):
        foundation.encode_composed(t, None)


def test_gradients_reach_pseudo_tokens_only(foundation):
    tokens = torch.randn(2, 3, foundation.word_dim, requires_grad=True)
    feats = foundation.encode_composed(tokens, ["is red", ""])
    feats.sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in foundation.parameters())


def test_foundation_stays_in_eval_mode(foundation):
    foundation.train()
    assert not foundation.training and not any(m.training for m in foundation.modules())


def test_concurrent_composition_is_thread_safe(foundation):
    """Serving runs queries in threads; each must get its own pseudo tokens spliced in."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    queries = [torch.randn(2, 3, foundation.word_dim) for _ in range(12)]
    with torch.no_grad():
        expected = [foundation.encode_composed(q, ["is red", ""]) for q in queries]
        plain = foundation.encode_text(["a photo of dog"])

        def work(i):
            if i % 3 == 0:  # plain text encodes interleave with composed ones
                return foundation.encode_text(["a photo of dog"])
            return foundation.encode_composed(queries[i], ["is red", ""])

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(work, range(12)))
    for i, r in enumerate(results):
        assert torch.allclose(r, plain if i % 3 == 0 else expected[i], atol=1e-6)


def test_openclip_truncated_text_path_matches_library(openclip_fnd):
    """The fast path (skipping padding positions) must equal open_clip's own encode_text."""
    import open_clip

    assert openclip_fnd._fast_text, "fast text path should be active for a causal CLIP text tower"
    texts = ["a photo of dog", "a photo of a red car that is now blue and on the left", ""]
    lib_tok = open_clip.get_tokenizer("local-dir:" + openclip_fnd.name.split("@", 1)[1])
    with torch.no_grad():
        lib = F.normalize(openclip_fnd.model.encode_text(lib_tok(texts)), dim=-1)
        ours = openclip_fnd.encode_text(texts)
        emb = openclip_fnd.embed_words("dog").unsqueeze(0)
        spliced = openclip_fnd.encode_composed(emb, [""])
    assert torch.allclose(ours, lib, atol=1e-5)
    assert torch.allclose(spliced, lib[:1], atol=1e-5)


def test_device_resolution_and_inference_precision(monkeypatch, tiny_openclip_dir):
    import torch

    from isacir.foundation import DeviceError, create_foundation, resolve_device
    from isacir.foundation.registry import inference_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    with pytest.raises(DeviceError, match="sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match="there are 2 CUDA device"):
        resolve_device("cuda:2")
    # bf16 where the GPU has it, fp16 otherwise, nothing on a CPU or when fp32 is asked for
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert inference_dtype(cuda) == torch.bfloat16 and inference_dtype(cuda, "fp16") == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert inference_dtype(cuda) == torch.float16 and inference_dtype(cuda, "fp32") is None
    assert inference_dtype(torch.device("cpu"), "bf16") is None
    with pytest.raises(DeviceError, match="precision must be"):
        inference_dtype(cuda, "int8")
    monkeypatch.undo()
    fnd = create_foundation(tiny_openclip_dir[0], device="auto")
    assert fnd.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if fnd.device.type == "cpu":
        assert fnd.inference_dtype is None and fnd.encode_text(["a red car"]).dtype == torch.float32


@pytest.mark.parametrize("verb", [["index"], ["search"], ["eval"], ["serve"], ["adapt"], ["bench", "index"]])
def test_the_model_verbs_take_a_device(verb):
    from typer.testing import CliRunner

    from isacir.cli import app as cli

    r = CliRunner().invoke(cli, [*verb, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--device" in r.output
