"""Tiny random-init models of the real architectures, saved in the real on-disk formats.

No machine of this project can download weights, so tests, the demo and CI exercise the real
loading code on these: an open_clip checkpoint (``open_clip_config.json`` + safetensors, or a
``.pt`` file with ``ARCH.json`` beside it) and a BLIP model + processor written with
``save_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

TINY_OPENCLIP_ARCH = "isacir-tiny-vit"
TINY_OPENCLIP_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

TINY_BLIP_WORDS = (
    "a photo of dog cat that is red blue green big small the with and on in shirt dress sleeveless "
    "same but make it left right top bottom circle square triangle car chair black white leather"
).split()


def save_tiny_openclip(folder: str | os.PathLike, seed: int = 0, as_file: bool = False) -> str:
    """Write a tiny random open_clip model; return the foundation name that loads it."""
    import open_clip

    from .foundation.openclip import save_openclip_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{TINY_OPENCLIP_ARCH}.json"
    cfg_path.write_text(json.dumps(TINY_OPENCLIP_CFG))
    open_clip.add_model_config(cfg_path)
    from ._logcapture import captured_library_logs

    torch.manual_seed(seed)
    with captured_library_logs():  # "no pretrained weights" is the point here
        model = open_clip.create_model(TINY_OPENCLIP_ARCH, pretrained=None)
    if as_file:
        ckpt = folder / "tiny.pt"
        torch.save({"state_dict": model.state_dict()}, ckpt)
        return f"openclip:{TINY_OPENCLIP_ARCH}@{ckpt}"
    save_openclip_checkpoint(
        model,
        folder,
        TINY_OPENCLIP_CFG,
        {"size": 32, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    )
    return f"openclip:{TINY_OPENCLIP_ARCH}@{folder}"


def save_tiny_blip(folder: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random BLIP retrieval model with a small WordPiece tokenizer via save_pretrained."""
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForImageTextRetrieval,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "*", ",", "."] + TINY_BLIP_WORDS
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=32)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=32,
            pad_token_id=0,
            bos_token_id=2,
            sep_token_id=3,
            initializer_range=0.2,
        ),
        # BlipVisionConfig defaults to initializer_range=1e-10, which makes a random tower map every
        # image to the same feature; a livelier init keeps the tiny model a useful test teacher.
        vision_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
            initializer_range=0.2,
        ),
        image_text_hidden_size=32,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = BlipForImageTextRetrieval(config).eval()
    model.save_pretrained(folder)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return f"hf-blip:{folder}"


#: what the tiny multilingual tower's tokenizer is trained on: English and Japanese modifiers
TINY_BILINGUAL_CORPUS = (
    "a photo of a dog that is red",
    "a photo of a red car that is blue",
    "same but in black leather",
    "sleeveless dress with stripes",
    "make it blue and smaller",
    "同じ形で赤",
    "取っ手なし",
    "赤い車の写真",
    "青くして小さく",
    "犬の写真",
    "黒い革で同じもの",
)


