"""Splicing pseudo tokens into a text encoder's input (the templates live in :mod:`isacir.template`).

The query side produces N vectors in the *word-embedding* space of the foundation's text encoder.
The server renders ``a photo of {} that {}`` by tokenizing the fixed pieces and the modifier
separately, reserving N placeholder slots, and then overwriting the embeddings of those slots with
the pseudo tokens. Building the id sequence by hand (rather than searching for a marker string in
tokenized text) makes the slots unambiguous, guarantees the pseudo tokens are never truncated, and
lets the modifier absorb all truncation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from .errors import PseudoTokenError, TemplateError
from .template import DEFAULT_TEMPLATE, PLACEHOLDER, PromptTemplate  # noqa: F401  (composition re-exports them)

Modifier = Union[str, Sequence[str]]


class TokenizerAdapter:
    """The few tokenizer facts composition needs, independent of the tokenizer library."""

    context_length: int
    bos: list[int]
    eos: list[int]
    pad_id: int
    placeholder_id: int
    #: "max" pads every row to the context length (CLIP); "longest" pads to the batch maximum.
    pad_to: str = "max"

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_continuation(self, text: str) -> list[int]:
        """Tokens of ``text`` where it directly follows other text with no space between, as the
        pieces of a Japanese template do (``{}の写真、{}``). The same as :meth:`encode` for
        tokenizers that add nothing at the start of a text (CLIP's BPE, WordPiece)."""
        return self.encode(text)

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize plain texts with the same layout as composed prompts: ``(ids, attention_mask)``."""
        rows = []
        budget = self.context_length - len(self.bos) - len(self.eos)
        for text in texts:
            rows.append(self.bos + self.encode(text)[:budget] + self.eos)
        return self._pad(rows)

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.context_length if self.pad_to == "max" else max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask


class OpenClipTokenizerAdapter(TokenizerAdapter):
    """open_clip's ``SimpleTokenizer`` (CLIP BPE): ``<sot> ... <eot>`` zero-padded to the context."""

    pad_to = "max"

    def __init__(self, tokenizer: Any, context_length: int | None = None):
        self.tokenizer = tokenizer
        self.context_length = int(context_length or tokenizer.context_length)
        self.bos = [tokenizer.sot_token_id]
        self.eos = [tokenizer.eot_token_id]
        self.pad_id = 0
        # CLIP pools at argmax(ids) (the EOT id is the largest): the slot id must stay below it.
        self.placeholder_id = tokenizer.encoder.get("*</w>", 0)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))


class HFTokenizerAdapter(TokenizerAdapter):
    """Any Hugging Face tokenizer (BERT WordPiece for BLIP, SentencePiece for SigLIP, ...)."""

    def __init__(
        self,
        tokenizer: Any,
        context_length: int,
        pad_to: str = "longest",
        clean: Callable[[str], str] | None = None,
        strip_sep: bool = False,
    ):
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.pad_to = pad_to
        self.clean = clean or (lambda s: s)
        # Learn where the special tokens go by tokenizing a probe word with and without them.
        bare = list(tokenizer("a", add_special_tokens=False)["input_ids"])
        wrapped = list(tokenizer("a", add_special_tokens=True)["input_ids"])
        at = next((i for i in range(len(wrapped)) if wrapped[i : i + len(bare)] == bare), None)
        if not bare or at is None:
            raise ValueError(f"cannot infer the special-token layout of {type(tokenizer).__name__}")
        self.bos, self.eos = wrapped[:at], wrapped[at + len(bare) :]
        if strip_sep and tokenizer.sep_token_id is not None:
            self.eos = [0 if t == tokenizer.sep_token_id else t for t in self.eos]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        star = tokenizer.convert_tokens_to_ids("*")
        unk = tokenizer.unk_token_id
        self.placeholder_id = star if star is not None and star != unk else (unk if unk is not None else 0)

    def _cleaned(self, text: str) -> str:
        # open_clip's cleaners strip the ends; a leading space is kept, since it is the text's own
        # where a tokenizer writes spaces into its pieces (see build_composed_inputs)
        cleaned = self.clean(text)
        return " " + cleaned if cleaned and text[:1].isspace() and not cleaned[:1].isspace() else cleaned

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(self._cleaned(text), add_special_tokens=False)["input_ids"])

    @functools.cached_property
    def _continuation(self) -> Any:
        # built on first use: copying a 250k-piece tokenizer is not start-up work for English prompts
        return _without_dummy_prefix(self.tokenizer)

    def encode_continuation(self, text: str) -> list[int]:
        # SentencePiece-style tokenizers mark the start of every text they are given as a word start
        # (the Metaspace "dummy prefix"); a piece glued to the text before it has no such start, so
        # it is tokenized by a copy of the tokenizer that adds no prefix.
        if self._continuation is None:
            return self.encode(text)
        return list(self._continuation.encode(self._cleaned(text), add_special_tokens=False).ids)


