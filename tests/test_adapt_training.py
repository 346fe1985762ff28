"""The adapter's training signal: duplicates of a positive, the previous version's hard
negatives, and focal distillation toward the previous version (positive-congruent training)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from serve_helpers import build_service
from test_adapt import _synthetic_feedback

from isacir.adapt import AdaptSettings
from isacir.adapt import fit as adapt_fit
from isacir.adapt import settings as adapt_settings
from isacir.adapt import tuning as adapt_tuning
from isacir.adapt.data import FeedbackExample, load_feedback
from isacir.adapter import guard as adapt_guard
from isacir.adapter import new_adapter
from isacir.errors import ConfigError


@pytest.fixture(scope="module")
def twin_service(tmp_path_factory, openclip_fnd):
    """A service whose gallery holds one picture twice (a byte copy under another name)."""
    tmp = tmp_path_factory.mktemp("twins")
    app, state, images = build_service(tmp, openclip_fnd, api_key=None, n_images=12)
    shutil.copyfile(images[0], images[0].with_name("copy-of-img000.png"))
    shutil.copyfile(images[1], images[1].with_name("zz-copy-of-img001.png"))  # indexed after its original
    state.gallery.index([str(images[0].parent)], openclip_fnd, progress=False)
    by_name = {p.split("/")[-1]: int(i) for i, p in ((it["id"], it["path"]) for it in state.gallery.items())}
    state.twins = [(by_name["img001.png"], by_name["zz-copy-of-img001.png"])]
    return state, by_name["img000.png"], by_name["copy-of-img000.png"]


class _FixedQueries:
    """Stands in for ComposedQueries: every query is the given vector (the test controls the ranking)."""

    def __init__(self, vector: np.ndarray):
        self.vector = torch.from_numpy(np.array(vector, dtype=np.float32))

    def many(self, examples, adapter, chunk=256):
        return self.vector.expand(len(examples), -1).clone()

    def __call__(self, tokens, texts, adapter):
        return self.vector.expand(len(texts), -1).clone()


def _example(positive: int, dim: int = 4, query_id: str = "q") -> FeedbackExample:
    return FeedbackExample(query_id, "red", np.zeros((2, dim), np.float32), positive)


def test_a_duplicate_of_the_positive_answers_for_it(twin_service):
    """The two copies tie exactly, so which one a search puts first is tie-breaking: a held-out
    query answered with either copy counts, whichever the operator happened to name."""
    state, orig, copy = twin_service
    ids, vecs = state.gallery.vectors([orig, copy])
    assert float(vecs[0] @ vecs[1]) >= adapt_settings.DUPLICATE_COSINE  # the copies are one picture to the system
    hits = state.gallery.search(vecs[:1], 3)[0]
    assert {hits[0].id, hits[1].id} == {orig, copy}
    examples = [_example(orig, query_id="a"), _example(copy, query_id="b")]
    metrics, top1 = adapt_tuning.feedback_metrics(_FixedQueries(vecs[0]), state.gallery, examples, None)
    assert top1.tolist() == [True, True] and metrics["hit@1"] == 1.0
    # another item is never a duplicate, even when it ranks first
    other = hits[2].id
    assert adapt_tuning._duplicates(state.gallery, [hits], [_example(other)]) == [{other}]
    assert adapt_tuning._duplicates(state.gallery, [hits], [_example(orig)]) == [{orig, copy}]


def test_a_duplicate_of_the_positive_is_not_its_negative(twin_service):
    """The contrastive loss equals a cross-entropy computed by hand without the twin's column."""
    state, orig, copy = twin_service
    gid, gvec = state.gallery.vectors()
    bank = adapt_fit.Bank(gid, gvec)
    query = gvec[bank.row[orig]] * 0.6 + gvec[(bank.row[orig] + 1) % len(gid)] * 0.4
    query = query / np.linalg.norm(query)
    settings = AdaptSettings(temperature=0.1)
    everything = torch.arange(len(gid))
    view = adapt_fit.PreviousView(None, [[]], torch.zeros(1))
    loss = adapt_fit._contrastive_loss(
        _FixedQueries(query), None, [_example(orig)], bank, everything, settings, view, [0]
    )
    # the oracle: softmax over every gallery item except the twin, the positive's share
    keep = [r for r in range(len(gid)) if int(gid[r]) != copy]
    logits = gvec[keep] @ query / 0.1
    want = -(logits[keep.index(bank.row[orig])] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    # unmasked, the twin (tied with the positive) would add its own share to the partition
    logits_all = gvec @ query / 0.1
    with_twin = -(logits_all[bank.row[orig]] - np.log(np.exp(logits_all).sum()))
    twin_share = np.exp(logits_all[bank.row[copy]]) / np.exp(logits).sum()
    assert with_twin - float(loss) == pytest.approx(np.log1p(twin_share), rel=1e-4)


def test_previous_view_matches_a_brute_force_ranking(tmp_path, openclip_fnd):
    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    _synthetic_feedback(state, 30, seed=21, replay=0)
    data = load_feedback(state.feedback, qe.fingerprint, qe.num_tokens, fnd.word_dim, gallery)
    compose = adapt_tuning.ComposedQueries(fnd, qe.config.template, qe.num_tokens)
    settings = AdaptSettings(hard_negatives=4)
    view = adapt_fit._previous_view(compose, gallery, data.triplets, None, settings)
    gid, gvec = gallery.vectors()
    scores = compose.many(data.triplets, None).numpy() @ gvec.T
    order = np.argsort(-scores, axis=1)
    assert view.top == [[int(gid[j]) for j in row[:4]] for row in order]
    want_right = [float(int(gid[row[0]]) == e.positive) for row, e in zip(order, data.triplets, strict=True)]
    assert view.right.tolist() == want_right
    # off: nothing is computed
    off = adapt_fit._previous_view(compose, gallery, data.triplets, None, AdaptSettings())
    assert off.queries is None and off.top == [[] for _ in data.triplets]


def test_focal_distillation_is_a_weighted_kl_toward_the_previous_version(tmp_path, openclip_fnd):
    """Zero for an adapter that is still the identity; otherwise the weighted KL, computed by hand."""
    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    _synthetic_feedback(state, 20, seed=22, replay=0)
    data = load_feedback(state.feedback, qe.fingerprint, qe.num_tokens, fnd.word_dim, gallery)
    train = data.triplets
    compose = adapt_tuning.ComposedQueries(fnd, qe.config.template, qe.num_tokens)
    gid, gvec = gallery.vectors()
    bank = adapt_fit.Bank(gid, gvec)
    plain = AdaptSettings(temperature=0.05, hard_negatives=3)
    focal = replace(plain, focal_weight=4.0, focal_base=0.5)
    view = adapt_fit._previous_view(compose, gallery, train, None, focal)
    picked = list(range(len(train)))
    adapter = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, [], [], 32, seed=0)
    extra = torch.arange(len(gid))

    def loss(settings, ad):
        return float(adapt_fit._contrastive_loss(compose, ad, train, bank, extra, settings, view, picked))

    with torch.no_grad():
        assert loss(focal, adapter) == pytest.approx(loss(plain, adapter), abs=1e-5)
        for p in adapter.tokens.parameters():
            p.add_(torch.randn_like(p) * 0.5)
        new_q = compose.many(train, adapter)
    # the oracle, in numpy: KL(previous || adapted) over every gallery item, per query, weighted by
    # focal_base + focal_weight where the previous version's first place was the positive
    old = view.queries.numpy() @ gvec.T / 0.05
    new = new_q.numpy() @ gvec.T / 0.05
    p_old = np.exp(old - old.max(1, keepdims=True))
    p_old /= p_old.sum(1, keepdims=True)
    log_new = new - new.max(1, keepdims=True)
    log_new -= np.log(np.exp(log_new).sum(1, keepdims=True))
    kl = (p_old * (np.log(p_old + 1e-30) - log_new)).sum(1)
    weight = 0.5 + 4.0 * view.right.numpy()
    with torch.no_grad():
        got = loss(focal, adapter) - loss(plain, adapter)
    assert got == pytest.approx(float((weight * kl).mean()), rel=1e-3)
    assert got > 1e-3


