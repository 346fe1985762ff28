"""Training objectives: global contrastive distillation (GCD) and local alignment (LAR).

GCD makes the text encoder's reading of ``a photo of <S(x)>`` land where the large image encoder
put ``x``, relative to the rest of the batch. LAR gives each pseudo token a local visual meaning:
through the foundation's matching head where it has one (BLIP ITM), otherwise by contrasting each
token, read on its own, with the image's patch features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Temperature(nn.Module):
    """``tau`` as ``exp(-log_scale)``: learnable (clamped like CLIP's logit scale) or fixed."""

    def __init__(self, init: float = 0.07, learnable: bool = True, max_scale: float = 100.0):
        super().__init__()
        value = torch.tensor(math.log(1.0 / init))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.max_log_scale = math.log(max_scale)

    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()


def symmetric_info_nce(query: torch.Tensor, target: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of the query->target and target->query cross-entropies with the diagonal as positives."""
    logits = scale * query @ target.T
    labels = torch.arange(query.shape[0], device=query.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def gcd_loss(query: torch.Tensor, teacher: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """GCD: composed empty-modifier queries ``[B, D]`` vs cached large image features ``[B, D]``."""
    return symmetric_info_nce(F.normalize(query, dim=-1), F.normalize(teacher, dim=-1), scale)


def token_patch_scores(token_feats: torch.Tensor, patch_feats: torch.Tensor) -> torch.Tensor:
    """Late-interaction score of every query's tokens against every image's patches.

    ``token_feats [B, N, D]``, ``patch_feats [B, P, D]`` (both normalised) -> ``[B, B]``: for each
    token its best-matching patch, averaged over tokens.
    """
    sim = torch.einsum("ind,jpd->ijnp", token_feats, patch_feats)
    return sim.max(dim=-1).values.mean(dim=-1)


def lar_patch_loss(token_feats: torch.Tensor, patch_feats: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """LAR without a matching head: each token must find its own image's patches, not others'."""
    scores = token_patch_scores(F.normalize(token_feats, dim=-1), F.normalize(patch_feats, dim=-1))
    labels = torch.arange(scores.shape[0], device=scores.device)
    logits = scale * scores
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def word_prior_loss(tokens: torch.Tensor, vocabulary: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Mean cosine distance from each pseudo token to its nearest real word embedding.

    The hypothesis it tests: the text encoder learned to let a modifier override *words*, so tokens
    far off the word manifold might resist the modifier. An ablation, off by default, because
    snapping tokens towards words loses what they carry. ``tokens [B, N, D]``, ``vocabulary [V, D]``
    (frozen); the vocabulary is scanned in chunks so a 49k-word CLIP vocab never needs a
    ``[B*N, V]`` matrix at once.
    """
    t = F.normalize(tokens.reshape(-1, tokens.shape[-1]).float(), dim=-1)
    v = F.normalize(vocabulary.detach().float(), dim=-1)
    best = torch.cat([t @ v[i : i + chunk].T for i in range(0, v.shape[0], chunk)], dim=1).max(dim=1).values
    return (1.0 - best).mean()


def hardest_negatives(similarity: torch.Tensor) -> torch.Tensor:
    """Index of the most similar *other* column per row (BLIP mines ITM negatives this way)."""
    sim = similarity.detach().clone()
    sim.fill_diagonal_(float("-inf"))
    return sim.argmax(dim=1)


def lar_itm_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """LAR with a matching head: the pseudo sentence must match its image and not a hard negative.

    Inputs are ITM log-odds for (query i, image i) and (query i, negative image of i).
    """
    pos = F.binary_cross_entropy_with_logits(positive_logits, torch.ones_like(positive_logits))
    neg = F.binary_cross_entropy_with_logits(negative_logits, torch.zeros_like(negative_logits))
    return 0.5 * (pos + neg)


# ----- the global batch across ranks --------------------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """All ranks' (equally padded) rows, concatenated; the backward sends each row's gradient home.

    The backward all-reduces the full gradient and keeps this rank's slice, which works on every
    backend (gloo has no reduce-scatter) and is what open_clip's ``gather_with_grad`` computes.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.rank, ctx.n = dist.get_rank(), rows.shape[0]
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def row_counts(n: int, device: torch.device) -> list[int]:
    """Every rank's ``n``, in rank order (one small collective)."""
    import torch.distributed as dist

    mine = torch.tensor([n], device=device)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, mine)
    return [int(c) for c in counts]


def gather_rows(
    x: torch.Tensor, with_grad: bool = True, sizes: list[int] | None = None
) -> tuple[torch.Tensor, int, list[int]]:
    """Every rank's rows of ``x [n_r, D]`` in rank order: ``(rows [sum n_r, D], my offset, sizes)``.

    Ranks may hold different numbers of rows (a batch that lost undecodable images): sizes are
    exchanged first (unless the caller already knows them) and every rank pads to the largest,
    so the collectives always match.
    """
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = sizes if sizes is not None else row_counts(x.shape[0], x.device)
    top = max(sizes)
    padded = F.pad(x, (0, 0, 0, top - x.shape[0]))
    if with_grad:
        full = _GatherRows.apply(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach().contiguous())
        full = torch.cat(parts)
    rows = torch.cat([full[r * top : r * top + s] for r, s in enumerate(sizes)])
    return rows, sum(sizes[:rank]), sizes


def gcd_loss_global(
    query: torch.Tensor, teacher: torch.Tensor, scale: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GCD over the global batch of all ranks: ``(to_backward, value)``.

    Each rank scores its own queries against every rank's teacher features and its own teacher
    features against every rank's queries, so the negatives are the global batch. The rank's
    share is scaled so that, after DDP averages the gradients over ranks, they equal the
    single-process gradients of :func:`gcd_loss` on the same global batch; ``value`` is that
    global loss (the same on every rank).
    """
    import torch.distributed as dist

    q, t = F.normalize(query, dim=-1), F.normalize(teacher, dim=-1)
    all_q, offset, sizes = gather_rows(q)
    all_t, _, _ = gather_rows(t.detach(), with_grad=False, sizes=sizes)  # same rows per rank as the queries
    total = sum(sizes)
    labels = torch.arange(offset, offset + q.shape[0], device=q.device)
    part = 0.5 * (
        F.cross_entropy(scale * q @ all_t.T, labels, reduction="sum")
        + F.cross_entropy(scale * t @ all_q.T, labels, reduction="sum")
    )
    part = part / total
    value = part.detach().clone()
    dist.all_reduce(value)
    return part * dist.get_world_size(), value
