"""Learning from operators: the query adapter, its training on feedback, and serving with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from serve_helpers import build_service

from isacir.adapt import AdaptSettings, adapt, domain_vocabulary
from isacir.adapt import data as adapt_data
from isacir.adapt import fit as adapt_fit
from isacir.adapt import settings as adapt_settings
from isacir.adapt import tuning as adapt_tuning
from isacir.adapter import AdapterMismatchError, QueryAdapter, new_adapter
from isacir.edge.payload import decode_payload, encode_payload
from isacir.errors import CheckpointError
from isacir.search import Retriever
from isacir.serve import ServiceState, create_app

WORDS = ["red", "blue", "striped", "round", "tiny", "shiny", "wooden", "square"]


@pytest.fixture(scope="module")
def service(tmp_path_factory, openclip_fnd):
    tmp = tmp_path_factory.mktemp("adapt")
    app, state, images = build_service(tmp, openclip_fnd, api_key=None, n_images=16)
    return app, state, tmp


def _synthetic_feedback(state, n: int, seed: int = 0, replay: int = 10) -> list[dict]:
    """Logged queries with random tokens, each with a positive (some corrected, some with rejections)."""
    rng = np.random.default_rng(seed)
    # in the order of the image files, not of the ids, which hash the build's own paths: the same
    # seed then draws the same images as positives whatever folder the gallery was built in
    ids = [it["id"] for it in sorted(state.gallery.items(), key=lambda it: Path(it["path"]).name)]
    scale = state.foundation.word_embedding_rms()
    qe = state.query_encoder
    made = []
    for i in range(n + replay):
        tokens = (rng.standard_normal((qe.num_tokens, qe.word_dim)) * scale).astype(np.float32)
        text = f"{rng.choice(WORDS)} and {rng.choice(WORDS)}"
        payload = encode_payload(tokens, state.qe_fingerprint)
        shown = [int(x) for x in rng.choice(ids, 5, replace=False)]
        qid = state.feedback.log_query(
            "tokens", text, payload, 5, shown, state.qe_fingerprint, state.foundation_fingerprint
        )
        if i >= n:
            continue  # unjudged: replay material
        positive = int(rng.choice(ids))
        if positive in shown:
            state.feedback.add(qid, positive, "confirmed")
        else:
            state.feedback.add(qid, shown[0], "rejected")
            state.feedback.add(qid, positive, "corrected")
        made.append({"query_id": qid, "tokens": decode_payload(payload).tokens, "text": text, "positive": positive})
    return made


def test_fresh_adapter_reproduces_served_results_exactly(service):
    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    ids, words = domain_vocabulary(["red and blue", "red striped", "blue"], fnd.tokenizer, min_count=1)
    assert ids and len(ids) == len(words)
    adapter = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, ids, words, hidden=32)
    plain = Retriever(state.gallery, fnd, qe)
    adapted = Retriever(state.gallery, fnd, qe, adapter=adapter)
    try:
        rng = torch.Generator().manual_seed(3)
        for text in ("red and blue", "a striped one", ""):
            tokens = torch.randn(1, qe.num_tokens, qe.word_dim, generator=rng) * fnd.word_embedding_rms()
            a = [(h.id, h.score) for h in plain.search(text=text, tokens=tokens, k=8)]
            b = [(h.id, h.score) for h in adapted.search(text=text, tokens=tokens, k=8)]
            assert a == b  # bit for bit: the identity adds exact zeros
        # the patch is live, but only for the adapted retriever: the plain one sharing the
        # foundation keeps its answers while the adapter is attached
        tokens = torch.randn(1, qe.num_tokens, qe.word_dim, generator=rng) * fnd.word_embedding_rms()
        a = plain.query_vector(text="red and blue", tokens=tokens)[0]
        with torch.no_grad():
            adapter.vocab.delta.normal_(0, 0.5)
        b = adapted.query_vector(text="red and blue", tokens=tokens)[0]
        assert not np.allclose(a, b, atol=1e-4)
        assert np.array_equal(plain.query_vector(text="red and blue", tokens=tokens)[0], a)
    finally:
        adapted.close()
    assert not fnd.token_embedding._forward_hooks or all(
        getattr(h, "__self__", None) is not adapter for h in fnd.token_embedding._forward_hooks.values()
    )


def test_domain_vocabulary_counts_word_pieces(openclip_fnd):
    tok = openclip_fnd.tokenizer
    ids, words = domain_vocabulary(["red red blue", "Red striped"], tok, min_count=2)
    red = tok.encode("red")
    assert ids[: len(red)] == red and words[0] == "red"  # 3 uses: first
    assert all(i not in ids for i in tok.encode("striped"))  # 1 use: below min_count
    assert tok.placeholder_id not in ids


def test_adapt_learns_synthetic_triplets_and_resumes_deterministically(service, tmp_path, monkeypatch):
    _, state, _ = service
    made = _synthetic_feedback(state, 40, seed=1)
    settings = AdaptSettings(holdout=0.0, steps=60, lr=1e-2, batch_size=16, hidden=64, save_every=10, seed=5)
    report = adapt(
        state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / "a", settings, progress=False
    )
    before, after = report["train"]["before"]["hit@1"], report["train"]["after"]["hit@1"]
    assert report["counts"]["train"] == 40 and report["counts"]["replay"] == 10
    assert after >= before + 0.5, (before, after)
    assert report["promotable"] is False and "no held-out" in report["reasons"][0]

    # the folder is self-describing and its fingerprint is checked at load
    folder = tmp_path / "a"
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["query_encoder_fingerprint"] == state.qe_fingerprint
    assert cfg["foundation_fingerprint"] == state.foundation_fingerprint
    assert json.loads((folder / "report.json").read_text())["fingerprint"] == cfg["fingerprint"]
    loaded = QueryAdapter.from_pretrained(folder)
    assert loaded.fingerprint == report["fingerprint"] == cfg["fingerprint"]
    assert not (folder / adapt_settings.CHECKPOINT_NAME).exists()

    # the served adapter answers the training queries as the report says
    retr = Retriever(state.gallery, state.foundation, state.query_encoder, adapter=loaded)
    try:
        top1 = [
            retr.search(text=m["text"], tokens=torch.from_numpy(m["tokens"])[None], k=1)[0].id == m["positive"]
            for m in made
        ]
    finally:
        retr.close()
    assert np.mean(top1) == pytest.approx(after)

    # a run killed after step 20 resumes there and ends with the same weights as the straight run
    real_save = adapt_fit._save_checkpoint

    def crash_after_20(path, st):
        real_save(path, st)
        if st["step"] == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(adapt_fit, "_save_checkpoint", crash_after_20)
    with pytest.raises(KeyboardInterrupt):
        adapt(
            state.gallery,
            state.foundation,
            state.query_encoder,
            state.feedback,
            tmp_path / "b",
            settings,
            progress=False,
        )
    monkeypatch.setattr(adapt_fit, "_save_checkpoint", real_save)
    assert torch.load(tmp_path / "b" / adapt_settings.CHECKPOINT_NAME, weights_only=False)["step"] == 20
    resumed = adapt(
        state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / "b", settings, progress=False
    )
    assert resumed["fingerprint"] == report["fingerprint"]

    # interpolation 0 is the zero-shot behaviour, and a new version
    zero = QueryAdapter.from_pretrained(folder, interpolation=0.0)
    assert zero.fingerprint != loaded.fingerprint
    t = torch.from_numpy(made[0]["tokens"])[None]
    assert torch.equal(zero.adapt_tokens(t), t)


def test_adapter_for_another_encoder_is_refused(service, tmp_path):
    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    other = new_adapter(fnd, "0123456789abcdef", qe.num_tokens, qe.config.template, hidden=8)
    with pytest.raises(AdapterMismatchError) as err:
        Retriever(state.gallery, fnd, qe, adapter=other)
    assert "0123456789abcdef" in str(err.value) and state.qe_fingerprint in str(err.value)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(AdapterMismatchError):
        ServiceState(state.gallery, fnd, qe, state.settings, adapter=QueryAdapter.from_pretrained(tmp_path / "other"))
    # a damaged folder is caught by its recorded fingerprint
    cfg = tmp_path / "other" / "adapter_config.json"
    raw = json.loads(cfg.read_text())
    raw["interpolation"] = 0.5
    cfg.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="hash to"):
        QueryAdapter.from_pretrained(tmp_path / "other")


def test_service_with_adapter_labels_responses_and_log(service, tmp_path):
    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    adapter = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, hidden=8)
    with torch.no_grad():
        adapter.tokens.up.weight.normal_(0, 0.1)
    served = ServiceState(state.gallery, fnd, qe, state.settings, adapter=adapter)
    try:
        client = TestClient(create_app(served))
        info = client.get("/v1/info").json()
        assert info["adapter"]["fingerprint"] == adapter.fingerprint
        assert info["served_version"] == f"{qe.fingerprint}+{adapter.fingerprint}"
        tokens = torch.randn(1, qe.num_tokens, qe.word_dim) * fnd.word_embedding_rms()
        raw = encode_payload(tokens[0].numpy(), qe.fingerprint)
        import base64

        r = client.post("/v1/search/tokens", json={"payload": base64.b64encode(raw).decode(), "text": "red", "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["adapter_version"] == adapter.fingerprint
        row = [q for q in served.feedback.queries() if q["query_id"] == body["query_id"]][0]
        assert row["adapter_fingerprint"] == adapter.fingerprint
        assert row["version"] == info["served_version"]
        # the results are the adapter's: the same query through an adapted retriever, by hand
        want = served.retriever.search(text="red", tokens=torch.from_numpy(decode_payload(raw).tokens)[None], k=5)
        assert [x["id"] for x in body["results"]] == [h.id for h in want]
        # and the served payload is the device's, not the adapted tokens
        assert row["tokens"] == raw
    finally:
        served.retriever.close()


def _unwrapped(text: str) -> str:
    """The console wraps long lines at its width (paths make them long): compare words, not lines."""
    return " ".join(text.split())


def test_adapt_cli_writes_a_folder_that_serve_loads(tmp_path_factory, openclip_fnd, tiny_openclip_dir):
    """`isacir adapt` from the command line, then `load_service --adapter` on its output."""
    from test_cli import last_json, run

    from isacir.serve import load_service

    tmp = tmp_path_factory.mktemp("adapt-cli")
    _, state, _ = build_service(tmp, openclip_fnd, api_key=None, n_images=12)
    state.query_encoder.save_pretrained(tmp / "qe")
    _synthetic_feedback(state, 30, seed=4, replay=0)
    db = state.settings.feedback_db or state.gallery.dir / "feedback.sqlite"
    args = ["--gallery", str(state.gallery.dir), "--feedback", str(db), "--query-encoder", str(tmp / "qe")]
    args += ["--foundation", tiny_openclip_dir[0], "--out", str(tmp / "adapter"), "--steps", "20"]
    # the default: the recipe and its pair chosen by folds, the winner's fold soup saved
    auto = run("adapt", *args, "--batch-size", "8", "--hidden", "16", "--no-progress")
    chose = last_json(auto)
    weighed = {w["recipe"]: w for w in chose["recipe"]["weighed"]}
    assert set(weighed) == {"vocab", "lora-attn"} and chose["recipe"]["chosen"] in weighed
    assert chose["counts"]["holdout"] == chose["counts"]["train"] == 30 and chose["counts"]["soup"] == 4
    assert chose["settings"]["recipe"] == chose["recipe"]["chosen"] and chose["settings"]["folds"] == 4
    ok = {n: w["chosen"]["hit@1"] for n, w in weighed.items() if w["promotable"]}
    if ok:  # the promotable candidate with the most pooled hits wins, and serves at its chosen pair
        assert ok[chose["recipe"]["chosen"]] == max(ok.values())
        served = weighed[chose["recipe"]["chosen"]]["chosen"]
        assert chose["holdout"]["after"]["hit@1"] == served["hit@1"] and chose["promotable"]
    else:
        assert not chose["promotable"] and chose["reasons"]
    assert f"recipe {chose['recipe']['chosen']} chosen by folds" in _unwrapped(auto.stderr)
    loaded = QueryAdapter.from_pretrained(tmp / "adapter")
    assert loaded.fingerprint == chose["fingerprint"]
    assert (loaded.interpolation, loaded.guard_margin) == (
        chose["tuning"]["chosen"]["interpolation"] if chose["tuning"]["chosen"] else loaded.interpolation,
        chose["tuning"]["chosen"]["guard_margin"] if chose["tuning"]["chosen"] else loaded.guard_margin,
    )
    mixed = run("adapt", *args, "--recipe", "auto", "--lora-rank", "4", "--no-progress", check=False)
    assert mixed.returncode == 2 and "--lora-rank belong to --recipe custom" in _unwrapped(mixed.stderr)
    # a custom flag (here --holdout) trains exactly the settings given
    run_adapt = run("adapt", *args, "--batch-size", "8", "--hidden", "16", "--no-progress", "--holdout", "0.2")
    report = last_json(run_adapt)
    assert "recipe" not in report and report["settings"]["recipe"] == "custom"
    assert report["counts"]["train"] + report["counts"]["holdout"] == 30
    assert report["counts"]["holdout"] == 6  # round(0.2 * 30)
    assert isinstance(report["promotable"], bool) and report["holdout"]["after"]["n"] == 6
    # how sure the verdict is: paired counts that add up, and intervals around the point estimates
    held = report["holdout"]
    change = held["after"]["hit@1"] - held["before"]["hit@1"]
    assert (held["gained"] - held["flips"]) / 6 == pytest.approx(change)
    lo, hi = held["intervals"]["hit@1_change"]
    assert lo <= change <= hi and hi - lo > 0.1  # six queries decide little
    if held["top1_before"]:
        lo, hi = held["intervals"]["flip_rate"]
        assert lo <= held["flip_rate"] <= hi
    else:
        assert held["intervals"]["flip_rate"] is None
    assert "95 % interval of the change" in _unwrapped(run_adapt.stderr)
    app = load_service(state.gallery.dir, tmp / "qe", tiny_openclip_dir[0], adapter=tmp / "adapter")
    assert app.state.service.adapter_fingerprint == report["fingerprint"]
    app.state.service.retriever.close()
    # an unknown feedback file is a one-line error, not a traceback
    bad = run("adapt", *args[:2], "--feedback", str(tmp / "nope.sqlite"), *args[4:], check=False)
    assert bad.returncode == 2 and "feedback database not found" in _unwrapped(bad.stderr)
    # --refit: the held-out numbers judge the recipe, the folder holds the one trained on all 30
    refit = run("adapt", *args, "--batch-size", "8", "--hidden", "16", "--no-progress", "--tune", "--refit")
    again = last_json(refit)
    assert again["refit"]["train"] == 30 and again["counts"]["holdout"] == 6
    assert again["holdout"]["before"] == report["holdout"]["before"]
    assert "refit on all 30 feedback queries" in _unwrapped(refit.stderr)
    assert json.loads((tmp / "adapter" / "report.json").read_text())["fingerprint"] == again["fingerprint"]
    # --folds: every query judged once, the saved adapter trained on all of them
    cv = run("adapt", *args, "--batch-size", "8", "--hidden", "16", "--no-progress", "--tune", "--folds", "2")
    cv_report = last_json(cv)
    assert cv_report["counts"]["holdout"] == cv_report["counts"]["train"] == 30 and cv_report["counts"]["folds"] == 2
    assert "2-fold cross-validation" in _unwrapped(cv.stderr)
    assert "tuned on 2-fold pooled feedback" in _unwrapped(cv.stderr)
    one_fold = run("adapt", *args, "--folds", "1", "--no-progress", check=False)
    assert one_fold.returncode == 2 and "--folds must be 0" in _unwrapped(one_fold.stderr)
    no_holdout = run("adapt", *args, "--holdout", "0", "--refit", "--no-progress", check=False)
    assert no_holdout.returncode != 0 and "--holdout > 0" in _unwrapped(no_holdout.stderr)
    # with nothing held out nothing may be promoted, and the report says why
    blind = run(
        "adapt", *args, "--holdout", "0", "--steps", "2", "--batch-size", "8", "--hidden", "16", "--no-progress"
    )
    assert last_json(blind)["promotable"] is False
    assert "no held-out feedback to judge it by" in _unwrapped(blind.stderr)


def _reloaded(adapter: QueryAdapter, folder, fnd, qe, tokens) -> QueryAdapter:
    """``adapter`` saved to ``folder`` and loaded again, checked to keep its version and to compose
    the same query bit for bit."""
    adapter.save_pretrained(folder)
    loaded = QueryAdapter.from_pretrained(folder)
    assert loaded.fingerprint == adapter.fingerprint
    with torch.no_grad():
        a = adapter.compose(fnd, tokens, ["red"], qe.config.template, qe.num_tokens)
        b = loaded.compose(fnd, tokens, ["red"], qe.config.template, qe.num_tokens)
    assert torch.equal(a, b)
    return loaded


def test_lora_adapter_starts_as_the_identity_stays_in_its_thread_and_round_trips(service, tmp_path):
    import threading

    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    adapter = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, hidden=8, lora_rank=4)
    targets = adapter.config.lora_targets
    assert targets == list(fnd.text_linears()) and targets
    assert all(".visual." not in t for t in targets)  # the image tower, which indexed the gallery, is untouched
    plain = Retriever(state.gallery, fnd, qe)
    adapted = Retriever(state.gallery, fnd, qe, adapter=adapter)
    tokens = torch.randn(1, qe.num_tokens, qe.word_dim, generator=torch.Generator().manual_seed(1))
    tokens *= fnd.word_embedding_rms()
    try:
        assert [(h.id, h.score) for h in plain.search(text="red", tokens=tokens, k=8)] == [
            (h.id, h.score) for h in adapted.search(text="red", tokens=tokens, k=8)
        ]
        pixels = fnd.preprocess_batch([state.gallery.items()[0]["path"]])
        image_before = fnd.encode_image(pixels)
        with torch.no_grad():
            for delta in adapter.lora.values():
                delta.B.weight.normal_(0, 0.5)
        adapter._fingerprint = None
        want_plain = plain.query_vector(text="red", tokens=tokens)[0]
        want_adapted = adapted.query_vector(text="red", tokens=tokens)[0]
        assert not np.allclose(want_plain, want_adapted, atol=1e-4)
        with adapter.applied():  # even inside the adapted thread's block, images are not adapted
            assert torch.equal(fnd.encode_image(pixels), image_before)

        # two threads at once: the plain one never sees the adapted one's LoRA hooks
        seen: dict[str, list[bool]] = {"plain": [], "adapted": []}
        start = threading.Barrier(2)

        def loop(name, retr, want):
            start.wait()
            for _ in range(15):
                seen[name].append(np.array_equal(retr.query_vector(text="red", tokens=tokens)[0], want))

        threads = [
            threading.Thread(target=loop, args=("plain", plain, want_plain)),
            threading.Thread(target=loop, args=("adapted", adapted, want_adapted)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen["plain"] == [True] * 15 and seen["adapted"] == [True] * 15
    finally:
        adapted.close()

    # a saved folder loads without the foundation at hand, answers the same, and keeps its version
    loaded = _reloaded(adapter, tmp_path / "lora", fnd, qe, tokens)
    assert loaded.describe()["lora_layers"] == len(targets)
    # a folder naming a layer this foundation lacks is refused at attach, naming the layer
    cfg = loaded.config
    cfg.lora_targets = [*cfg.lora_targets[:-1], "model.transformer.no_such_layer"]
    stray = QueryAdapter(cfg)
    with pytest.raises(AdapterMismatchError, match="no_such_layer"):
        stray.attach(fnd)
    assert not stray._hooks


def test_attention_lora_is_the_identity_at_start_and_a_patched_attention_after(service, tmp_path):
    import threading

    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    adapter = new_adapter(
        fnd, qe.fingerprint, qe.num_tokens, qe.config.template, hidden=8, lora_rank=4, lora_attention=True
    )
    names = adapter.config.lora_attention
    assert names == list(fnd.text_attentions()) and names and all(".visual." not in n for n in names)
    assert adapter.describe()["lora_attention"] == len(names)
    plain = Retriever(state.gallery, fnd, qe)
    adapted = Retriever(state.gallery, fnd, qe, adapter=adapter)
    tokens = torch.randn(1, qe.num_tokens, qe.word_dim, generator=torch.Generator().manual_seed(6))
    tokens *= fnd.word_embedding_rms()
    template = qe.config.template
    try:
        assert [(h.id, h.score) for h in plain.search(text="red", tokens=tokens, k=8)] == [
            (h.id, h.score) for h in adapted.search(text="red", tokens=tokens, k=8)
        ]
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for delta in adapter.attn_lora.values():
                delta.B.weight.copy_(torch.randn(delta.B.weight.shape, generator=gen) * 0.3)
        adapter._fingerprint = None
        adapter.set_interpolation(0.5)
        # the oracle: the foundation's attention weights patched by hand (and restored), run by
        # PyTorch's own attention forward
        with torch.no_grad():
            zero_shot = fnd.encode_composed(tokens, ["red"], template, expected_tokens=qe.num_tokens)
            got = adapter.compose(fnd, tokens, ["red"], template, qe.num_tokens)
            saved = {}
            try:
                for name in names:
                    key = name.replace(".", "__")
                    mha = fnd.get_submodule(name)
                    saved[name] = (mha.in_proj_weight.clone(), mha.out_proj.weight.clone())
                    mha.in_proj_weight += 0.5 * adapter.attn_lora[f"{key}__in"].weight_delta()
                    mha.out_proj.weight += 0.5 * adapter.attn_lora[f"{key}__out"].weight_delta()
                want = fnd.encode_composed(tokens, ["red"], template, expected_tokens=qe.num_tokens)
            finally:
                for name, (w_in, w_out) in saved.items():
                    mha = fnd.get_submodule(name)
                    mha.in_proj_weight.copy_(w_in)
                    mha.out_proj.weight.copy_(w_out)
            assert torch.equal(fnd.encode_composed(tokens, ["red"], template, expected_tokens=qe.num_tokens), zero_shot)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(got, zero_shot, atol=1e-3)
        # the image tower, which indexed the gallery, is untouched even inside the adapted block
        pixels = fnd.preprocess_batch([state.gallery.items()[0]["path"]])
        image = fnd.encode_image(pixels)
        with adapter.applied():
            assert torch.equal(fnd.encode_image(pixels), image)
        # another thread with the plain retriever never sees the update
        want_plain = plain.query_vector(text="red", tokens=tokens)[0]
        seen = []
        start = threading.Barrier(2)

        def loop(retr, want, n=10):
            start.wait()
            for _ in range(n):
                seen.append(np.array_equal(retr.query_vector(text="red", tokens=tokens)[0], want))

        want_adapted = adapted.query_vector(text="red", tokens=tokens)[0]
        threads = [
            threading.Thread(target=loop, args=(plain, want_plain)),
            threading.Thread(target=loop, args=(adapted, want_adapted)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [True] * 20 and not np.allclose(want_plain, want_adapted, atol=1e-4)
    finally:
        adapted.close()
    loaded = _reloaded(adapter, tmp_path / "attn", fnd, qe, tokens)
    cfg = loaded.config
    cfg.lora_attention = [*cfg.lora_attention[:-1], "model.transformer.no_such_attention"]
    with pytest.raises(AdapterMismatchError, match="no_such_attention"):
        QueryAdapter(cfg).attach(fnd)
    with pytest.raises(Exception, match="--lora-rank"):
        AdaptSettings(lora_attention=True).check()


def _adapt_one_part(tmp_path, openclip_fnd, **part) -> tuple[dict, ServiceState]:
    """`adapt` on 40 synthetic triplets with the token adapter and the vocabulary off, so only the
    part that ``part`` turns on can learn. A service of its own: the module's shared log holds other
    tests' feedback, which would make what this test learns depend on which tests ran before it."""
    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    _synthetic_feedback(state, 40, seed=2, replay=0)
    settings = AdaptSettings(holdout=0.0, lr=1e-2, batch_size=16, seed=3, token_adapter=False, vocab=False, **part)
    report = adapt(
        state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / "a", settings, progress=False
    )
    return report, state


