"""``make demo``: the end-to-end path that exists today, on tiny local models.

Every step runs the real code (loaders, trainer, gallery, retriever, edge export) and prints what
it measured. The foundation is a tiny *random* CLIP, so rankings show the plumbing, not quality;
quality is measured on the Shapes-CIR benchmark once it lands. Steps are cached in ``workdir``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

console = Console()

PENDING = [
    ("serve", "HTTP API, operator web UI, feedback store"),
    ("shapes", "the Shapes-CIR world, its trained tiny foundation, and the side-by-side quality table"),
]
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def _make_images(folder: Path, n: int = 48, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(n):
        img = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 60, 3)))
        d = ImageDraw.Draw(img)
        colour = names[i % len(names)]
        x, y = (int(v) for v in rng.integers(4, 28, 2))
        box = (x, y, x + 30, y + 30)
        (d.ellipse if (i // len(names)) % 2 else d.rectangle)(box, fill=COLOURS[colour])
        img.save(folder / f"{i:03d}-{colour}-{'circle' if (i // len(names)) % 2 else 'square'}.png")


def run_demo(workdir: Path, serve: bool = True) -> None:
    from .bench.sample_images import center_square, jpeg_size, natural_photo
    from .compose import DEFAULT_TEMPLATE, PromptTemplate
    from .edge import EdgeEncoder
    from .export import export_edge
    from .foundation import create_foundation
    from .gallery import Gallery
    from .query import QueryEncoder
    from .search import Retriever
    from .testing import TINY_OPENCLIP_ARCH, save_tiny_openclip
    from .training import TrainConfig, train

    workdir = Path(workdir)
    fdir = workdir / "tiny-openclip"
    if (fdir / "open_clip_config.json").is_file():
        name = f"openclip:{TINY_OPENCLIP_ARCH}@{fdir}"
        console.print(f"[bold]1. foundation[/]: reusing {fdir}")
    else:
        name = save_tiny_openclip(fdir)
        console.print(f"[bold]1. foundation[/]: wrote a tiny random open_clip checkpoint to {fdir}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fnd = create_foundation(name)
    info = fnd.describe()
    console.print(f"   {name}: fingerprint {info['fingerprint']}, word dim {info['word_dim']}, {info['parameters']:,} params")

    console.print("[bold]2. composition[/]: real word embeddings spliced into the placeholder vs plain text")
    tpl = PromptTemplate.parse(DEFAULT_TEMPLATE)
    with torch.no_grad():
        for word, mod in (("dog", ""), ("red car", "is blue")):
            spliced = fnd.encode_composed(fnd.embed_words(word).unsqueeze(0), [mod])
            plain = fnd.encode_text([tpl.render(word, mod)])
            console.print(f"   {tpl.render(word, mod)!r}: max |diff| = {(spliced - plain).abs().max().item():.2e}")

    images = workdir / "images"
    if not images.is_dir():
        _make_images(images)
    run = workdir / "run"
    if (run / "final" / "model.safetensors").is_file():
        console.print(f"[bold]3. training[/]: reusing {run / 'final'}")
    else:
        console.print("[bold]3. training[/]: GCD on the unlabeled demo images (MobileNetV3-Small + 4-token learner)")
        cfg = TrainConfig(backbone="mobilenetv3_small_050", tokens=4, image_size=64, epochs=40, batch_size=16,
                          lr=2e-3, warmup_steps=5, augment="none", progress=True, checkpoint_every=10_000)
        res = train(str(images), fnd, run, cfg, log=lambda m: console.print(f"   {m}", highlight=False))
        console.print(f"   loss {res.history[0]['loss']:.3f} -> {res.history[-1]['loss']:.3f} in {res.seconds:.1f}s")
    qe = QueryEncoder.from_pretrained(run / "final", foundation=fnd)

    console.print("[bold]4. gallery[/]: incremental, crash-safe indexing with the foundation's image encoder")
    gallery = Gallery.open_or_create(workdir / "gallery", fnd)
    report = gallery.index([images], fnd, progress=False, num_workers=0)
    console.print(f"   {report.summary()}", highlight=False)

    console.print("[bold]5. composed search[/] (the random foundation makes rankings arbitrary: plumbing, not quality)")
    retriever = Retriever(gallery, fnd, qe)
    refs = sorted(images.iterdir())[:3]
    for ref, modifier in zip(refs, ["is blue", "is a circle", "is larger"]):
        hits = retriever.search(image=ref, text=modifier, k=5, rerank=10)
        table = Table(title=f"{ref.name} + {modifier!r}", show_header=True)
        table.add_column("#")
        table.add_column("score")
        table.add_column("image")
        for rank, h in enumerate(hits, 1):
            table.add_row(str(rank), f"{h.score:.3f}", Path(h.path).name)
        console.print(table)

    console.print("[bold]6. edge[/]: ONNX export (verified) and the token payload")
    cfg = export_edge(qe, workdir / "edge")
    v = cfg["verification"]
    enc = EdgeEncoder(workdir / "edge")
    photo, source = natural_photo("astronaut")
    jpeg = jpeg_size(center_square(photo, 224))
    sizes = {dt: len(enc.payload(photo, dt)) for dt in ("fp16", "int8", "int4")}
    console.print(f"   ONNX vs PyTorch max |diff| {v['onnx_vs_torch_max_abs_diff']:.1e} (tolerance {v['tolerance']:.1e})")
    console.print(f"   payload bytes {sizes} vs a 224 px JPEG of {source}: {jpeg:,}")

    console.print("[bold]7. not built yet[/] (see the open issues):")
    for stage, what in PENDING:
        console.print(f"   - {stage}: {what}")
    if serve:
        console.print("   serving is not available yet; nothing to serve.")
