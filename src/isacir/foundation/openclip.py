"""open_clip foundations: any architecture, random init, a pretrained tag, or a local checkpoint.

Spec forms after ``openclip:``:

* ``ARCH`` -- random init from a fixed seed (warns; for latency benchmarks and tests),
* ``ARCH/TAG`` -- the library's own download and cache (users with internet),
* ``ARCH@/path/ckpt.pt`` -- a local checkpoint file; a custom ARCH is read from ``ARCH.json`` or
  ``open_clip_config.json`` beside it,
* ``ARCH@/path/dir`` or ``local-dir:/path/dir`` -- a folder with ``open_clip_config.json`` and weights,
* ``hf-hub:org/repo`` -- open_clip's Hub schema.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._logcapture import captured_library_logs, last_error
from ..compose import HFTokenizerAdapter, OpenClipTokenizerAdapter, TokenizerAdapter, splice
from ..errors import FoundationLoadError, UnknownModelError
from .base import Foundation, ImageFeatures
from .registry import register_family

#: Seed of the random weights of an architecture named without a tag or checkpoint.
RANDOM_INIT_SEED = 0


class RandomInitWarning(UserWarning):
    """A foundation was built without pretrained weights."""


def _offline_hint(arch: str, what: str) -> str:
    return (
        f"Could not obtain {what} for open_clip model {arch!r}: no network access and no cached copy. "
        f"Download it on a machine with internet (it lands in the Hugging Face cache), or pass a local "
        f"checkpoint: openclip:{arch}@/path/to/checkpoint.pt (or a folder with open_clip_config.json)."
    )


def _register_custom_config(arch: str, checkpoint: Path) -> bool:
    """Make a custom architecture config next to ``checkpoint`` known to open_clip."""
    import open_clip

    folder = checkpoint.parent
    direct = folder / f"{arch}.json"
    if direct.is_file():
        open_clip.add_model_config(direct)
        return True
    bundled = folder / "open_clip_config.json"
    if bundled.is_file():
        cfg = json.loads(bundled.read_text())
        model_cfg = cfg.get("model_cfg", cfg)
        tmp = Path(tempfile.mkdtemp(prefix="isacir-oc-")) / f"{arch}.json"
        tmp.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(tmp)
        return True
    return False


def _unknown_arch(arch: str) -> UnknownModelError:
    import open_clip

    close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownModelError(
        f"unknown open_clip architecture {arch!r}.{hint} See open_clip.list_models(), or save a custom "
        f"config as {arch}.json beside your checkpoint and use openclip:{arch}@/path/ckpt.pt."
    )


def _tokenizer_adapter(tokenizer: Any, context_length: int) -> TokenizerAdapter:
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer):
        return OpenClipTokenizerAdapter(tokenizer, context_length)
    if isinstance(tokenizer, HFTokenizer):
        if getattr(tokenizer, "tokenizer_mode", None) == "clips":
            raise UnknownModelError("open_clip 'clips' tokenizer mode is not supported for composition")
        return HFTokenizerAdapter(
            tokenizer.tokenizer,
            context_length,
            pad_to="max",
            clean=tokenizer.clean_fn,
            strip_sep=getattr(tokenizer, "strip_sep_token", False),
        )
    raise UnknownModelError(f"tokenizer type {type(tokenizer).__name__} is not supported for composition")


class OpenClipFoundation(Foundation):
    family = "openclip"

    def __init__(self, name: str, model: Any, preprocess: Any, tokenizer: Any, architecture: dict):
        super().__init__(name)
        # open_clip models are not typed module by module; their attributes are read as Any
        self.model: Any = model
        self.transform = preprocess
        context = int(getattr(model, "context_length", None) or getattr(tokenizer, "context_length", None) or 77)
        self.tokenizer = _tokenizer_adapter(tokenizer, context)
        self._arch = architecture
        self._splice_state = threading.local()
        self._token_embedding = self._find_token_embedding(model)
        self._token_embedding.register_forward_hook(self._splice_hook)
        self._fast_text = self._check_fast_text()
        visual = model.visual
        # Always ask the ViT for its patch tokens: toggling per call would not be thread-safe.
        self._visual_tokens = hasattr(visual, "output_tokens")
        if self._visual_tokens:
            visual.output_tokens = True

    @staticmethod
    def _find_token_embedding(model: Any) -> nn.Embedding:
        for owner in (model, getattr(model, "text", None)):
            emb = getattr(owner, "token_embedding", None)
            if isinstance(emb, nn.Embedding):
                return emb
        text = getattr(model, "text", None)
        if text is not None and hasattr(getattr(text, "transformer", None), "get_input_embeddings"):
            return text.transformer.get_input_embeddings()
        raise UnknownModelError(f"cannot locate the word-embedding table of {type(model).__name__}")

    def _splice_hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        state = getattr(self._splice_state, "value", None)
        if state is None:
            return output
        slot_mask, pseudo = state
        return splice(output, slot_mask.to(output.device), pseudo)

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, nn.Linear):
            return proj.out_features
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        return int(self._arch["cfg"]["embed_dim"])

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._token_embedding

    def _text_tower_type(self) -> str | None:
        config = getattr(getattr(self.model, "text", None), "config", None)  # open_clip's HFTextEncoder
        return getattr(config, "model_type", None)

    def _architecture(self) -> object:
        return {"family": self.family, **self._arch}

    def _check_fast_text(self) -> bool:
        """Use the truncated text forward only where it provably matches the library's.

        CLIP's text tower is causal and pools at the EOT token, so positions after the longest
        prompt in a batch cannot change the result; skipping them makes short prompts (the usual
        case: ``a photo of * * * *``) several times faster. The equivalence is checked once here
        on a real prompt; any mismatch (another open_clip version, a non-causal tower) disables it.
        """
        m = self.model
        mask = getattr(m, "attn_mask", None)
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        if mask is None or getattr(m, "text_pool_type", None) not in ("argmax", "eos"):
            return False
        if not all(hasattr(m, n) for n in needed):
            return False
        try:
            ids, att = self.tokenizer(["a photo of a dog that is red"])
            with torch.no_grad():
                ref = m.encode_text(ids)
                fast = self._fast_encode_text(ids, att)
            return bool(torch.allclose(ref, fast, atol=1e-5, rtol=1e-4))
        except Exception:
            return False

    def _fast_encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        m = self.model
        length = int(attention_mask.sum(dim=1).max())
        ids = input_ids[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(ids).to(cast)  # the splice hook sees the truncated ids' embeddings
        x = x + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask[:length, :length])
        x = m.ln_final(x)
        x = text_global_pool(x, ids, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def _text_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        slot_mask: torch.Tensor | None = None,
        pseudo_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        fast = getattr(self, "_fast_text", False)
        if slot_mask is not None:
            if fast:
                slot_mask = slot_mask[:, : int(attention_mask.sum(dim=1).max())]
            self._splice_state.value = (slot_mask, pseudo_tokens)
        try:
            if fast:
                return self._fast_encode_text(input_ids, attention_mask)
            return self.model.encode_text(input_ids)
        finally:
            self._splice_state.value = None

    def _image_forward(self, pixels: torch.Tensor, local: bool) -> ImageFeatures:
        visual = self.model.visual
        out = visual(pixels)
        if not self._visual_tokens:
            if local:
                warnings.warn(f"{type(visual).__name__} exposes no patch tokens; local features are None", stacklevel=2)
            return ImageFeatures(global_=out)
        pooled, tokens = out
        if not local:
            return ImageFeatures(global_=pooled)
        proj = getattr(visual, "proj", None)
        if isinstance(proj, torch.Tensor) and tokens.shape[-1] == proj.shape[0]:
            tokens = tokens @ proj
        return ImageFeatures(global_=pooled, local=tokens)


def _parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """-> (arch or schema name, tag, path)."""
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None, None
    if "@" in spec:
        arch, path = spec.split("@", 1)
        return arch, None, path
    if "/" in spec:
        arch, tag = spec.split("/", 1)
        return arch, tag, None
    return spec, None, None


def _is_offline_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    needles = ("connect", "offline", "network", "resolve", "download", "hub", "timed out", "cache", "urlopen")
    return any(n in text for n in needles)


@register_family("openclip", "ARCH[/TAG] | ARCH@/path/ckpt.pt | hf-hub:org/repo | local-dir:/path")
def load_openclip(spec: str, name: str) -> OpenClipFoundation:
    import open_clip

    arch, tag, path = _parse_spec(spec)
    kwargs: dict = {}
    random_init = False
    model_name = arch
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise FoundationLoadError(f"open_clip checkpoint not found: {p} (from {name!r})")
        if p.is_dir():
            if not (p / "open_clip_config.json").is_file():
                raise FoundationLoadError(
                    f"{p} is a folder without open_clip_config.json; pass the checkpoint file instead "
                    f"(openclip:{arch}@/path/file.pt)"
                )
            model_name = f"local-dir:{p}"
        else:
            if arch not in open_clip.list_models() and not _register_custom_config(arch, p):
                raise _unknown_arch(arch)
            kwargs["pretrained"] = str(p)
    elif model_name.startswith("local-dir:"):
        if not Path(model_name.split(":", 1)[1]).is_dir():
            raise FoundationLoadError(f"open_clip folder not found: {model_name}")
    elif not model_name.startswith("hf-hub:"):
        if arch not in open_clip.list_models():
            raise _unknown_arch(arch)
        if tag is not None:
            tags = open_clip.list_pretrained_tags_by_model(arch)
            if tag not in tags:
                raise UnknownModelError(
                    f"open_clip model {arch!r} has no pretrained tag {tag!r}; known tags: {', '.join(tags) or 'none'}"
                )
            kwargs["pretrained"] = tag
        else:
            warnings.warn(
                f"{name}: no pretrained tag or checkpoint given, using RANDOM weights drawn from the fixed "
                f"seed {RANDOM_INIT_SEED}, so every process builds the same weights and fingerprint "
                "(fine for latency benchmarks and tests, useless for retrieval)",
                RandomInitWarning,
                stacklevel=3,
            )
            random_init = True
    try:
        # Random weights come from a fixed seed, without touching the caller's RNG state: index,
        # train and serve run in different processes and must agree on the fingerprint.
        seeded = torch.random.fork_rng(devices=[]) if random_init else contextlib.nullcontext()
        with captured_library_logs() as logs, seeded:
            if random_init:
                torch.manual_seed(RANDOM_INIT_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, **kwargs)
            tokenizer = open_clip.get_tokenizer(model_name)
    except (UnknownModelError, FoundationLoadError):
        raise
    except Exception as exc:  # library errors vary by version; translate them into one clear message
        if path is None and (tag is not None or model_name.startswith("hf-hub:")) and _is_offline_error(exc):
            what = f"pretrained weights {tag!r}" if tag else "weights"
            cause = last_error(logs) or str(exc)
            raise FoundationLoadError(f"{_offline_hint(arch, what)} (last error: {cause})") from None
        where = path or tag or model_name
        raise FoundationLoadError(f"cannot load open_clip model {name!r} from {where}: {exc}") from None
    model.eval()
    cfg = open_clip.get_model_config(model_name) or {}
    # The fingerprint covers the config, not the name: the same weights saved as a file or a folder
    # must fingerprint identically.
    architecture = {"cfg": cfg}
    foundation = OpenClipFoundation(name, model, preprocess, tokenizer, architecture)
    folder = Path(model_name.split(":", 1)[1]) if model_name.startswith("local-dir:") else None
    if folder is not None:
        declared = json.loads((folder / "open_clip_config.json").read_text()).get("languages")
        if declared:
            foundation.declared_languages = tuple(str(lang) for lang in declared)
    return foundation


def save_openclip_checkpoint(
    model: nn.Module,
    folder: str | os.PathLike,
    model_cfg: dict,
    preprocess_cfg: dict | None = None,
    languages: tuple[str, ...] | None = None,
) -> Path:
    """Save an open_clip model as ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    This is the layout ``local-dir:`` and the Hub use, so the folder loads with
    ``openclip:ARCH@/folder`` on any machine without network. ``languages`` (ISO codes) declares
    what the text tower was trained to read, where its type and vocabulary cannot tell.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {}}
    if languages:
        cfg["languages"] = list(languages)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / "open_clip_model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    return folder