def test_adapt_trains_the_attention_updates(tmp_path, openclip_fnd):
    report, state = _adapt_one_part(tmp_path, openclip_fnd, steps=60, lora_rank=4, lora_attention=True)
    assert report["counts"]["lora_attention"] == len(state.foundation.text_attentions()) > 0
    assert report["train"]["after"]["hit@1"] > report["train"]["before"]["hit@1"]
    loaded = QueryAdapter.from_pretrained(tmp_path / "a")
    assert all(float(d.B.weight.detach().abs().max()) > 0 for d in loaded.attn_lora.values())


def test_adapt_with_lora_alone_learns_synthetic_triplets(tmp_path, openclip_fnd):
    report, state = _adapt_one_part(tmp_path, openclip_fnd, steps=100, lora_rank=4)
    assert report["counts"]["lora_layers"] == len(state.foundation.text_linears())
    assert report["counts"]["vocab_rows"] == 0 and report["counts"]["train"] == 40
    before, after = report["train"]["before"]["hit@1"], report["train"]["after"]["hit@1"]
    assert after >= before + 0.3, (before, after)
    with pytest.raises(Exception, match="lora-rank"):
        AdaptSettings(lora_rank=-1).check()


def test_query_head_starts_as_the_identity_and_is_a_metric_on_the_stored_vectors(service, tmp_path):
    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    adapter = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, hidden=8, query_head=True)
    assert adapter.config.query_head == fnd.embed_dim and adapter.describe()["query_head"] == fnd.embed_dim
    plain = Retriever(state.gallery, fnd, qe)
    adapted = Retriever(state.gallery, fnd, qe, adapter=adapter)
    tokens = torch.randn(1, qe.num_tokens, qe.word_dim, generator=torch.Generator().manual_seed(4))
    tokens *= fnd.word_embedding_rms()
    fresh = adapter.fingerprint
    try:
        assert [(h.id, h.score) for h in plain.search(text="red", tokens=tokens, k=8)] == [
            (h.id, h.score) for h in adapted.search(text="red", tokens=tokens, k=8)
        ]
        weight = torch.randn(fnd.embed_dim, fnd.embed_dim, generator=torch.Generator().manual_seed(5)) * 0.3
        with torch.no_grad():
            adapter.head.linear.weight.copy_(weight)
        adapter._fingerprint = None
        assert adapter.fingerprint != fresh
        # the oracle: the zero-shot query q, and every stored vector g scored by q . (g + W^T g),
        # normalised by the length of q + W q; the service never rewrote g
        q = plain.query_vector(text="red", tokens=tokens)[0].astype(np.float64)
        ids, vecs = state.gallery.vectors()
        w = weight.double().numpy()
        want = (vecs.astype(np.float64) + vecs.astype(np.float64) @ w) @ q / np.linalg.norm(q + w @ q)
        order = np.argsort(-want, kind="stable")[:8]
        hits = adapted.search(text="red", tokens=tokens, k=8)
        assert [h.id for h in hits] == [int(ids[i]) for i in order]
        np.testing.assert_allclose([h.score for h in hits], want[order], atol=1e-5)
        adapter.set_interpolation(0.0)  # no head at all: the zero-shot query again
        assert np.array_equal(adapted.query_vector(text="red", tokens=tokens)[0], q.astype(np.float32))
        adapter.set_interpolation(1.0)
    finally:
        adapted.close()
    _reloaded(adapter, tmp_path / "head", fnd, qe, tokens)


