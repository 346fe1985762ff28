"""The adapter's layers, each the identity (or a zero update) at initialisation."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class TokenAdapter(nn.Module):
    """Residual MLP applied to every pseudo token; the identity at initialisation."""

    def __init__(self, word_dim: int, hidden: int, scale: float):
        super().__init__()
        self.scale = float(scale)
        self.down = nn.Linear(word_dim, hidden)
        self.up = nn.Linear(hidden, word_dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def residual(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(F.gelu(self.down(tokens / self.scale)))


class DomainVocab(nn.Module):
    """Additive rows for chosen word-piece ids of the foundation's embedding table (zero at start)."""

    ids: torch.Tensor

    def __init__(self, ids: Sequence[int], word_dim: int):
        super().__init__()
        self.register_buffer("ids", torch.tensor(list(ids), dtype=torch.long), persistent=True)
        self.delta = nn.Parameter(torch.zeros(len(ids), word_dim))
        self._lookup: torch.Tensor | None = None

    def patch(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[*, D]`` additions for a batch of ids (zero for ids without a row)."""
        vocab_max = int(max(int(input_ids.max()), int(self.ids.max())) + 1)
        lookup = self._lookup
        if lookup is None or lookup.numel() < vocab_max or lookup.device != input_ids.device:
            lookup = torch.full((vocab_max,), -1, dtype=torch.long, device=input_ids.device)
            lookup[self.ids.to(input_ids.device)] = torch.arange(len(self.ids), device=input_ids.device)
            self._lookup = lookup
        row = lookup[input_ids]
        # a one-hot product, not an indexed gather: its backward is a matmul, whose sums run in a
        # fixed order, where a gather's scatter-add would accumulate in thread order
        onehot = F.one_hot(row.clamp_min(0), len(self.ids)).to(self.delta.dtype) * (row >= 0).unsqueeze(-1)
        return onehot @ self.delta


class LoraDelta(nn.Module):
    """``scale * B(A(x))``: the low-rank update of one linear layer (``B`` zero at start)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.scale = alpha / rank
        self.A = nn.Linear(in_features, rank, bias=False)
        self.B = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.A.weight, a=5**0.5)  # as PEFT initialises LoRA's A
        nn.init.zeros_(self.B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.B(self.A(x))

    def weight_delta(self) -> torch.Tensor:
        """The update as a matrix ``[out, in]``, the layout of a linear layer's weight."""
        return self.scale * self.B.weight @ self.A.weight


_MHA_FORWARD = inspect.signature(nn.MultiheadAttention.forward)


def _attention_with(
    module: nn.MultiheadAttention, args: tuple, kwargs: dict, d_in: torch.Tensor, d_out: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What ``module(*args, **kwargs)`` returns with ``d_in`` added to its input projection weight
    and ``d_out`` to its output projection weight, as its own (non-fused) forward computes it."""
    call = _MHA_FORWARD.bind(module, *args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    query, key, value = a["query"], a["key"], a["value"]
    batched = query.dim() == 3
    if module.batch_first and batched:
        query, key, value = (x.transpose(1, 0) for x in (query, key, value))
    out, weights = F.multi_head_attention_forward(
        query,
        key,
        value,
        module.embed_dim,
        module.num_heads,
        module.in_proj_weight + d_in.to(module.in_proj_weight.dtype),
        module.in_proj_bias,
        module.bias_k,
        module.bias_v,
        module.add_zero_attn,
        module.dropout,
        module.out_proj.weight + d_out.to(module.out_proj.weight.dtype),
        module.out_proj.bias,
        training=module.training,
        key_padding_mask=a["key_padding_mask"],
        need_weights=a["need_weights"],
        attn_mask=a["attn_mask"],
        average_attn_weights=a["average_attn_weights"],
        is_causal=a["is_causal"],
    )
    if module.batch_first and batched:
        out = out.transpose(1, 0)
    return out, weights


class QueryHead(nn.Module):
    """``W q``: the residual of the composed query's linear map (``W`` zero at start)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, query: torch.Tensor) -> torch.Tensor:
        return self.linear(query)