def test_training_signal_settings_are_checked():
    for bad in ({"hard_negatives": -1}, {"focal_weight": -0.5}, {"focal_base": -1.0}):
        with pytest.raises(ConfigError, match="must not be negative"):
            AdaptSettings(**bad).check()


def test_the_guard_anchors_on_the_zero_shot_first_place_at_the_same_depth(twin_service, tmp_path):
    """With the anchor equal to the adapted query, a guarded retriever answers exactly as a plain one:
    exact ties (the twins) break the same way, whatever the depth of the search."""
    from isacir.search import Retriever

    state, orig, copy = twin_service
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    adapter = new_adapter(fnd, qe.fingerprint, qe.num_tokens, qe.config.template, [], [], 16, seed=0)
    adapter.save_pretrained(tmp_path / "a")
    guarded = Retriever(gallery, fnd, qe, adapter=type(adapter).from_pretrained(tmp_path / "a", guard_margin=0.05))
    plain = Retriever(gallery, fnd, qe)
    try:
        for a, b in [(orig, copy), *state.twins]:
            _, vecs = gallery.vectors([a])
            for k in (1, 2, 3, 6, 14):
                want = [h.id for h in plain.search_vector(vecs[0], k)]
                got = [h.id for h in guarded.search_vector(vecs[0], k, anchor=vecs[0])]
                assert got == want, k
                assert set(want[:2]) == {a, b} or k == 1
    finally:
        guarded.close()
        plain.close()


