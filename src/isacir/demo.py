"""``make demo``: the end-to-end path that exists today, on tiny local models.

It grows with the project: training, indexing, search and serving join as they land. Each step
prints what it did and what it measured, never canned output.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

console = Console()

PENDING = [
    ("train", "GCD + LAR training from unlabeled images"),
    ("index / search", "gallery indexing, vector stores, composed search with re-ranking"),
    ("serve", "HTTP API, operator web UI, feedback store"),
    ("eval", "CIRR / FashionIQ / CIRCO protocols and the Shapes-CIR benchmark"),
]


def run_demo(workdir: Path, serve: bool = True) -> None:
    from .bench.sample_images import center_square, jpeg_size, natural_photo
    from .foundation import create_foundation
    from .query import QueryEncoder
    from .testing import save_tiny_openclip

    workdir = Path(workdir)
    fdir = workdir / "tiny-openclip"
    if not (fdir / "open_clip_config.json").is_file():
        console.print(f"[bold]1.[/] writing a tiny random open_clip checkpoint to {fdir}")
        name = save_tiny_openclip(fdir)
    else:
        console.print(f"[bold]1.[/] reusing the tiny open_clip checkpoint in {fdir}")
        from .testing import TINY_OPENCLIP_ARCH

        name = f"openclip:{TINY_OPENCLIP_ARCH}@{fdir}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(name)
    info = fnd.describe()
    console.print(f"   loaded [cyan]{name}[/] through the ordinary loader")
    console.print(
        f"   fingerprint {info['fingerprint']}, joint dim {info['embed_dim']}, word dim {info['word_dim']}, "
        f"context {info['context_length']}, {info['parameters']:,} parameters"
    )

    console.print("[bold]2.[/] splicing check: real word embeddings in the placeholder vs plain text")
    with torch.no_grad():
        for word, mod in (("dog", ""), ("red car", "is blue")):
            words = fnd.embed_words(word).unsqueeze(0)
            spliced = fnd.encode_composed(words, [mod])
            plain = fnd.encode_text([fnd_template_render(word, mod)])
            console.print(f"   {fnd_template_render(word, mod)!r}: max |diff| = {(spliced - plain).abs().max().item():.2e}")

    console.print("[bold]3.[/] query side: untrained MobileNetV3-Small + 8-token learner on a real photo")
    qe = QueryEncoder.create(fnd, backbone="mobilenetv3_small_050", num_tokens=8, image_size=128).eval()
    photo, source = natural_photo("astronaut")
    with torch.no_grad():
        tokens = qe.encode_images([photo])
        query = fnd.encode_composed(tokens, ["is wearing a red suit"])
    payload = tokens.numel() * 2
    jpeg = jpeg_size(center_square(photo, 224))
    table = Table("what", "value")
    table.add_row("photo", source)
    table.add_row("pseudo tokens", f"{tuple(tokens.shape)} in the word-embedding space (D={fnd.word_dim})")
    table.add_row("composed query", f"{tuple(query.shape)}, |q| = {query.norm().item():.3f}")
    table.add_row("bytes on the wire (fp16 tokens)", f"{payload:,}")
    table.add_row("224 px JPEG q90 of the same photo", f"{jpeg:,}")
    console.print(table)

    console.print("[bold]4.[/] stages not built yet (see the open issues):")
    for stage, what in PENDING:
        console.print(f"   - {stage}: {what}")
    if serve:
        console.print("   serving is not available yet; nothing to serve.")


def fnd_template_render(sentence: str, modifier: str) -> str:
    from .compose import DEFAULT_TEMPLATE, PromptTemplate

    return PromptTemplate.parse(DEFAULT_TEMPLATE).render(sentence, modifier)