def test_adapt_with_the_query_head_alone_learns_synthetic_triplets(tmp_path, openclip_fnd):
    # without replay, which pulls the map back toward zero on shuffled pairs; a linear map on the
    # joint embedding learns 40 random pairings slowly (0.075 to 0.525 in 200 steps, 0.625 in 400)
    report, state = _adapt_one_part(tmp_path, openclip_fnd, steps=400, query_head=True, replay_weight=0.0)
    assert report["counts"]["query_head"] == state.foundation.embed_dim and report["counts"]["lora_layers"] == 0
    before, after = report["train"]["before"]["hit@1"], report["train"]["after"]["hit@1"]
    assert after >= before + 0.4, (before, after)
    loaded = QueryAdapter.from_pretrained(tmp_path / "a")
    assert loaded.head is not None and float(loaded.head.linear.weight.detach().abs().max()) > 0


def test_lora_on_blip_adapts_the_text_encoder_only(blip_fnd):
    fnd = blip_fnd
    adapter = new_adapter(fnd, "0" * 16, 2, "a photo of {} that {}", hidden=8, lora_rank=2)
    targets = adapter.config.lora_targets
    assert targets and all("text_encoder" in t or "text_proj" in t for t in targets)
    assert not any("crossattention" in t or "vision" in t for t in targets)  # not called by a text forward
    tokens = torch.randn(1, 2, fnd.word_dim, generator=torch.Generator().manual_seed(0)) * fnd.word_embedding_rms()
    with torch.no_grad():
        plain = fnd.encode_composed(tokens, ["red"], "a photo of {} that {}")
        same = adapter.compose(fnd, tokens, ["red"], "a photo of {} that {}")
        for delta in adapter.lora.values():
            delta.B.weight.normal_(0, 0.5)
        moved = adapter.compose(fnd, tokens, ["red"], "a photo of {} that {}")
        after = fnd.encode_composed(tokens, ["red"], "a photo of {} that {}")
    assert torch.equal(plain, same) and torch.equal(plain, after)  # hooks gone after compose
    assert not torch.allclose(plain, moved, atol=1e-4)