def test_refit_trains_the_tuned_recipe_again_on_every_query_and_resumes(tmp_path, openclip_fnd, monkeypatch):
    """--tune --refit: the held-out numbers and the choice are the judged run's; the saved weights are
    exactly those of the same recipe trained with no hold-out, serving the chosen pair; a run killed
    during the refit resumes it and ends the same."""
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    made = _synthetic_feedback(state, 40, seed=21)
    monkeypatch.setattr(adapt_tuning, "TUNE_MARGINS", (0.0, 0.02, 2.0))  # a pair that never yields: always a choice
    args = (state.gallery, state.foundation, state.query_encoder, state.feedback)
    base = AdaptSettings(holdout=0.25, steps=30, lr=1e-2, batch_size=16, hidden=32, seed=2, tune=True, save_every=5)
    judged = adapt(*args, tmp_path / "judged", base, progress=False)
    report = adapt(*args, tmp_path / "refit", replace(base, refit=True), progress=False)

    assert report["holdout"] == judged["holdout"] and report["tuning"]["chosen"] == judged["tuning"]["chosen"]
    assert report["holdout"]["after"]["n"] == 10 and report["counts"]["train"] == 30
    assert report["refit"]["train"] == report["counts"]["refit"] == len(made) == 40
    chosen = report["tuning"]["chosen"]
    pair = (chosen["interpolation"], chosen["guard_margin"])
    refit = QueryAdapter.from_pretrained(tmp_path / "refit")
    assert (refit.interpolation, refit.guard_margin) == pair
    assert refit.fingerprint == report["fingerprint"] != judged["fingerprint"]

    # the oracle: no hold-out at all, the chosen pair given
    a, m = pair
    plain = replace(base, holdout=0.0, tune=False, interpolation=a, guard_margin=m)
    adapt(*args, tmp_path / "all", plain, progress=False)
    oracle = QueryAdapter.from_pretrained(tmp_path / "all")
    want, got = oracle.state_dict(), refit.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert oracle.config.vocab_words == refit.config.vocab_words

    # killed at the refit's 10th step: the rerun skips the judged run (done) and resumes the refit
    real_save, seen = adapt_fit._save_checkpoint, []

    def crash_in_refit(path, st):
        real_save(path, st)
        seen.append((path.name, st["step"]))
        if path.name == adapt_settings.REFIT_CHECKPOINT_NAME and st["step"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(adapt_fit, "_save_checkpoint", crash_in_refit)
    with pytest.raises(KeyboardInterrupt):
        adapt(*args, tmp_path / "killed", replace(base, refit=True), progress=False)
    assert (tmp_path / "killed" / adapt_settings.CHECKPOINT_NAME).is_file()
    seen.clear()
    resumed = adapt(*args, tmp_path / "killed", replace(base, refit=True), progress=False)
    assert seen[0] == (adapt_settings.REFIT_CHECKPOINT_NAME, 15) and all(
        name == adapt_settings.REFIT_CHECKPOINT_NAME for name, _ in seen
    )
    assert resumed["fingerprint"] == report["fingerprint"]
    assert not any(p.name.startswith(".adapt-") for p in (tmp_path / "killed").iterdir())


def test_refit_needs_held_out_feedback():
    with pytest.raises(ConfigError, match="--refit .* --holdout > 0"):
        AdaptSettings(holdout=0.0, refit=True).check()


def test_folds_hold_out_every_query_once_pool_the_counts_and_resume(tmp_path, openclip_fnd, monkeypatch):
    """--folds K: each learnable query is answered once by an adapter trained without it, the
    counts are pooled over all of them, the choice follows the tuning rule on the pooled grid, the
    saved weights are the recipe trained on everything, and a run killed in a fold resumes there."""
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    _synthetic_feedback(state, 31, seed=23)
    # the folds weigh their own, finer grid; a pair that never yields makes a choice always possible
    monkeypatch.setattr(adapt_tuning, "FOLD_TUNE_MARGINS", (0.0, 0.01, 0.02, 2.0))
    monkeypatch.setattr(adapt_tuning, "TUNE_MARGINS", (0.0, 2.0))  # the held-out fifth's: unused with folds
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    args = (gallery, fnd, qe, state.feedback)
    base = AdaptSettings(steps=20, lr=1e-2, batch_size=16, hidden=32, seed=3, tune=True, folds=3, save_every=5)
    report = adapt(*args, tmp_path / "cv", base, progress=False)

    data = load_feedback(state.feedback, qe.fingerprint, qe.num_tokens, fnd.word_dim, gallery, 0, base.seed)
    folds = data.folds(3, base.seed)
    held_ids = [q.query_id for _, held in folds for q in held]
    assert sorted(held_ids) == sorted(t.query_id for t in data.triplets) and len(set(held_ids)) == 31
    assert [len(h) for _, h in folds] == [10, 10, 11]
    assert all(len(t) + len(h) == 31 for t, h in folds)
    assert [s["holdout"] for s in report["cross_validation"]["sizes"]] == [10, 10, 11]
    assert report["counts"]["holdout"] == report["counts"]["train"] == 31 and report["counts"]["folds"] == 3

    # the pooled "before" is zero-shot over every query: one evaluation of all of them agrees
    compose = adapt_tuning.ComposedQueries(fnd, qe.config.template, qe.num_tokens)
    zero_shot, top1 = adapt_tuning.feedback_metrics(compose, gallery, data.triplets, None)
    held = report["holdout"]
    assert held["before"]["hit@1"] == pytest.approx(zero_shot["hit@1"])
    assert held["before"]["hit@10"] == pytest.approx(zero_shot["hit@10"])
    assert held["top1_before"] == int(top1.sum())

    # every pooled cell adds up, and the choice is the rule's on the pooled grid
    grid, right = report["tuning"]["grid"], int(top1.sum())
    assert len(grid) == 4 * 4 and sorted({g["guard_margin"] for g in grid}) == [0.0, 0.01, 0.02, 2.0]
    for g in grid:
        assert round(g["hit@1"] * 31) == right - g["flips"] + g["gained"]
    ok = [g for g in grid if g["hit@1"] >= zero_shot["hit@1"] and (g["flip_rate"] or 0.0) <= adapt_guard.MAX_FLIP_RATE]
    best = max(ok, key=lambda g: (g["hit@1"], -(g["flip_rate"] or 0.0), g["hit@10"]))
    assert report["tuning"]["chosen"] == best
    assert (held["after"]["hit@1"], held["flips"]) == (best["hit@1"], best["flips"])

    # the saved adapter: the recipe trained on all 31 with no hold-out, serving the chosen pair
    saved = QueryAdapter.from_pretrained(tmp_path / "cv")
    assert (saved.interpolation, saved.guard_margin) == (best["interpolation"], best["guard_margin"])
    plain = replace(base, folds=0, holdout=0.0, tune=False, interpolation=best["interpolation"])
    adapt(*args, tmp_path / "all", replace(plain, guard_margin=best["guard_margin"]), progress=False)
    want, got = QueryAdapter.from_pretrained(tmp_path / "all").state_dict(), saved.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    # killed in the second fold: the rerun finds the first fold done and resumes the second
    real_save, seen = adapt_fit._save_checkpoint, []

    def crash_in_fold(path, st):
        real_save(path, st)
        seen.append((path.name, st["step"]))
        if path.name == adapt_settings.FOLD_CHECKPOINT_NAME.format(1) and st["step"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(adapt_fit, "_save_checkpoint", crash_in_fold)
    with pytest.raises(KeyboardInterrupt):
        adapt(*args, tmp_path / "killed", base, progress=False)
    seen.clear()
    resumed = adapt(*args, tmp_path / "killed", base, progress=False)
    assert seen[0] == (adapt_settings.FOLD_CHECKPOINT_NAME.format(1), 15)
    assert adapt_settings.FOLD_CHECKPOINT_NAME.format(0) not in {name for name, _ in seen}
    assert resumed["fingerprint"] == report["fingerprint"] and resumed["holdout"] == report["holdout"]
    assert not any(p.name.startswith(".adapt-") for p in (tmp_path / "killed").iterdir())


def test_folds_settings_are_checked():
    with pytest.raises(ConfigError, match="--folds must be 0 .* or at least 2"):
        AdaptSettings(folds=1).check()
    AdaptSettings(folds=5, holdout=0.0, refit=True).check()  # folds judge: no hold-out needed for the refit


def test_split_and_folds_are_deterministic_and_disjoint():
    from collections import Counter

    from isacir.adapt.data import FeedbackData

    examples = [FeedbackExample(f"q{i}", f"text {i}", np.full((2, 4), i, np.float32), i) for i in range(23)]
    data = FeedbackData(examples, [], Counter())
    train, held = data.split(0.2, 7)
    # the hold-out that one split has always drawn: the first round(0.2 n) of a seeded permutation
    # of the queries in content order
    order = sorted(range(23), key=lambda i: examples[i].content_key())
    want = {order[i] for i in np.random.default_rng(7).permutation(23)[:5]}
    assert {int(q.query_id[1:]) for q in held} == want and len(train) == 18
    folds = data.folds(4, 7)
    assert folds == data.folds(4, 7) and [len(h) for _, h in folds] == [5, 6, 6, 6]
    assert Counter(q.query_id for _, h in folds for q in h) == Counter(q.query_id for q in examples)
    with pytest.raises(ValueError, match="24 folds need"):
        data.folds(24, 7)


def test_the_default_recipe_is_chosen_by_folds_and_serves_the_winners_fold_soup(tmp_path, openclip_fnd, monkeypatch):
    """`isacir adapt`'s default: every candidate recipe judged by the same folds, the rule picks the
    promotable candidate with the most pooled hits, and the saved adapter is exactly the soup of that
    candidate's fold adapters at its chosen pair; a run killed in the second candidate resumes there."""
    from isacir.adapt import adapt
    from isacir.adapt import choose as adapt_choose
    from isacir.adapt.recipes import CANDIDATE_RECIPES
    from isacir.adapt.soup import soup
    from isacir.adapter import QueryAdapter

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=16)
    _synthetic_feedback(state, 24, seed=29)
    monkeypatch.setattr(adapt_tuning, "FOLD_TUNE_MARGINS", (0.0, 0.02, 2.0))  # a pair that never yields
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    args = (gallery, fnd, qe, state.feedback)
    base = AdaptSettings.auto(steps=12, lr=1e-2, batch_size=8, hidden=16, seed=2, folds=2, save_every=4)
    members: list[list[QueryAdapter]] = []
    real_soup = adapt_choose.soup

    def keep(adapters):
        members.append(list(adapters))
        return real_soup(adapters)

    monkeypatch.setattr(adapt_choose, "soup", keep)
    report = adapt(*args, tmp_path / "auto", base, progress=False)
    weighed = {w["recipe"]: w for w in report["recipe"]["weighed"]}
    assert list(weighed) == list(CANDIDATE_RECIPES)
    ok = {n: w["chosen"] for n, w in weighed.items() if w["chosen"] is not None}
    assert ok, "the never-yielding margin keeps every candidate promotable"
    winner = max(ok, key=lambda n: (ok[n]["hit@1"], -(ok[n]["flip_rate"] or 0.0), ok[n]["hit@10"]))
    assert report["recipe"]["chosen"] == winner and report["promotable"]

    # each candidate's folds are the custom recipe's folds: the same pooled grid, count for count
    for name in CANDIDATE_RECIPES:
        custom = replace(base, recipe="custom", tune=True, **CANDIDATE_RECIPES[name])
        one = adapt(*args, tmp_path / f"custom-{name}", custom, progress=False)
        assert one["tuning"]["chosen"] == weighed[name]["chosen"]
        if name == winner:
            assert report["tuning"]["grid"] == one["tuning"]["grid"]

    # the saved adapter is the winner's two fold adapters averaged, at the chosen pair
    (fold_adapters,) = members
    assert len(fold_adapters) == 2 and fold_adapters[0].config.lora_rank == CANDIDATE_RECIPES[winner]["lora_rank"]
    want = soup(fold_adapters)
    want.set_interpolation(ok[winner]["interpolation"])
    want.set_guard_margin(ok[winner]["guard_margin"])
    saved = QueryAdapter.from_pretrained(tmp_path / "auto")
    assert saved.fingerprint == want.fingerprint == report["fingerprint"]

    # killed in the second candidate's second fold: the rerun trains only what was left
    real_save, seen = adapt_fit._save_checkpoint, []
    second = list(CANDIDATE_RECIPES)[1]
    crash_at = adapt_settings.CANDIDATE_CHECKPOINT_NAME.format(second).format(1)

    def crash(path, st):
        real_save(path, st)
        seen.append((path.name, st["step"]))
        if path.name == crash_at and st["step"] == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(adapt_fit, "_save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        adapt(*args, tmp_path / "killed", base, progress=False)
    seen.clear()
    resumed = adapt(*args, tmp_path / "killed", base, progress=False)
    assert seen[0] == (crash_at, 12)
    assert resumed["fingerprint"] == report["fingerprint"]
    assert not any(p.name.startswith(".adapt-") for p in (tmp_path / "killed").iterdir())


def test_recipe_settings_are_checked():
    with pytest.raises(ConfigError, match="--recipe must be one of"):
        AdaptSettings(recipe="best").check()
    with pytest.raises(ConfigError, match="--refit and --soup belong to --recipe custom"):
        AdaptSettings.auto(soup=3).check()


def test_word_dropout_drops_words_at_its_rate_and_never_the_whole_modifier():
    g = torch.Generator().manual_seed(0)
    text = "the red circle: recolour it blue"
    outs = [adapt_fit._drop_words(text, 0.3, g) for _ in range(4000)]
    words = len(text.split())
    kept = sum(len(o.split()) for o in outs) / (4000 * words)
    assert abs(kept - 0.7) < 0.02
    assert all(o and set(o.split()) <= set(text.split()) for o in outs)
    # every word dropped at once leaves the text whole rather than empty
    assert adapt_fit._drop_words("blue", 0.999, torch.Generator().manual_seed(1)) == "blue"
    with pytest.raises(ConfigError, match="--word-dropout"):
        AdaptSettings(word_dropout=1.0).check()
    with pytest.raises(ConfigError, match="--vocab-decay"):
        AdaptSettings(vocab_decay=-1).check()


def test_vocabulary_decay_keeps_new_rows_near_the_foundations_words(tmp_path, openclip_fnd):
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=12)
    _synthetic_feedback(state, 24, seed=31)
    args = (state.gallery, state.foundation, state.query_encoder, state.feedback)
    base = AdaptSettings(steps=15, lr=1e-2, batch_size=8, hidden=16, seed=1, holdout=0.0, vocab_min_count=1)
    norms = {}
    for decay in (0.0, 100.0):
        adapt(*args, tmp_path / f"d{decay}", replace(base, vocab_decay=decay), progress=False)
        adapter = QueryAdapter.from_pretrained(tmp_path / f"d{decay}")
        assert adapter.vocab is not None and len(adapter.config.vocab_ids)
        norms[decay] = float(adapter.vocab.delta.detach().norm(dim=-1).mean())
    assert norms[100.0] < 0.5 * norms[0.0]


def test_a_grid_of_pairs_composes_once_per_interpolation_and_counts_as_each_pair_alone(tmp_path, openclip_fnd):
    """The grid reuses each interpolation's queries and the zero-shot anchors across margins; every
    pair's numbers equal those of the adapter served at that pair on its own."""
    from isacir.adapt import adapt
    from isacir.adapter import QueryAdapter

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=12)
    _synthetic_feedback(state, 20, seed=37)
    fnd, qe, gallery = state.foundation, state.query_encoder, state.gallery
    settings = AdaptSettings(steps=10, lr=1e-2, batch_size=8, hidden=16, seed=1, holdout=0.0)
    adapt(gallery, fnd, qe, state.feedback, tmp_path / "a", settings, progress=False)
    data = load_feedback(state.feedback, qe.fingerprint, qe.num_tokens, fnd.word_dim, gallery, 0, 1)
    compose = adapt_tuning.ComposedQueries(fnd, qe.config.template, qe.num_tokens)
    pairs = [(0.5, 0.0), (0.5, 0.02), (1.0, 0.0), (1.0, 0.01), (1.0, 2.0)]
    grid = list(
        adapt_tuning._served_pairs(compose, gallery, data.triplets, QueryAdapter.from_pretrained(tmp_path / "a"), pairs)
    )
    assert [p for p, _, _ in grid] == pairs
    for (a, m), metrics, top1 in grid:
        alone = QueryAdapter.from_pretrained(tmp_path / "a", interpolation=a, guard_margin=m)
        want, want_top1 = adapt_tuning.feedback_metrics(compose, gallery, data.triplets, alone)
        assert metrics == want and np.array_equal(top1, want_top1)


def test_too_little_feedback_for_the_folds_is_one_clear_error(tmp_path, openclip_fnd):
    from isacir.adapt import adapt

    _, state, _ = build_service(tmp_path / "svc", openclip_fnd, api_key=None, n_images=8)
    _synthetic_feedback(state, 3, seed=41, replay=0)
    args = (state.gallery, state.foundation, state.query_encoder, state.feedback, tmp_path / "a")
    with pytest.raises(ConfigError, match="--recipe auto judges by 4 folds and needs at least 4 learnable queries"):
        adapt(*args, AdaptSettings.auto(steps=2), progress=False)
    with pytest.raises(ConfigError, match="--folds 5 needs at least 5 learnable queries; the log has 3"):
        adapt(*args, AdaptSettings(steps=2, folds=5), progress=False)
