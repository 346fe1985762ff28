"""The one interface every large vision-language foundation implements.

Retrieval, training and serving only talk to :class:`Foundation`; a family (open_clip, BLIP, ...)
supplies the few model-specific forwards. Composition (template, slots, truncation, averaging of
several modifiers) is shared here so that it behaves identically across families.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..compose import (
    DEFAULT_TEMPLATE,
    ComposedInputs,
    Modifier,
    PromptTemplate,
    TokenizerAdapter,
    average_groups,
    build_composed_inputs,
    expand_modifiers,
    max_pseudo_tokens,
    validate_pseudo_tokens,
)
from ..data.imageio import ImageSource, load_image
from ..errors import PseudoTokenError
from ..fingerprint import hash_state_dict

M = TypeVar("M", bound=nn.Module)


def pool_patch_grid(local: torch.Tensor, grid: int | None) -> torch.Tensor:
    """Average-pool a square patch sequence ``[B, P, D]`` to ``grid x grid`` positions (None: keep)."""
    if grid is None:
        return local
    b, p, d = local.shape
    side = int(round(p**0.5))
    if side * side != p:
        raise ValueError(f"cannot pool {p} local features to a grid: not a square number")
    x = local.transpose(1, 2).reshape(b, d, side, side)
    return F.adaptive_avg_pool2d(x, grid).flatten(2).transpose(1, 2)


#: Hugging Face text towers trained on many languages (XLM-RoBERTa, NLLB's M2M-100, mT5, Gemma)
MULTILINGUAL_TEXT_TOWERS = frozenset({"xlm-roberta", "xlm-roberta-xl", "m2m_100", "mt5", "gemma", "gemma2", "gemma3"})
#: vocabularies this large (XLM-R 250k, mT5 250k, Gemma 256k pieces) cover many scripts
MULTILINGUAL_VOCAB = 200_000


@dataclass
class ImageFeatures:
    """Image-side outputs of a foundation.

    ``global_`` and ``local`` live in the joint image-text space (what retrieval and token-to-patch
    alignment compare against); ``hidden`` is the raw vision sequence a matching head cross-attends
    to (BLIP ITM), or ``None`` where the family has no such head.
    """

    global_: torch.Tensor  # [B, D]
    local: torch.Tensor | None = None  # [B, P, D]
    hidden: torch.Tensor | None = None  # [B, T, W]


class Foundation(nn.Module):
    """A frozen VL model: image/text/composed encoders, word embeddings, optional matching head."""

    #: Registry family prefix, e.g. ``"openclip"``.
    family: str = ""
    #: Languages the checkpoint's own metadata names (ISO codes); they win over the guess below.
    declared_languages: tuple[str, ...] | None = None

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self._fingerprint: str | None = None

    # ----- required facts and forwards (family-specific) -----------------------------------------
    tokenizer: TokenizerAdapter
    transform: Callable[[Image.Image], torch.Tensor]

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Dimension of the joint image-text space."""

    @property
    @abstractmethod
    def token_embedding(self) -> nn.Embedding:
        """The text encoder's input word-embedding table."""

    @abstractmethod
    def _text_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_mask: torch.Tensor | None = None,
        pseudo_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Un-normalised joint-space text features, with pseudo tokens spliced into the slots."""

    @abstractmethod
    def _image_forward(self, pixels: torch.Tensor, local: bool) -> ImageFeatures:
        """Un-normalised joint-space image features."""

    def _architecture(self) -> object:
        """JSON-able architecture description folded into the fingerprint."""
        return {"family": self.family}

    # ----- shared behaviour ------------------------------------------------------------------------
    @property
    def languages(self) -> tuple[str, ...]:
        """What the text tower reads: ``("en",)``, or ``("multilingual",)`` for a tower trained on
        many languages. Operators see it, so that nobody types Japanese into an English-only model
        (which answers, poorly, without an error). A checkpoint that declares its languages
        (``save_openclip_checkpoint(languages=...)``) is taken at its word."""
        if self.declared_languages:
            return self.declared_languages
        if self._text_tower_type() in MULTILINGUAL_TEXT_TOWERS:
            return ("multilingual",)
        # a tokenizer of this size was built for many scripts (CLIP's BPE has 49k pieces, BERT 30k)
        return ("multilingual",) if self.token_embedding.num_embeddings >= MULTILINGUAL_VOCAB else ("en",)

    def _text_tower_type(self) -> str | None:
        """The Hugging Face ``model_type`` of the text tower, where it is one."""
        return None

    @property
    def word_dim(self) -> int:
        return self.token_embedding.embedding_dim

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def has_matching_head(self) -> bool:
        return False

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    #: autocast dtype for inference on a GPU (set by ``create_foundation``); None: full precision
    inference_dtype: torch.dtype | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        dev = self.device
        if self.inference_dtype is None or dev.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.inference_dtype)

    @property
    def fingerprint(self) -> str:
        """Hash of architecture and all weights; computed once (weights are frozen)."""
        if self._fingerprint is None:
            self._fingerprint = hash_state_dict(self.state_dict(), extra=self._architecture())
        return self._fingerprint

    def freeze(self) -> Foundation:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Foundation:
        # Frozen by design: dropout must never switch on because a parent module went to train().
        return super().train(False)

    def word_embedding_rms(self) -> float:
        """Per-dimension RMS of the word embeddings; scales a fresh token learner's output."""
        w = self.token_embedding.weight.detach().float()
        return float(w.pow(2).mean().sqrt())

    # ----- images ---------------------------------------------------------------------------------
    def preprocess(self, image: ImageSource) -> torch.Tensor:
        """Decode any supported image (odd modes are converted) into a model-ready tensor."""
        return self.transform(load_image(image))

    def preprocess_batch(self, images: Iterable[ImageSource]) -> torch.Tensor:
        return torch.stack([self.preprocess(im) for im in images])

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        with self._autocast():
            feats = self._image_forward(pixels.to(self.device), local=False).global_.float()
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image_features(self, pixels: torch.Tensor, normalize: bool = True) -> ImageFeatures:
        """Global plus local (patch) features; local ones are what LAR aligns tokens with."""
        out = self._image_forward(pixels.to(self.device), local=True)
        if normalize:
            out.global_ = F.normalize(out.global_, dim=-1)
            if out.local is not None:
                out.local = F.normalize(out.local, dim=-1)
        return out

    # ----- text -----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokenizer(list(texts))

    def encode_text(self, texts: Sequence[str] | str, normalize: bool = True) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids, mask = self.tokenize(texts)
        with self._autocast():
            feats = self._text_forward(ids.to(self.device), mask.to(self.device)).float()
        return F.normalize(feats, dim=-1) if normalize else feats

    def text_linears(self) -> dict[str, nn.Linear]:
        """The ``nn.Linear`` modules a text forward calls, by their name in this module.

        Found by running one prompt with counting hooks rather than by naming layers per family:
        a layer whose weight a fused kernel reads directly (``nn.MultiheadAttention``'s
        ``out_proj``) is never called, so a hook on it would do nothing and it is left out.
        """
        return self._text_modules(nn.Linear)

    def text_attentions(self) -> dict[str, nn.MultiheadAttention]:
        """The ``nn.MultiheadAttention`` modules a text forward calls, by their name in this module:
        the attention whose projection weights :meth:`text_linears` cannot reach."""
        return self._text_modules(nn.MultiheadAttention)

    def _text_modules(self, kind: type[M]) -> dict[str, M]:
        """The modules of ``kind`` that one text forward calls, found with counting hooks."""
        found: dict[str, M] = {}

        def seen(name: str, module: M) -> Callable[..., None]:
            def hook(*_: object) -> None:  # returns None: the module's output stays as it is
                found[name] = module

            return hook

        handles = [
            module.register_forward_hook(seen(name, module))
            for name, module in self.named_modules()
            if isinstance(module, kind)
        ]
        try:
            with torch.no_grad():
                self.encode_text(["a photo of a red cube"])
        finally:
            for h in handles:
                h.remove()
        return dict(sorted(found.items()))

    def embed_words(self, text: str) -> torch.Tensor:
        """The real word embeddings of ``text`` (no special tokens): ``[n_tokens, word_dim]``."""
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long, device=self.device)
        return self.token_embedding(ids)

    def max_pseudo_tokens(self, template: str | PromptTemplate = DEFAULT_TEMPLATE) -> int:
        return max_pseudo_tokens(self.tokenizer, PromptTemplate.parse(template))

    def _composed_inputs(
        self,
        pseudo_tokens: torch.Tensor,
        modifiers: Modifier | Iterable[Modifier] | None,
        template: str | PromptTemplate,
        expected_tokens: int | None,
    ) -> tuple[ComposedInputs, torch.Tensor, list[int], int]:
        tpl = PromptTemplate.parse(template)
        tokens = validate_pseudo_tokens(
            pseudo_tokens, self.word_dim, max_pseudo_tokens(self.tokenizer, tpl), expected_tokens
        )
        texts, owner = expand_modifiers(modifiers, tokens.shape[0])
        inputs = build_composed_inputs(self.tokenizer, tpl, tokens.shape[1], texts)
        repeated = tokens.index_select(0, torch.as_tensor(owner, device=tokens.device))
        dev = self.device
        return inputs, repeated.to(dev), owner, tokens.shape[0]

    def encode_composed(
        self,
        pseudo_tokens: torch.Tensor,
        modifiers: Modifier | Iterable[Modifier] | None = None,
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        normalize: bool = True,
        expected_tokens: int | None = None,
    ) -> torch.Tensor:
        """Read ``template`` with the pseudo tokens in the first slot and the modifier in the second.

        ``modifiers`` holds one entry per query: a string, or several strings whose normalised
        features are averaged (FashionIQ's two captions). The modifier is truncated to fit the
        context; pseudo tokens never are. Gradients flow to ``pseudo_tokens`` only.
        """
        inputs, repeated, owner, batch = self._composed_inputs(pseudo_tokens, modifiers, template, expected_tokens)
        with self._autocast():
            feats = self._text_forward(
                inputs.input_ids.to(self.device), inputs.attention_mask.to(self.device), inputs.slot_mask, repeated
            ).float()
        if normalize:
            feats = F.normalize(feats, dim=-1)
        return average_groups(feats, owner, batch, normalize)

    # ----- matching head --------------------------------------------------------------------------
    def match_score(
        self,
        image_hidden: torch.Tensor,
        texts: Sequence[str] | None = None,
        pseudo_tokens: torch.Tensor | None = None,
        modifiers: Modifier | Iterable[Modifier] | None = None,
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
    ) -> torch.Tensor | None:
        """Pairwise match logits (image i with text/composition i), or ``None`` without a head.

        ``image_hidden`` is :attr:`ImageFeatures.hidden`. Pass either plain ``texts`` or
        ``pseudo_tokens`` (+ ``modifiers``); with several modifiers per query, logits are averaged.
        """
        if not self.has_matching_head:
            return None
        if (texts is None) == (pseudo_tokens is None):
            raise PseudoTokenError("match_score needs exactly one of texts or pseudo_tokens")
        if texts is not None:
            ids, mask = self.tokenize(list(texts))
            if ids.shape[0] != image_hidden.shape[0]:
                raise PseudoTokenError(f"{ids.shape[0]} texts for {image_hidden.shape[0]} images")
            return self._match_forward(image_hidden.to(self.device), ids.to(self.device), mask.to(self.device))
        assert pseudo_tokens is not None  # exactly one of the two, checked above
        inputs, repeated, owner, batch = self._composed_inputs(pseudo_tokens, modifiers, template, None)
        if batch != image_hidden.shape[0]:
            raise PseudoTokenError(f"{batch} pseudo-token queries for {image_hidden.shape[0]} images")
        hidden = image_hidden.to(self.device).index_select(0, torch.as_tensor(owner, device=self.device))
        logits = self._match_forward(
            hidden, inputs.input_ids.to(self.device), inputs.attention_mask.to(self.device), inputs.slot_mask, repeated
        )
        return average_groups(logits.unsqueeze(-1), owner, batch, normalize=False).squeeze(-1)

    def _match_forward(
        self,
        image_hidden: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_mask: torch.Tensor | None = None,
        pseudo_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """Facts for logs, ``isacir foundation info`` and checkpoint configs."""
        return {
            "name": self.name,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "embed_dim": self.embed_dim,
            "word_dim": self.word_dim,
            "context_length": self.context_length,
            "has_matching_head": self.has_matching_head,
            "parameters": sum(p.numel() for p in self.parameters()),
        }