def test_query_head_on_blip_maps_the_joint_embedding(blip_fnd):
    fnd = blip_fnd
    adapter = new_adapter(fnd, "0" * 16, 2, "a photo of {} that {}", hidden=8, query_head=True)
    assert adapter.config.query_head == fnd.embed_dim
    tokens = torch.randn(1, 2, fnd.word_dim, generator=torch.Generator().manual_seed(0)) * fnd.word_embedding_rms()
    weight = torch.randn(fnd.embed_dim, fnd.embed_dim, generator=torch.Generator().manual_seed(1)) * 0.3
    with torch.no_grad():
        plain = fnd.encode_composed(tokens, ["red"], "a photo of {} that {}")
        assert torch.equal(adapter.compose(fnd, tokens, ["red"], "a photo of {} that {}"), plain)
        adapter.head.linear.weight.copy_(weight)
        adapter.set_interpolation(0.5)
        moved = adapter.compose(fnd, tokens, ["red"], "a photo of {} that {}")
    want = torch.nn.functional.normalize(plain + 0.5 * plain @ weight.T, dim=-1)
    torch.testing.assert_close(moved, want)
    assert moved.shape == plain.shape and not torch.allclose(moved, plain, atol=1e-3)


def test_guard_top1_by_hand():
    from isacir.adapter import guard_top1

    assert guard_top1("abc", "b", gap=0.01, margin=0.02) == ["b", "a", "c"]  # not sure: zero-shot first
    assert guard_top1("abc", "b", gap=0.03, margin=0.02) == ["a", "b", "c"]  # sure: the adapter's order
    assert guard_top1("abc", "a", gap=0.0, margin=0.02) == ["a", "b", "c"]  # the same first place
    assert guard_top1("abc", "d", gap=0.0, margin=0.02) == ["d", "a", "b"]  # an anchor from outside keeps the length
    assert guard_top1("abc", "b", gap=0.0, margin=0.0) == ["a", "b", "c"]  # off


