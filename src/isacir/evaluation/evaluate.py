"""Run a method on a benchmark: encode the gallery, compose the queries, rank, score, export.

One code path serves CIRR, FashionIQ, CIRCO and Shapes-CIR (which is written in CIRCO's format).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .._fs import atomic_write_text
from ..adapter import guard_rankings
from ..compose import DEFAULT_TEMPLATE
from ..data import ImageRecord
from .benchmarks import BenchmarkDataError, CIRBenchmark
from .metrics import map_at_k, mask_excluded, rank_gallery, recall_any_at_k, recall_at_k, subset_rankings

if TYPE_CHECKING:
    from ..adapter import QueryAdapter
    from ..foundation import Foundation
    from ..query import QueryEncoder

#: Reference images -> their pseudo tokens ``[B, T, D]`` (a tensor or an array).
TokenSource = Callable[[list], "torch.Tensor | np.ndarray"]

METHOD_MODES = ("isa", "image_only", "text_only", "image_plus_text", "pixel_only")


def pixel_vectors(paths: Sequence[Path], side: int = 16) -> np.ndarray:
    """Raw-pixel sanity baseline: downsampled, mean-centred, L2-normalised RGB."""
    from ..data.imageio import load_image

    out = []
    for p in paths:
        arr = np.asarray(load_image(p).resize((side, side)), dtype=np.float32).reshape(-1)
        arr = arr - arr.mean()
        out.append(arr / (np.linalg.norm(arr) + 1e-8))
    return np.stack(out)


def encode_gallery(
    fnd: Foundation, paths: Sequence[Path], batch_size: int = 64, workers: int = 0, progress: bool = True
) -> np.ndarray:
    """Every gallery image's vector; a benchmark with unreadable images is a data error, not a skip."""
    from ..gallery import encode_records
    from ..progress import progress_bar

    records = [ImageRecord(str(p)) for p in paths]
    out = np.zeros((len(records), fnd.embed_dim), np.float32)
    bad = []
    batches = encode_records(records, fnd, batch_size, workers)
    for batch in progress_bar(batches, desc="gallery", unit="batch", disable=not progress, leave=False):
        for i, _, vec, error in batch:
            if error:
                bad.append(error)
            else:
                out[i] = vec
    if bad:
        raise BenchmarkDataError(f"{len(bad)} gallery images could not be read, e.g. {bad[0].split('|', 1)[1]}")
    return out


@torch.no_grad()
def encode_queries(
    bench: CIRBenchmark,
    fnd: Foundation,
    gallery_vecs: np.ndarray,
    names: list[str],
    mode: str,
    query_encoder: QueryEncoder | None = None,
    template: str | None = None,
    batch_size: int = 32,
    adapter: QueryAdapter | None = None,
    token_source: TokenSource | None = None,
) -> np.ndarray:
    """Composed query vectors ``[Q, D]`` for ``mode`` (``template`` defaults to the encoder's own).

    ``adapter`` (mode ``isa`` only): a query adapter learned from feedback, applied to every query.
    ``token_source`` (mode ``isa`` only): makes the pseudo tokens of a batch of reference images in
    place of ``query_encoder`` (an exported edge model, say), which still names the token count.
    """
    if mode not in METHOD_MODES:
        raise ValueError(f"unknown mode {mode!r}")
    if template is None:
        template = query_encoder.config.template if query_encoder is not None else DEFAULT_TEMPLATE
    index = {n: i for i, n in enumerate(names)}
    qs = bench.queries
    out = np.zeros((len(qs), fnd.embed_dim), np.float32)
    for start in range(0, len(qs), batch_size):
        chunk = qs[start : start + batch_size]
        if mode == "isa":
            if query_encoder is None:
                raise ValueError("mode 'isa' needs a query encoder")
            refs = [bench.gallery[q.reference] for q in chunk]
            if token_source is not None:
                tokens = torch.as_tensor(np.asarray(token_source(refs)), dtype=torch.float32).to(fnd.device)
            else:
                tokens = query_encoder.encode_images(refs, foundation=fnd)
            mods = [q.modifiers for q in chunk]
            if adapter is not None:
                vec = adapter.compose(fnd, tokens, mods, template, query_encoder.num_tokens)
            else:
                vec = fnd.encode_composed(tokens, mods, template, expected_tokens=query_encoder.num_tokens)
        else:
            img = torch.from_numpy(np.stack([gallery_vecs[index[q.reference]] for q in chunk]))
            if mode == "image_only":
                vec = img
            else:
                flat = [m for q in chunk for m in q.modifiers]
                owner = [j for j, q in enumerate(chunk) for _ in q.modifiers]
                t = fnd.encode_text(flat).float().cpu()
                txt = torch.zeros(len(chunk), t.shape[1]).index_add_(0, torch.tensor(owner), t)
                txt = F.normalize(txt, dim=-1)
                vec = txt if mode == "text_only" else F.normalize(img + txt, dim=-1)
        out[start : start + len(chunk)] = F.normalize(vec.float(), dim=-1).cpu().numpy()
    return out