def _hf_text_cfg(folder: Path, pooler: str) -> dict:
    """An open_clip config whose text tower is the Hugging Face model saved in ``folder``."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {
            "hf_model_name": str(folder),
            "hf_tokenizer_name": str(folder),
            "hf_pooler_type": pooler,
            "hf_proj_type": "linear",
            "context_length": 32,
        },
    }


def _save_tiny_arch(folder: Path, arch: str, cfg: dict, seed: int, hf_tower: bool = False) -> str:
    """Register ``cfg`` as ``arch``, build it with seeded random weights and save it in open_clip's
    local layout; return the foundation name that loads it."""
    import open_clip

    from ._logcapture import captured_library_logs
    from .foundation.openclip import save_openclip_checkpoint

    (folder / f"{arch}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{arch}.json")
    torch.manual_seed(seed)
    with captured_library_logs():  # "no pretrained weights" is the point here
        # the tower's weights are these random ones, not a hub download
        extra = {"pretrained_hf": False} if hf_tower else {}
        model = open_clip.create_model(arch, pretrained=None, **extra)
    save_openclip_checkpoint(model, folder, cfg, {"size": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    return f"openclip:{arch}@{folder}"


def save_tiny_xlmr_openclip(folder: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny open_clip model whose text tower is an XLM-RoBERTa (mean pooling, as
    ``xlm-roberta-base-ViT-B-32`` has) with a SentencePiece-style Unigram tokenizer trained here on
    English and Japanese; return the foundation name that loads it.

    One folder holds what open_clip's local layout needs (``open_clip_config.json``, the weights)
    and what its Hugging Face text tower reads (the tower's ``config.json`` and the tokenizer files),
    as a Hub repository would."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.NFKC()
    raw.pre_tokenizer = pre_tokenizers.Metaspace()
    raw.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=special, unk_token="<unk>")
    raw.train_from_iterator(list(TINY_BILINGUAL_CORPUS) * 20, trainer)
    bos, eos = raw.token_to_id("<s>"), raw.token_to_id("</s>")
    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer = XLMRobertaTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    tower = XLMRobertaConfig(
        vocab_size=raw.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=40,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    tower.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return _save_tiny_arch(folder, "isacir-tiny-xlmr", _hf_text_cfg(folder, "mean_pooler"), seed, hf_tower=True)


def save_tiny_siglip2_openclip(folder: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny open_clip model shaped like SigLIP 2's (``ViT-B-16-SigLIP2``): open_clip's own text
    transformer with no causal mask, pooled at the last position over text padded to the context,
    read through a Gemma tokenizer (byte-pair pieces, spaces written as ``▁``, no word-start marker,
    ``<bos>`` first) trained here on English and Japanese; return the foundation name that loads it."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import GemmaTokenizerFast

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.normalizer = normalizers.Replace(" ", "\u2581")
    raw.decoder = decoders.Sequence([decoders.Replace("\u2581", " ")])
    # trained as SentencePiece trains Gemma's: pieces never span a space (one may start with "▁");
    # the finished tokenizer, like Gemma's, has no pre-tokenizer
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=160, special_tokens=special)
    raw.train_from_iterator(list(TINY_BILINGUAL_CORPUS) * 20, trainer)
    raw.pre_tokenizer = None
    bos = raw.token_to_id("<bos>")
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tokenizer = GemmaTokenizerFast(
        tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.save_pretrained(folder)
    cfg = {
        "embed_dim": 32,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {
            "context_length": 24,
            "vocab_size": len(tokenizer),
            "hf_tokenizer_name": str(folder),
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": 64,
            "heads": 2,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
            "act_kwargs": {"approximate": "tanh"},
        },
    }
    return _save_tiny_arch(folder, "isacir-tiny-siglip2", cfg, seed)


def save_tiny_nllb_openclip(folder: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny open_clip model shaped like NLLB-CLIP (``nllb-clip-base``): the encoder of an
    M2M-100 (NLLB's architecture) as the text tower, pooled at its first token, which NLLB's
    tokenizer makes the source-language code (``eng_Latn``, ``jpn_Jpan``); the tokenizer is trained
    here on English and Japanese; return the foundation name that loads it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, NllbTokenizerFast

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    raw.train_from_iterator(list(TINY_BILINGUAL_CORPUS) * 20, trainer)
    spec = json.loads(raw.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tokenizer = NllbTokenizerFast(
        vocab=spec["vocab"], merges=merges, additional_special_tokens=["eng_Latn", "jpn_Jpan"], src_lang="eng_Latn"
    )
    tokenizer.save_pretrained(folder)
    tower = M2M100Config(
        vocab_size=len(tokenizer),
        d_model=64,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    tower.save_pretrained(folder)
    return _save_tiny_arch(folder, "isacir-tiny-nllb", _hf_text_cfg(folder, "cls_pooler"), seed, hf_tower=True)


def cache_hub_repo(hub: str | os.PathLike, repo: str, files: dict[str, Path], revision: str = "0" * 40) -> None:
    """Put ``files`` (name in the repository -> a local file) into a Hugging Face hub cache as the
    hub library lays it out (content in ``blobs/``, ``snapshots/REV/NAME`` linking there,
    ``refs/main`` naming REV), so a tiny model loads as a hub model would, with no download."""
    root = Path(hub) / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    for name, src in files.items():
        data = Path(src).read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        link = root / "snapshots" / revision / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(root / "blobs" / blob, link.parent))