def _without_dummy_prefix(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer's backend whose Metaspace adds no word-start marker and whose
    normalizer prepends none; None where the tokenizer adds none (or is not a fast one)."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    changed = False

    def strip(node: Any) -> Any:
        nonlocal changed
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and (
                node.get("prepend_scheme", "always") != "never" or node.get("add_prefix_space")
            ):
                node = {**node, "prepend_scheme": "never"}
                node.pop("add_prefix_space", None)
                changed = True
            if node.get("type") == "Prepend":
                changed = True
                return None
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, list):
            return [x for x in (strip(v) for v in node) if x is not None]
        return node

    spec["normalizer"] = strip(spec.get("normalizer"))
    spec["pre_tokenizer"] = strip(spec.get("pre_tokenizer"))
    if not changed:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(spec))


def _glued(piece: str) -> bool:
    """Whether ``piece``, which follows a slot or other text, continues it with no space between.
    Composition moves every space between pieces to the start of the piece after it, so the text
    before a piece never ends in one and the piece's own first character decides."""
    return bool(piece) and not piece[0].isspace()


@dataclass
class ComposedInputs:
    """Token ids with reserved slots, ready for a text encoder."""

    input_ids: torch.Tensor  # [M, L]
    attention_mask: torch.Tensor  # [M, L]
    slot_mask: torch.Tensor  # [M, L] bool, exactly N True per row
    truncated: list[int]  # modifier tokens dropped per row


def max_pseudo_tokens(adapter: TokenizerAdapter, template: PromptTemplate) -> int:
    """Largest N that fits the context with this template and an empty modifier slot."""
    with_mod = template.has_modifier_slot
    fixed = sum(len(adapter.encode(p)) for p in template.pieces(with_mod) if p.strip())
    return adapter.context_length - len(adapter.bos) - len(adapter.eos) - fixed


def build_composed_inputs(
    adapter: TokenizerAdapter,
    template: PromptTemplate,
    num_tokens: int,
    modifiers: Sequence[str],
) -> ComposedInputs:
    """Lay out ``bos + prefix + [slot]*N + middle + modifier + suffix + eos`` for each modifier."""
    cache: dict[tuple[str, bool], list[int]] = {}

    def tokens(text: str, glued: bool) -> list[int]:
        return adapter.encode_continuation(text) if glued else adapter.encode(text)

    def enc(piece: str, glued: bool = False) -> list[int]:
        """The template's pieces repeat for every row: tokenized once."""
        if (piece, glued) not in cache:
            cache[piece, glued] = tokens(piece, glued) if piece.strip() else []
        return cache[piece, glued]

    specials = len(adapter.bos) + len(adapter.eos)
    rows: list[list[int]] = []
    slots: list[int] = []
    truncated: list[int] = []
    for modifier in modifiers:
        if modifier.strip():
            if not template.has_modifier_slot:
                raise TemplateError(f"template {template.full!r} has no modifier slot, but a modifier was given")
            prefix, middle, suffix = template.pieces(True)
            # A space between pieces belongs to the text after it, as in the plain text's tokens
            # where a tokenizer writes spaces into its pieces (Gemma's "▁that"); the one before the
            # slot goes to the pseudo tokens. Tokenizers that drop spaces see the same ids either way.
            body = middle.rstrip()
            text = middle[len(body) :] + modifier.strip()
            head, tail = enc(prefix.rstrip()), enc(body, _glued(body))
            mod = tokens(text, _glued(text))
            end = enc(suffix, _glued(suffix))
        else:
            prefix, suffix = template.pieces(False)
            head, tail, end, mod = enc(prefix.rstrip()), [], enc(suffix, _glued(suffix)), []
        fixed = specials + len(head) + num_tokens + len(tail) + len(end)
        budget = adapter.context_length - fixed
        if budget < 0:
            raise PseudoTokenError(
                f"{num_tokens} pseudo tokens do not fit: the template needs {fixed} positions but the text "
                f"encoder's context is {adapter.context_length}"
            )
        truncated.append(max(0, len(mod) - budget))
        mod = mod[:budget]
        slots.append(len(adapter.bos) + len(head))
        rows.append(adapter.bos + head + [adapter.placeholder_id] * num_tokens + tail + mod + end + adapter.eos)
    ids, mask = adapter._pad(rows)
    slot_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, start in enumerate(slots):
        slot_mask[i, start : start + num_tokens] = True
    return ComposedInputs(ids, mask, slot_mask, truncated)