def score_benchmark(bench: CIRBenchmark, rankings: list[list[str]]) -> dict[str, float]:
    """The benchmark's official metrics (percent)."""
    if not bench.labelled:
        return {}
    if bench.name == "cirr":
        r = recall_at_k(rankings, [q.targets[0] for q in bench.queries], [1, 5, 10, 50])
        sub = subset_rankings(rankings, [q.subset for q in bench.queries], [q.reference for q in bench.queries])
        rs = recall_at_k(sub, [q.targets[0] for q in bench.queries], [1, 2, 3])
        res = {f"R@{k}": v for k, v in r.items()} | {f"Rsubset@{k}": v for k, v in rs.items()}
        res["Avg"] = (res["R@5"] + res["Rsubset@1"]) / 2
        return res
    if bench.name.startswith("fashioniq"):
        r = recall_at_k(rankings, [q.targets[0] for q in bench.queries], [10, 50])
        return {f"R@{k}": v for k, v in r.items()}
    # CIRCO format (CIRCO itself and Shapes-CIR): mAP@K over every ground-truth image
    relevant = [set(q.targets) for q in bench.queries]
    res = {f"mAP@{k}": v for k, v in map_at_k(rankings, relevant, [5, 10, 25, 50]).items()}
    anyk = {k: v for k, v in recall_any_at_k(rankings, relevant, [1, 5, 10, 50]).items()}
    if bench.name == "shapes":
        # Shapes-CIR's ground truths are renderings of one target scene, equally correct by
        # construction: its Recall@K counts any of them.
        return res | {f"R@{k}": v for k, v in anyk.items()}
    # CIRCO's official Recall@K counts only target_img_id; the recall over any ground truth is Rany@K.
    missing = [q.qid for q in bench.queries if q.target is None]
    if missing:
        raise BenchmarkDataError(f"CIRCO queries without target_img_id: {missing[:5]}")
    official = recall_at_k(rankings, [q.target for q in bench.queries], [1, 5, 10, 50])
    return res | {f"R@{k}": v for k, v in official.items()} | {f"Rany@{k}": v for k, v in anyk.items()}


def submission_files(bench: CIRBenchmark, rankings: list[list[str]], out: Path) -> list[Path]:
    """Test-server files: CIRR's two JSONs (top 50, top-3 subset) or CIRCO's ``{id: [50 ids]}``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if bench.name == "cirr":
        recall = {"version": "rc2", "metric": "recall"}
        subset = {"version": "rc2", "metric": "recall_subset"}
        subs = subset_rankings(rankings, [q.subset for q in bench.queries], [q.reference for q in bench.queries])
        for q, r, s in zip(bench.queries, rankings, subs, strict=True):
            recall[q.qid] = r[:50]
            subset[q.qid] = s[:3]
        for name, obj in (("recall_submission_isacir.json", recall), ("recall_subset_submission_isacir.json", subset)):
            _atomic_json(out / name, obj)
            written.append(out / name)
    elif bench.name == "circo":
        sub = {q.qid: r[:50] for q, r in zip(bench.queries, rankings, strict=True)}
        for q, r in zip(bench.queries, rankings, strict=True):
            if len(set(r[:50])) != len(r[:50]):
                raise BenchmarkDataError(f"duplicate predictions for query {q.qid}")
        _atomic_json(out / "circo_test_submission_isacir.json", sub)
        written.append(out / "circo_test_submission_isacir.json")
    return written


def _atomic_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj))


def evaluate(
    bench: CIRBenchmark,
    fnd: Foundation,
    mode: str = "isa",
    query_encoder: QueryEncoder | None = None,
    template: str | None = None,
    gallery_vecs: np.ndarray | None = None,
    progress: bool = True,
    workers: int = 0,
    adapter: QueryAdapter | None = None,
    token_source: TokenSource | None = None,
) -> tuple[dict[str, float], list[list[str]]]:
    names = list(bench.gallery)
    if mode == "pixel_only":
        gallery_vecs = pixel_vectors([bench.gallery[n] for n in names])
        index = {n: i for i, n in enumerate(names)}
        queries = np.stack([gallery_vecs[index[q.reference]] for q in bench.queries])
    else:
        if gallery_vecs is None:
            gallery_vecs = encode_gallery(fnd, [bench.gallery[n] for n in names], progress=progress, workers=workers)
        if adapter is not None and query_encoder is not None:
            adapter.check(query_encoder.fingerprint, fnd.fingerprint)
        queries = encode_queries(
            bench, fnd, gallery_vecs, names, mode, query_encoder, template, adapter=adapter, token_source=token_source
        )
    scores = queries @ gallery_vecs.T
    exclude = [q.reference for q in bench.queries] if bench.exclude_reference else []
    # CIRR's subset metric re-ranks img_set members, which may sit anywhere: keep full rankings there
    top = None if any(q.subset for q in bench.queries) else 51
    rankings = rank_gallery(scores, names, exclude=exclude, top=top)
    if mode == "isa" and adapter is not None and adapter.guard_margin > 0:
        # as served: the zero-shot top-1 stays first unless the adapter is sure of its own
        plain = encode_queries(
            bench, fnd, gallery_vecs, names, mode, query_encoder, template, token_source=token_source
        )
        masked = [mask_excluded(m, names, exclude) for m in (scores, plain @ gallery_vecs.T)]
        rankings = guard_rankings(rankings, masked[0], masked[1], names, adapter.guard_margin)
    return score_benchmark(bench, rankings), rankings
