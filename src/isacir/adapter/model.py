"""A server-side adaptation of the text side, learned from operator feedback.

The gallery is indexed by the foundation's frozen image tower, so everything on the query side can
change while every stored vector stays valid. A :class:`QueryAdapter` changes two things there,
both starting as the identity so that a fresh adapter reproduces the served results exactly:

* a residual **token adapter** on the incoming pseudo tokens (``t + s * up(gelu(down(t / s)))``,
  ``up`` zero-initialised, ``s`` the word-embedding RMS so the MLP sees unit-scale inputs);
* a **domain vocabulary**: additive rows on the foundation's word-embedding table for the word
  pieces that operators use in their modifiers. The patch is applied by a forward hook and stored
  here, never written into the foundation, so the foundation's fingerprint stays what it is;
* optionally, **low-rank adapters** (LoRA) on the linear layers of the text tower, ``B`` zero at
  start. They too act through forward hooks rather than by wrapping the foundation's layers in
  place, as PEFT's injection would: a wrapped layer would change every user of the shared
  foundation in every thread, where a hook acts only for the thread that composes an adapted query.
  ``nn.MultiheadAttention`` reads its projection weights directly, so no hook on a linear layer
  reaches them; with ``lora_attention``, a hook on the attention module recomputes its output with
  low-rank updates on the input and output projections, again only for that thread;
* optionally, a **query head**: a residual linear map on the composed query, ``normalize(q + W q)``
  with ``W`` zero at start. Since ``(q + W q) . g = q . (g + W^T g)``, it is a learned metric on the
  stored gallery vectors that never touches them: it can weigh up the directions in which a target
  differs from the near ties operators rejected, which the frozen image tower separates by little.

Why hooks and not PEFT. PEFT is the library for LoRA, and it was weighed for exactly this job:
serving several adapters on one shared text tower. Its LoRA injection replaces the foundation's
layers in place, and its mixed-adapter batches (``adapter_names=[...]`` passed to the model's
forward, routed to each wrapped layer by pre-forward hooks) and its LoRA for
``nn.MultiheadAttention`` would cover what the service needs. What it costs here: (1) the frozen
foundation is shared by every served version, the zero-shot guard and the gallery side in one
process, and injection changes its modules (and the state dict its fingerprint hashes) for all of
them; (2) ``adapter_names`` must reach the wrapped layers through the top-level forward, while the
text tower is called as ``encode_composed`` / open_clip's ``encode_text``, which pass no such
argument, so every family would need its own plumbing; (3) a version served alone, a canary beside
it and the guard's zero-shot query are composed in different threads of the micro-batcher, which
per-thread hooks keep apart without any routing. The hooks below are about 60 lines, their LoRA is
initialised as PEFT's (Kaiming-uniform ``A``, zero ``B``, ``alpha / r`` scaling), and a test holds a
fresh adapter to the zero-shot answers exactly. Revisit if adapters must run merged into the tower.

``interpolation`` scales both residuals: 1 is the trained adapter, 0 the zero-shot behaviour; the
values between are the WiSE-FT style trade between the customer's queries and everything else.
``guard_margin`` (off by default) keeps the zero-shot top-1 first unless the adapter is sure of
its own (:mod:`isacir.adapter.guard`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_weights, read_config, save_folder
from ..errors import CheckpointError, ConfigError
from ..fingerprint import hash_state_dict
from .config import CONFIG_NAME, MODEL_TYPE, REPORT_NAME, WEIGHTS_NAME, AdapterConfig, AdapterMismatchError
from .layers import DomainVocab, LoraDelta, QueryHead, TokenAdapter, _attention_with

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from ..foundation import Foundation


def _lora_key(name: str) -> str:
    return name.replace(".", "__")


class QueryAdapter(nn.Module):
    """Token adapter + domain vocabulary, saved as a self-describing folder."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        self.tokens = TokenAdapter(config.word_dim, config.hidden, config.token_scale)
        self.vocab = DomainVocab(config.vocab_ids, config.word_dim) if config.vocab_ids else None
        if len(config.lora_targets) != len(config.lora_shapes):
            raise ConfigError("adapter config: lora_targets and lora_shapes differ in length")
        self.lora = (
            nn.ModuleDict(
                {
                    _lora_key(name): LoraDelta(d_in, d_out, config.lora_rank, config.lora_alpha)
                    for name, (d_in, d_out) in zip(config.lora_targets, config.lora_shapes, strict=True)
                }
            )
            if config.lora_rank and config.lora_targets
            else None
        )
        if len(config.lora_attention) != len(config.lora_attention_dims):
            raise ConfigError("adapter config: lora_attention and lora_attention_dims differ in length")
        self.attn_lora = (
            nn.ModuleDict(
                {
                    f"{_lora_key(name)}{part}": LoraDelta(d, d * mult, config.lora_rank, config.lora_alpha)
                    for name, d in zip(config.lora_attention, config.lora_attention_dims, strict=True)
                    for part, mult in (("__in", 3), ("__out", 1))
                }
            )
            if config.lora_rank and config.lora_attention
            else None
        )
        self.head = QueryHead(config.query_head) if config.query_head else None
        self._fingerprint: str | None = None
        self._hooks: dict[int, list[RemovableHandle]] = {}
        self._local = threading.local()

    @property
    def interpolation(self) -> float:
        return float(self.config.interpolation)

    @property
    def guard_margin(self) -> float:
        """The top-1 guard's margin (0: no guard); see :mod:`isacir.adapter.guard`."""
        return float(self.config.guard_margin)

    # ----- the forward pieces --------------------------------------------------------------------
    def adapt_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pseudo tokens the text encoder reads, ``[B, N, D]``."""
        if self.interpolation == 0.0:
            return tokens
        dev = self.device
        out = tokens.to(dev) + self.interpolation * self.tokens.residual(tokens.to(dev, torch.float32)).to(tokens.dtype)
        return out.to(tokens.device)

    def adapt_query(self, query: torch.Tensor) -> torch.Tensor:
        """The composed query through the query head, renormalised (unchanged without a head)."""
        if self.head is None or self.interpolation == 0.0:
            return query
        # where no gradient is asked for, a zero map returns the query itself: renormalising a unit
        # vector moves its last bits, and a fresh adapter must reproduce the served results bit for bit
        weight = self.head.linear.weight
        if not (torch.is_grad_enabled() and weight.requires_grad) and not bool(weight.any()):
            return query
        q = query.to(weight.device, torch.float32)
        return F.normalize(q + self.interpolation * self.head(q), dim=-1).to(query.device, query.dtype)

    def compose(
        self,
        foundation: Foundation,
        tokens: torch.Tensor,
        modifiers: Any,
        template: str,
        expected_tokens: int | None = None,
    ) -> torch.Tensor:
        """The adapted composed query: :meth:`Foundation.encode_composed` on adapted tokens, patched words.

        A hook this call had to attach is removed again, so one-off users (training, evaluation)
        leave no dead hook on the foundation's embedding forward.
        """
        added = self._hooked and id(foundation) not in self._hooks
        self.attach(foundation)
        try:
            with self.applied():
                return self.adapt_query(
                    foundation.encode_composed(
                        self.adapt_tokens(tokens), modifiers, template, expected_tokens=expected_tokens
                    )
                )
        finally:
            if added:
                for handle in self._hooks.pop(id(foundation)):
                    handle.remove()

    @property
    def _active(self) -> bool:
        """Whether the hooks change anything now: inside :meth:`applied` in this thread, not at 0."""
        return self.interpolation != 0.0 and getattr(self._local, "on", False)

    def _embedding_hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if self.vocab is None or not self._active:
            return output
        return output + self.interpolation * self.vocab.patch(args[0]).to(output.dtype)

    def _lora_hook(self, key: str) -> Any:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if self.lora is None or not self._active:
                return output
            return output + (self.interpolation * self.lora[key](args[0].float())).to(output.dtype)

        return hook

    def _attention_hook(self, key: str) -> Any:
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
            if self.attn_lora is None or not self._active:
                return output
            updates: list[LoraDelta] = [self.attn_lora[f"{key}__in"], self.attn_lora[f"{key}__out"]]  # type: ignore[list-item]
            d_in, d_out = (self.interpolation * u.weight_delta() for u in updates)
            return _attention_with(module, args, kwargs, d_in, d_out)

        return hook

    @property
    def _hooked(self) -> bool:
        return self.vocab is not None or self.lora is not None or self.attn_lora is not None

    @property
    def device(self) -> torch.device:
        return self.tokens.up.weight.device

    def follow(self, foundation: Foundation) -> None:
        """Move to the foundation's device, where it is not there yet (a no-op on the same device).

        A move may replace the parameters: build an optimiser after it.
        """
        if self.device != foundation.device:
            self.to(foundation.device)

    def attach(self, foundation: Foundation) -> None:
        """Hook the vocabulary patch and the LoRA updates into the foundation (idempotent).

        The patches are hooks, so the foundation's weights and fingerprint stay untouched, and they
        act only inside :meth:`applied`, in the thread that entered it: other users of the same
        foundation (a plain retriever, gallery indexing, a concurrent request) never see them.
        Placeholder ids never get a row, so the order with the pseudo-token splice is free.

        The adapter moves to the foundation's device first: its hooks run inside the foundation's
        forward, on that forward's tensors, so a foundation on a GPU needs the adapter there too.
        """
        self.follow(foundation)
        if not self._hooked or id(foundation) in self._hooks:
            return
        handles = []
        if self.vocab is not None:
            handles.append(foundation.token_embedding.register_forward_hook(self._embedding_hook))
        for name, (d_in, d_out) in zip(self.config.lora_targets, self.config.lora_shapes, strict=True):
            try:
                layer = foundation.get_submodule(name)
            except AttributeError:
                layer = None
            if not isinstance(layer, nn.Linear) or (layer.in_features, layer.out_features) != (d_in, d_out):
                for h in handles:
                    h.remove()
                raise AdapterMismatchError(
                    f"adapter {self.fingerprint}: the foundation has no linear layer {name} with "
                    f"{d_in} -> {d_out} features for its LoRA update"
                )
            handles.append(layer.register_forward_hook(self._lora_hook(_lora_key(name))))
        for name, d in zip(self.config.lora_attention, self.config.lora_attention_dims, strict=True):
            try:
                attn = foundation.get_submodule(name)
            except AttributeError:
                attn = None
            if not isinstance(attn, nn.MultiheadAttention) or attn.embed_dim != d or not attn._qkv_same_embed_dim:
                for h in handles:
                    h.remove()
                raise AdapterMismatchError(
                    f"adapter {self.fingerprint}: the foundation has no attention module {name} of width {d} "
                    "with one input projection for its LoRA update"
                )
            if self.attn_lora is not None:
                handles.append(attn.register_forward_hook(self._attention_hook(_lora_key(name)), with_kwargs=True))
        self._hooks[id(foundation)] = handles

    def detach(self) -> None:
        """Remove every hook :meth:`attach` installed."""
        for handles in self._hooks.values():
            for handle in handles:
                handle.remove()
        self._hooks.clear()

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within this block (and this thread), attached foundations read the patched embeddings."""
        before = getattr(self._local, "on", False)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = before

    # ----- identity and checks -------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """The adapter's version: a hash of its weights and its architecture."""
        if self._fingerprint is None:
            self._fingerprint = hash_state_dict(self.state_dict(), extra=self.config.architecture())
        return self._fingerprint

    def check(self, query_encoder_fingerprint: str, foundation_fingerprint: str) -> None:
        """Refuse an adapter that belongs to another query encoder or foundation, naming both."""
        cfg = self.config
        problems = []
        if cfg.query_encoder_fingerprint != query_encoder_fingerprint:
            problems.append(
                f"query encoder: the adapter was trained for {cfg.query_encoder_fingerprint}, "
                f"the served one is {query_encoder_fingerprint}"
            )
        if cfg.foundation_fingerprint != foundation_fingerprint:
            problems.append(
                f"foundation: the adapter was trained for {cfg.foundation_fingerprint}, "
                f"the served one is {foundation_fingerprint}"
            )
        if problems:
            raise AdapterMismatchError(
                f"adapter {self.fingerprint} does not belong to this service ("
                + "; ".join(problems)
                + "). Train an adapter for the served query encoder with isacir adapt."
            )

    # ----- persistence ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, report: dict[str, Any] | None = None) -> Path:
        """Write config, weights and report atomically: a crash leaves the old folder or none."""
        self._fingerprint = None
        files = {CONFIG_NAME: {**self.config.to_dict(), "fingerprint": self.fingerprint}}
        if report is not None:
            files[REPORT_NAME] = {"fingerprint": self.fingerprint, **report}
        return save_folder(directory, self, files, WEIGHTS_NAME)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, interpolation: float | None = None, guard_margin: float | None = None
    ) -> QueryAdapter:
        """Load a folder from :meth:`save_pretrained`; its recorded fingerprint must match its weights.

        ``interpolation`` overrides the saved one (0 = zero-shot, 1 = as trained), and
        ``guard_margin`` the saved top-1 guard; the adapter's version changes with either, because
        its answers do.
        """
        directory = Path(directory)
        raw = read_config(directory, CONFIG_NAME, WEIGHTS_NAME, MODEL_TYPE, "query adapter")
        model = cls(AdapterConfig.from_dict(raw))
        load_weights(model, directory / WEIGHTS_NAME)
        if raw.get("fingerprint") and model.fingerprint != raw["fingerprint"]:
            raise CheckpointError(
                f"{directory}: the weights hash to {model.fingerprint}, the config records {raw['fingerprint']} "
                "(a damaged or hand-edited folder)"
            )
        if interpolation is not None:
            model.set_interpolation(interpolation)
        if guard_margin is not None:
            model.set_guard_margin(guard_margin)
        return model.eval()

    def set_interpolation(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"interpolation must be within 0..1, got {value}")
        self.config.interpolation = float(value)
        self._fingerprint = None

    def set_guard_margin(self, value: float) -> None:
        if not 0.0 <= value <= 2.0:
            raise ConfigError(f"guard margin must be within 0..2 (a cosine difference), got {value}")
        self.config.guard_margin = float(value)
        self._fingerprint = None

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "fingerprint": self.fingerprint,
            "query_encoder_fingerprint": cfg.query_encoder_fingerprint,
            "foundation_fingerprint": cfg.foundation_fingerprint,
            "interpolation": cfg.interpolation,
            "guard_margin": cfg.guard_margin,
            "vocab_rows": len(cfg.vocab_ids),
            "lora_rank": cfg.lora_rank,
            "lora_layers": len(cfg.lora_targets),
            "lora_attention": len(cfg.lora_attention),
            "query_head": cfg.query_head,
            "created": cfg.created,
        }


