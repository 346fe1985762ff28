"""A uniform soup of query adapters: one adapter whose every update is the members' average.

Adapters trained on the same feedback with different seeds agree on what the feedback teaches and
disagree on the rest, and what one of them gets wrong by chance is what flips an earlier first
place. Averaging their outputs (an ensemble) keeps the agreement and damps the noise, so it loses
fewer earlier hits at the same gain (Yan et al., "Positive-congruent training", CVPR 2021); an
ensemble would cost one text-tower forward per member at every query. Averaging their weights
(a model soup, Wortsman et al., ICML 2022) costs one forward.

Every update of a :class:`QueryAdapter` is a sum that can be averaged exactly:

* the token adapter's residual ``up(gelu(down(t)))`` is a sum over hidden units, so the average of
  K residuals is one residual with the K hidden layers side by side and ``up`` divided by K;
* a LoRA update ``(alpha / r) B A`` is a sum over rank, so the average of K updates is one update
  of rank ``sum(r)`` with the members' ``A`` rows and ``B`` columns side by side, ``B`` rescaled;
* vocabulary rows and the query head are averaged (a row a member does not have counts as zero).

So the soup's weights are exactly the average of the members' weight updates, at every layer. Its
answers are not the average of theirs (the text tower is not linear), but for adapters trained from
the same identity on the same feedback they come close, and the bench measures the soup itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from ..adapter import AdapterConfig, QueryAdapter
from ..errors import ConfigError

#: config fields every member must share: what the adapter belongs to and where its updates act
_SHARED = (
    "word_dim",
    "num_tokens",
    "query_encoder_fingerprint",
    "foundation_fingerprint",
    "template",
    "token_scale",
    "lora_alpha",
    "lora_targets",
    "lora_shapes",
    "lora_attention",
    "lora_attention_dims",
    "query_head",
    "interpolation",
    "guard_margin",
)


def _check_members(members: Sequence[QueryAdapter]) -> AdapterConfig:
    if not members:
        raise ConfigError("a soup needs at least one adapter")
    first = members[0].config
    for i, m in enumerate(members[1:], start=1):
        differ = [f for f in _SHARED if getattr(m.config, f) != getattr(first, f)]
        if differ:
            raise ConfigError(
                f"adapter {i} of the soup differs from adapter 0 in {', '.join(differ)}: only adapters of one "
                "recipe, for one query encoder and foundation, served at one pair, can be averaged"
            )
    return first


@torch.no_grad()
def soup(members: Sequence[QueryAdapter]) -> QueryAdapter:
    """The adapter whose updates are the exact average of ``members``' (see the module's docstring).

    A soup of one adapter is that adapter, to its fingerprint.
    """
    first = _check_members(members)
    k = len(members)
    ids = sorted({i for m in members for i in m.config.vocab_ids})
    words: dict[int, str] = {}
    for m in members:
        words.update(zip(m.config.vocab_ids, m.config.vocab_words, strict=True))
    ranks = [m.config.lora_rank for m in members]
    config = replace(
        first,
        hidden=sum(m.config.hidden for m in members),
        lora_rank=sum(ranks),
        vocab_ids=ids,
        vocab_words=[words[i] for i in ids],
        training={},
    )
    out = QueryAdapter(config).to(members[0].device)

    t = out.tokens
    t.down.weight.copy_(torch.cat([m.tokens.down.weight for m in members], 0))
    t.down.bias.copy_(torch.cat([m.tokens.down.bias for m in members], 0))
    t.up.weight.copy_(torch.cat([m.tokens.up.weight for m in members], 1) / k)
    t.up.bias.copy_(torch.stack([m.tokens.up.bias for m in members]).mean(0))

    if out.vocab is not None:
        row = {i: r for r, i in enumerate(ids)}
        delta = torch.zeros_like(out.vocab.delta)
        for m in members:
            if m.vocab is not None:
                delta[[row[i] for i in m.config.vocab_ids]] += m.vocab.delta
        out.vocab.delta.copy_(delta / k)

    # (alpha / R) B' A = (1 / k) sum_i (alpha / r_i) B_i A_i with B_i' = B_i R / (k r_i)
    total = sum(ranks)
    for part in ("lora", "attn_lora"):
        target = getattr(out, part)
        if target is None:
            continue
        for key, lora in target.items():
            lora.A.weight.copy_(torch.cat([getattr(m, part)[key].A.weight for m in members], 0))
            scaled = [getattr(m, part)[key].B.weight * (total / (k * r)) for m, r in zip(members, ranks, strict=True)]
            lora.B.weight.copy_(torch.cat(scaled, 1))

    if out.head is not None:
        heads = [m.head for m in members if m.head is not None]
        out.head.linear.weight.copy_(torch.stack([h.linear.weight for h in heads]).mean(0))
    return out.eval()