def test_guard_rankings_match_a_brute_force_oracle():
    from isacir.adapter import guard_rankings

    rng = np.random.default_rng(0)
    names = [f"g{i}" for i in range(30)]
    adapted, plain = rng.normal(size=(200, 30)), rng.normal(size=(200, 30))
    plain += 2 * adapted  # correlated, as an adapter's and the zero-shot scores are
    adapted[np.arange(200), rng.integers(0, 30, 200)] = -np.inf  # an excluded reference
    rankings = [[names[j] for j in np.argsort(-row, kind="stable")[:10]] for row in adapted]
    margin = 0.5
    got = guard_rankings(rankings, adapted, plain, names, margin)
    kept = swapped = 0
    for row, ranked, out in zip(range(200), rankings, got, strict=True):
        at, zt = int(np.argmax(adapted[row])), int(np.argmax(plain[row]))
        if at != zt and adapted[row, at] - adapted[row, zt] < margin:
            swapped += 1
            assert out[0] == names[zt] and out[1:] == [n for n in ranked if n != names[zt]][:9]
        else:
            kept += at != zt
            assert out == ranked
    assert swapped > 10 and kept > 10  # both branches ran


def test_guarded_adapter_keeps_the_zero_shot_top1_unless_sure(tmp_path, openclip_fnd):
    """Served with a top-1 guard: first place as an independent computation from stored vectors
    says, the adapted order below it, the guard part of the version, and the HTTP path the same."""
    import base64

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)  # a log of its own
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    # an adapter trained on random positives: it moves many first places away from the zero-shot's
    made = _synthetic_feedback(state, 40, seed=7, replay=0)
    settings = AdaptSettings(holdout=0.0, steps=40, lr=1e-2, batch_size=16, hidden=32, seed=3)
    adapt(gallery, fnd, qe, state.feedback, tmp_path / "a", settings, progress=False)
    unguarded = QueryAdapter.from_pretrained(tmp_path / "a")
    plain = Retriever(gallery, fnd, qe)
    adapted = Retriever(gallery, fnd, qe, adapter=unguarded)
    gid, gvec = gallery.vectors()
    row = {int(i): j for j, i in enumerate(gid)}
    queries = []
    for m in made:
        tokens, text = torch.from_numpy(m["tokens"])[None], m["text"]
        q_a = adapted.query_vector(text=text, tokens=tokens)[0]
        a_hits = adapted.search(text=text, tokens=tokens, k=6)
        z_top = plain.search(text=text, tokens=tokens, k=6)[0].id  # the zero-shot answer to the same request
        gap = float(gvec[row[a_hits[0].id]] @ q_a - gvec[row[z_top]] @ q_a)
        queries.append((tokens, text, [h.id for h in a_hits], z_top, gap))
    gaps = sorted(g for *_, g in queries if g > 0)
    assert len(gaps) >= 6, "the perturbed adapter should change some first places"
    # a margin halfway between two neighbouring gaps near the median, never equal to one: the guard
    # rescores through another float path, so a gap on the margin itself could land either side
    mid = range(max(2, len(gaps) // 3), len(gaps) - 3)  # three or more gaps on each side
    lo = max(mid, key=lambda i: gaps[i + 1] - gaps[i])
    assert gaps[lo + 1] - gaps[lo] > 1e-4, gaps
    margin = (gaps[lo] + gaps[lo + 1]) / 2
    guarded_adapter = QueryAdapter.from_pretrained(tmp_path / "a", guard_margin=margin)
    assert unguarded.guard_margin == 0.0
    assert guarded_adapter.fingerprint != unguarded.fingerprint  # its answers differ: so does its version
    assert guarded_adapter.describe()["guard_margin"] == margin
    guarded = Retriever(gallery, fnd, qe, adapter=guarded_adapter)
    assert guarded.zero_shot is not None and adapted.zero_shot is None
    swapped = kept = 0
    try:
        for tokens, text, a_ids, z_top, gap in queries:
            got = [h.id for h in guarded.search(text=text, tokens=tokens, k=6)]
            if a_ids[0] != z_top and gap < margin:
                swapped += 1
                assert got == [z_top] + [i for i in a_ids if i != z_top][:5]
            else:
                kept += a_ids[0] != z_top
                assert got == a_ids
        assert swapped >= 3 and kept >= 3

        # the service composes the zero-shot anchor through its batcher and answers the same
        served = ServiceState(gallery, fnd, qe, state.settings, adapter=guarded_adapter)
        try:
            client = TestClient(create_app(served))
            for tokens, text, *_ in queries[:8]:
                raw = encode_payload(tokens[0].numpy(), qe.fingerprint)
                body = {"payload": base64.b64encode(raw).decode(), "text": text, "k": 6}
                r = client.post("/v1/search/tokens", json=body)
                assert r.status_code == 200, r.text
                want = guarded.search(text=text, tokens=torch.from_numpy(decode_payload(raw).tokens)[None], k=6)
                assert [x["id"] for x in r.json()["results"]] == [h.id for h in want]
                assert r.json()["adapter_version"] == guarded_adapter.fingerprint
        finally:
            served.retriever.close()
    finally:
        for r in (plain, adapted, guarded):
            r.close()


def test_adapt_report_counts_the_guard(service, tmp_path):
    """A guard too wide to ever yield serves the zero-shot first places: no held-out flip."""
    from isacir.errors import ConfigError

    _, state, _ = service
    with pytest.raises(ConfigError, match="guard-margin"):
        AdaptSettings(guard_margin=-0.1).check()
    _synthetic_feedback(state, 40, seed=9)
    settings = AdaptSettings(holdout=0.5, steps=30, lr=1e-2, batch_size=16, hidden=32, seed=1, guard_margin=2.0)
    report = adapt(
        state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / "g", settings, progress=False
    )
    held = report["holdout"]
    assert held["flips"] == 0 and held["after"]["hit@1"] == held["before"]["hit@1"]
    assert held["after"]["n"] > 0
    assert QueryAdapter.from_pretrained(tmp_path / "g").guard_margin == 2.0


def test_adapt_tune_picks_the_best_promotable_pair_on_held_out_feedback(service, tmp_path, monkeypatch):
    """--tune: the grid on held-out feedback, the choice by its rule, and the folder serving it."""
    _, state, _ = service
    _synthetic_feedback(state, 40, seed=12)
    # a margin too wide to ever yield makes some pair promotable, so that a choice is always made
    monkeypatch.setattr(adapt_tuning, "TUNE_MARGINS", (0.0, 0.02, 2.0))
    settings = AdaptSettings(holdout=0.5, steps=30, lr=1e-2, batch_size=16, hidden=32, seed=4, tune=True)
    report = adapt(
        state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / "t", settings, progress=False
    )
    tuning, held = report["tuning"], report["holdout"]
    assert len(tuning["grid"]) == len(adapt_tuning.TUNE_INTERPOLATIONS) * 3
    before = tuning["before"]["hit@1"]
    assert before == held["before"]["hit@1"]
    eligible = [g for g in tuning["grid"] if g["hit@1"] >= before and (g["flip_rate"] or 0.0) <= 0.05]
    assert any(g["guard_margin"] == 2.0 for g in eligible)
    best = max(g["hit@1"] for g in eligible)
    chosen = tuning["chosen"]
    assert chosen["hit@1"] == best and chosen in eligible
    assert chosen["flips"] == min(g["flips"] for g in eligible if g["hit@1"] == best)
    # the folder serves the chosen pair, and the report judged that pair
    loaded = QueryAdapter.from_pretrained(tmp_path / "t")
    assert (loaded.interpolation, loaded.guard_margin) == (chosen["interpolation"], chosen["guard_margin"])
    assert held["after"]["hit@1"] == chosen["hit@1"] and held["flips"] == chosen["flips"]
    assert report["promotable"] is True


def _random_updates(adapter: QueryAdapter, seed: int) -> QueryAdapter:
    """Every update of ``adapter`` set to random values, as training would leave them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    adapter._fingerprint = None
    return adapter


def test_soup_averages_every_update_exactly(service, tmp_path):
    from isacir.adapt.soup import soup
    from isacir.errors import ConfigError

    _, state, _ = service
    fnd, qe = state.foundation, state.query_encoder
    vocabularies = [["red and blue"], ["red striped", "blue"], ["tiny wooden square"]]
    members = [
        _random_updates(
            new_adapter(
                fnd,
                qe.fingerprint,
                qe.num_tokens,
                qe.config.template,
                *domain_vocabulary(texts, fnd.tokenizer, min_count=1),
                hidden=8,
                seed=i,
                lora_rank=2 + i,  # members of other ranks average as well
                lora_attention=True,
                query_head=True,
            ),
            seed=10 + i,
        )
        for i, texts in enumerate(vocabularies)
    ]
    mixed = soup(members)
    k = len(members)

    def mean(values):
        return sum(values) / k

    assert mixed.config.hidden == 24 and mixed.config.lora_rank == 2 + 3 + 4
    # the token residual: K hidden layers side by side are the average of K residuals
    x = torch.randn(5, qe.num_tokens, qe.word_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mixed.tokens.residual(x), mean([m.tokens.residual(x) for m in members]))
    # every LoRA update, on the MLPs and the attention projections, is the members' mean update
    for part in ("lora", "attn_lora"):
        for key, lora in getattr(mixed, part).items():
            want = mean([getattr(m, part)[key].weight_delta() for m in members])
            torch.testing.assert_close(lora.weight_delta(), want, rtol=1e-5, atol=1e-6)
    # vocabulary rows over the union of the members' words, a missing row counting as zero
    assert set(mixed.config.vocab_ids) == {i for m in members for i in m.config.vocab_ids}
    words = torch.tensor([[*mixed.config.vocab_ids, 0, 1]])
    torch.testing.assert_close(mixed.vocab.patch(words), mean([m.vocab.patch(words) for m in members]))
    torch.testing.assert_close(mixed.head.linear.weight, mean([m.head.linear.weight for m in members]))
    # the soup of one adapter is that adapter; a soup round-trips as any adapter does
    assert soup(members[:1]).fingerprint == members[0].fingerprint
    mixed.save_pretrained(tmp_path / "soup")
    assert QueryAdapter.from_pretrained(tmp_path / "soup").fingerprint == mixed.fingerprint != members[0].fingerprint
    # adapters of other recipes or served at other pairs are refused, naming what differs
    other = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, hidden=8, lora_rank=2)
    with pytest.raises(ConfigError, match="lora_attention"):
        soup([members[0], other])
    members[1].set_interpolation(0.5)
    with pytest.raises(ConfigError, match="adapter 1 .* interpolation"):
        soup(members)
    with pytest.raises(ConfigError, match="at least one"):
        soup([])


def test_adapt_soup_is_the_soup_of_the_adapters_its_seeds_train(tmp_path, openclip_fnd):
    """`--soup 2` trains the adapters that seeds S and S + 1 train alone, and saves their soup."""
    from isacir.adapt.soup import soup

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    _synthetic_feedback(state, 40, seed=2, replay=0)

    def run(name, holdout=0.0, **kw):
        settings = AdaptSettings(holdout=holdout, steps=15, batch_size=16, lora_rank=2, **kw)
        args = (state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / name, settings)
        return adapt(*args, progress=False)

    report = run("soup", seed=3, soup=2)
    alone = [QueryAdapter.from_pretrained(tmp_path / name) for name in ("s3", "s4") if run(name, seed=int(name[1]))]
    saved = QueryAdapter.from_pretrained(tmp_path / "soup")
    assert saved.fingerprint == soup(alone).fingerprint == report["fingerprint"] != alone[0].fingerprint
    assert report["counts"]["soup"] == 2 and saved.config.lora_rank == 4 and saved.config.hidden == 512
    # judged as it is served: the held-out numbers are the soup's own (its members share the split)
    report = run("judged", holdout=0.25, seed=3, soup=2)
    data = adapt_data.load_feedback(
        state.feedback,
        state.qe_fingerprint,
        state.query_encoder.num_tokens,
        state.foundation.word_dim,
        state.gallery,
        seed=3,
    )
    compose = adapt_tuning.ComposedQueries(
        state.foundation, state.query_encoder.config.template, state.query_encoder.num_tokens
    )
    judged = QueryAdapter.from_pretrained(tmp_path / "judged")
    after = adapt_tuning.feedback_metrics(compose, state.gallery, data.split(0.25, 3)[1], judged)[0]
    assert after == report["holdout"]["after"] and report["counts"]["holdout"] == 10
    with pytest.raises(Exception, match="--soup must be at least 1"):
        AdaptSettings(soup=0).check()