def splice(embeds: torch.Tensor, slot_mask: torch.Tensor, pseudo_tokens: torch.Tensor) -> torch.Tensor:
    """Overwrite the slot embeddings with pseudo tokens; differentiable w.r.t. ``pseudo_tokens``."""
    source = pseudo_tokens.to(embeds.dtype).reshape(-1, embeds.shape[-1])
    return embeds.masked_scatter(slot_mask.unsqueeze(-1).to(embeds.device), source)


def validate_pseudo_tokens(
    tokens: object,
    word_dim: int,
    max_tokens: int | None = None,
    expected_tokens: int | None = None,
) -> torch.Tensor:
    """Check shape, dtype and finiteness, with messages that say what was expected."""
    if not isinstance(tokens, torch.Tensor):
        raise PseudoTokenError(f"pseudo tokens must be a torch.Tensor [B, N, D], got {type(tokens).__name__}")
    if not tokens.is_floating_point():
        raise PseudoTokenError(f"pseudo tokens must be floating point, got dtype {tokens.dtype}")
    if tokens.ndim != 3:
        raise PseudoTokenError(
            f"pseudo tokens must have shape [B, N, D] (batch, tokens, word dim), got {tuple(tokens.shape)}"
        )
    b, n, d = tokens.shape
    if d != word_dim:
        raise PseudoTokenError(
            f"pseudo tokens have D={d}, but this foundation's word-embedding dimension is {word_dim}"
        )
    if n < 1:
        raise PseudoTokenError("pseudo tokens must contain at least one token (N >= 1)")
    if expected_tokens is not None and n != expected_tokens:
        raise PseudoTokenError(f"expected N={expected_tokens} pseudo tokens per query, got N={n}")
    if max_tokens is not None and n > max_tokens:
        raise PseudoTokenError(f"N={n} pseudo tokens exceed the {max_tokens} that fit in the text context")
    if b and not torch.isfinite(tokens).all():
        bad = (~torch.isfinite(tokens)).flatten(1).any(1).nonzero().flatten().tolist()
        raise PseudoTokenError(f"pseudo tokens contain NaN or Inf (queries {bad[:10]})")
    return tokens


def expand_modifiers(modifiers: Modifier | Iterable[Modifier] | None, batch: int) -> tuple[list[str], list[int]]:
    """Flatten per-query modifiers (a string or several strings each) into ``(texts, owner index)``.

    ``None`` means an empty modifier for every query; a single string is shared by all queries.
    """
    if modifiers is None:
        per_query: list[Modifier] = [""] * batch
    elif isinstance(modifiers, str):
        per_query = [modifiers] * batch
    else:
        per_query = list(modifiers)
    if len(per_query) != batch:
        raise PseudoTokenError(f"got {len(per_query)} modifiers for {batch} queries; pass one per query")
    texts: list[str] = []
    owner: list[int] = []
    for i, item in enumerate(per_query):
        group = [item] if isinstance(item, str) else list(item)
        if not group:
            raise PseudoTokenError(f"query {i} has an empty list of modifiers; use '' for no modifier")
        for text in group:
            if not isinstance(text, str):
                raise PseudoTokenError(f"modifier of query {i} must be a string, got {type(text).__name__}")
            texts.append(text)
            owner.append(i)
    return texts, owner


def average_groups(features: torch.Tensor, owner: Sequence[int], batch: int, normalize: bool) -> torch.Tensor:
    """Mean of (normalised) features per query; identity when each query has one modifier."""
    if len(owner) == batch:
        return features
    index = torch.as_tensor(owner, device=features.device)
    if normalize:
        features = torch.nn.functional.normalize(features, dim=-1)
    out = features.new_zeros((batch, features.shape[-1])).index_add(0, index, features)
    counts = torch.bincount(index, minlength=batch).clamp_min(1).to(features.dtype)
    out = out / counts.unsqueeze(-1)
    return torch.nn.functional.normalize(out, dim=-1) if normalize else out
