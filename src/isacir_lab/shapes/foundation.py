"""The tiny CLIP-style foundation of the Shapes-CIR world, trained from scratch on the CPU.

It is an ordinary open_clip model (a custom config: a small ViT image tower with 8 px patches, a
causal text transformer) with a word-level tokenizer saved beside it, so it loads through the
normal ``openclip:ARCH@/folder`` path like any real checkpoint. Its language comes only from its
captions, which is why the world's captions include edit-style descriptions (language
pretraining, never CIR training).
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch

from .japanese import words_ja
from .world import CELLS, COLOURS, COMPARATIVE, PHRASES, SHAPES, SIZES

ARCH = "shapes-clip"
SPECIALS = ["[PAD]", "[UNK]", "[SOS]"]


#: Characters of scripts written without spaces (kana, CJK ideographs and punctuation, full-width
#: forms): each is a token of its own, as most of the kanji in CLIP-family vocabularies are.
#: Splitting Japanese into words needs a morphological analyser; the world's Japanese needs none.
UNSPACED = "\u3000-\u30ff\u3400-\u9fff\uff00-\uffef"
#: What the vocabulary counts as one token: an unspaced character, a run of other word characters,
#: or one other mark (the tokenizer's pre-tokenizer splits the same way).
TOKEN_PATTERN = f"[{UNSPACED}]|[^\\W{UNSPACED}]+|[^\\w\\s{UNSPACED}]"


def writes_japanese(captions: list[str]) -> bool:
    """Whether any caption holds Japanese (the bilingual world's)."""
    import re

    return any(re.search(f"[{UNSPACED}]", c) for c in captions)


def vocabulary(captions: list[str]) -> list[str]:
    """Every word the world can produce (training and held-out phrasings alike), specials first, EOS last.

    Words that only occur in held-out phrasings get embedding rows that training never updates,
    as unseen words would in a real model. CLIP pools at argmax(ids), so [EOS] takes the largest id.
    A bilingual world's captions add Japanese, one character per token.
    """
    import re

    words: set[str] = set()
    sources = list(captions) + [t for s in PHRASES.values() for k in s.values() for t in k]
    sources += list(COLOURS) + list(SHAPES) + list(SIZES) + list(CELLS) + list(COMPARATIVE.values())
    sources += ["a photo of that", "on the in at"]
    if writes_japanese(captions):
        sources += words_ja()
    for text in sources:
        words.update(re.findall(TOKEN_PATTERN, text.lower().replace("{value}", " ").replace("{comparative}", " ")))
    return SPECIALS + sorted(words) + ["[EOS]"]


def context_length_for(captions: list[str]) -> int:
    """40 tokens for the English world; 80 where captions hold character-level Japanese."""
    import re

    if not writes_japanese(captions):
        return 40
    longest = max(len(re.findall(TOKEN_PATTERN, c)) for c in captions) + 2  # [SOS], [EOS]
    if longest > 80:
        raise ValueError(f"a caption of {longest} tokens is longer than the foundation's 80")
    return 80


def build_tokenizer(vocab: list[str], context_length: int):
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(WordLevel(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(f"[{UNSPACED}]"), behavior="isolated"), pre_tokenizers.Whitespace()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[SOS] $A [EOS]", special_tokens=[("[SOS]", ids["[SOS]"]), ("[EOS]", ids["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[SOS]",
        eos_token="[EOS]",
        model_max_length=context_length,
    )


def model_config(
    vocab_size: int, image_size: int = 64, context_length: int = 40, width: int = 128, patch_size: int = 16
) -> dict:
    """A small ViT (16 px patches: a 4x4 grid at 64 px) and a 3-layer causal text tower.

    Sized for 2 CPU cores: ~0.6 s per 256-pair step (8 px patches cost 4x as much for this world).
    """
    return {
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 4,
            "width": width,
            "patch_size": patch_size,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": vocab_size,
            "width": width,
            "heads": 2,
            "layers": 3,
            "hf_tokenizer_name": "local",
            "pool_type": "argmax",
        },
    }


def _preprocess_config(cfg: dict) -> dict:
    return {
        "size": cfg["vision_cfg"]["image_size"],
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def create_untrained(world: Path, folder: Path, seed: int = 0) -> str:
    """An untrained foundation with the world's vocabulary, saved in the real format."""
    import open_clip

    captions = [c["caption"] for c in json.loads((Path(world) / "foundation_captions.json").read_text())]
    vocab = vocabulary(captions)
    cfg = model_config(len(vocab), context_length=context_length_for(captions))
    from isacir.foundation.openclip import save_openclip_checkpoint

    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    languages = ("en", "ja") if writes_japanese(captions) else None
    save_openclip_checkpoint(model, folder, cfg, _preprocess_config(cfg), languages=languages)
    build_tokenizer(vocab, cfg["text_cfg"]["context_length"]).save_pretrained(str(folder))
    return f"openclip:{ARCH}@{folder}"


def train_foundation(
    world: Path,
    folder: Path,
    steps: int = 640,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> str:
    """Symmetric InfoNCE on the world's image-caption pairs; returns the foundation name."""
    from isacir.data.imageio import load_image
    from isacir.foundation import create_foundation
    from isacir.foundation.openclip import save_openclip_checkpoint
    from isacir.progress import progress_bar

    world, folder = Path(world), Path(folder)
    name = create_untrained(world, folder, seed)
    fnd = create_foundation(name)
    model = fnd.model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    pairs = json.loads((world / "foundation_captions.json").read_text())
    images = torch.stack([fnd.transform(load_image(world / "foundation" / p["image"])) for p in pairs])
    ids, _ = fnd.tokenizer([p["caption"] for p in pairs])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    rng = random.Random(seed)
    t0 = time.perf_counter()
    bar = progress_bar(range(steps), desc="shapes foundation", disable=not progress, leave=False)
    for _ in bar:
        idx = torch.tensor(rng.sample(range(len(pairs)), batch_size))
        img = fnd.encode_image(images[idx])
        txt = torch.nn.functional.normalize(model.encode_text(ids[idx]), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(batch_size)
        loss = 0.5 * (
            torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")
    log(f"shapes foundation: {steps} steps in {time.perf_counter() - t0:.0f}s, final loss {loss.item():.3f}")
    # the tokenizer saved by create_untrained stays; only the weights change
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    save_openclip_checkpoint(model.eval(), folder, cfg["model_cfg"], cfg["preprocess_cfg"], cfg.get("languages"))
    return name
