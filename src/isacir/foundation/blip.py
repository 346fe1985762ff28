"""BLIP image-text retrieval models through transformers (``hf-blip:MODEL_ID_OR_DIR``).

Retrieval uses the ITC projections (``vision_proj``/``text_proj`` of the [CLS] states); the ITM
head scores a (image, text) pair by cross-attending to the vision sequence, which LAR uses on the
pseudo sentence and the re-ranker uses on the top-K.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import transforms as T

from .._logcapture import captured_library_logs, last_error
from ..compose import HFTokenizerAdapter, splice
from ..errors import FoundationLoadError
from .base import Foundation, ImageFeatures
from .registry import register_family


def _blip_transform(image_processor: Any) -> T.Compose:
    """torchvision equivalent of ``BlipImageProcessor`` (resize to a square, rescale, normalise)."""
    size = image_processor.size
    h, w = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
    return T.Compose(
        [
            T.Resize((h, w), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToTensor(),
            T.Normalize(image_processor.image_mean, image_processor.image_std),
        ]
    )


class BlipFoundation(Foundation):
    family = "hf-blip"

    def __init__(self, name: str, model: Any, processor: Any):
        super().__init__(name)
        # transformers models are not typed module by module; their attributes are read as Any
        self.model: Any = model
        self.processor: Any = processor
        max_len = model.config.text_config.max_position_embeddings
        tok_max = getattr(processor.tokenizer, "model_max_length", max_len) or max_len
        self.tokenizer = HFTokenizerAdapter(processor.tokenizer, min(max_len, tok_max), pad_to="longest")
        self.transform = _blip_transform(processor.image_processor)

    @property
    def embed_dim(self) -> int:
        return self.model.config.image_text_hidden_size

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.model.text_encoder.get_input_embeddings()

    @property
    def has_matching_head(self) -> bool:
        return True

    def _architecture(self) -> object:
        return {"family": self.family, "config": self.model.config.to_dict()}

    def _embeds(
        self, input_ids: torch.Tensor, slot_mask: torch.Tensor | None, pseudo_tokens: torch.Tensor | None
    ) -> torch.Tensor:
        embeds = self.token_embedding(input_ids)
        if slot_mask is not None and pseudo_tokens is not None:
            embeds = splice(embeds, slot_mask.to(embeds.device), pseudo_tokens)
        return embeds

    def _text_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_mask: torch.Tensor | None = None,
        pseudo_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model.text_encoder(
            inputs_embeds=self._embeds(input_ids, slot_mask, pseudo_tokens),
            attention_mask=attention_mask,
        )
        return self.model.text_proj(out.last_hidden_state[:, 0, :])

    def _image_forward(self, pixels: torch.Tensor, local: bool) -> ImageFeatures:
        hidden = self.model.vision_model(pixel_values=pixels).last_hidden_state
        global_ = self.model.vision_proj(hidden[:, 0, :])
        if not local:
            return ImageFeatures(global_=global_)
        return ImageFeatures(global_=global_, local=self.model.vision_proj(hidden[:, 1:, :]), hidden=hidden)

    def _match_forward(
        self,
        image_hidden: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_mask: torch.Tensor | None = None,
        pseudo_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        image_atts = torch.ones(image_hidden.shape[:-1], dtype=torch.long, device=image_hidden.device)
        out = self.model.text_encoder(
            inputs_embeds=self._embeds(input_ids, slot_mask, pseudo_tokens),
            attention_mask=attention_mask,
            encoder_hidden_states=image_hidden,
            encoder_attention_mask=image_atts,
        )
        logits = self.model.itm_head(out.last_hidden_state[:, 0, :])
        # log-odds of "match": monotone in the softmax probability, and well-behaved as a loss input
        return logits[:, 1] - logits[:, 0]


def _offline_message(spec: str) -> str:
    return (
        f"Could not load BLIP model {spec!r}: it is not a local folder and it could not be downloaded "
        f"(no network access and no cached copy). On a machine with internet run "
        f"BlipForImageTextRetrieval.from_pretrained({spec!r}).save_pretrained(DIR) and "
        f"BlipProcessor.from_pretrained({spec!r}).save_pretrained(DIR), then use hf-blip:DIR."
    )


@register_family("hf-blip", "MODEL_ID | /path/to/saved_model_dir")
def load_blip(spec: str, name: str) -> BlipFoundation:
    from transformers import BlipForImageTextRetrieval, BlipProcessor

    local = Path(spec).expanduser()
    is_local = local.exists()
    if not is_local and (spec.startswith(("/", ".", "~")) or spec.count("/") > 1):
        raise FoundationLoadError(f"BLIP model folder not found: {local} (from {name!r})")
    source = str(local) if is_local else spec
    try:
        with captured_library_logs() as logs:
            model = BlipForImageTextRetrieval.from_pretrained(source)
            processor = BlipProcessor.from_pretrained(source)
    except OSError as exc:
        if is_local:
            raise FoundationLoadError(f"cannot load BLIP model from {local}: {exc}") from None
        cause = last_error(logs) or str(exc)
        raise FoundationLoadError(f"{_offline_message(spec)} (last error: {cause})") from None
    except Exception as exc:
        raise FoundationLoadError(f"cannot load BLIP model {name!r}: {exc}") from None
    model.eval()
    return BlipFoundation(name, model, processor)