def new_adapter(
    foundation: Foundation,
    query_encoder_fingerprint: str,
    num_tokens: int,
    template: str,
    vocab_ids: Sequence[int] = (),
    vocab_words: Sequence[str] = (),
    hidden: int = 256,
    seed: int = 0,
    lora_rank: int = 0,
    lora_alpha: float = 8.0,
    query_head: bool = False,
    lora_attention: bool = False,
) -> QueryAdapter:
    """A fresh adapter (the identity) for this foundation and query encoder.

    ``lora_rank`` > 0 adds LoRA updates on every linear layer that the foundation's text forward
    calls (:meth:`Foundation.text_linears`), and with ``lora_attention`` on the input and output
    projections of every attention module it calls (:meth:`Foundation.text_attentions`);
    ``query_head`` adds the query head.
    """
    if lora_rank < 0:
        raise ConfigError(f"LoRA rank must not be negative, got {lora_rank}")
    if lora_attention and not lora_rank:
        raise ConfigError("LoRA on the attention needs a LoRA rank (--lora-rank) above 0")
    layers = foundation.text_linears() if lora_rank else {}
    attentions = foundation.text_attentions() if lora_attention else {}
    torch.manual_seed(seed)
    cfg = AdapterConfig(
        word_dim=foundation.word_dim,
        num_tokens=num_tokens,
        query_encoder_fingerprint=query_encoder_fingerprint,
        foundation_fingerprint=foundation.fingerprint,
        foundation_id=foundation.name,
        template=template,
        hidden=hidden,
        token_scale=foundation.word_embedding_rms(),
        vocab_ids=[int(i) for i in vocab_ids],
        vocab_words=list(vocab_words),
        lora_rank=int(lora_rank),
        lora_alpha=float(lora_alpha),
        lora_targets=list(layers),
        lora_shapes=[[m.in_features, m.out_features] for m in layers.values()],
        lora_attention=list(attentions),
        lora_attention_dims=[int(m.embed_dim) for m in attentions.values()],
        query_head=int(foundation.embed_dim) if query_head else 0,
        created=time.time(),
    )
    return QueryAdapter(cfg)
