"""Loaders for the official CIR benchmarks (users bring the data) in one common shape.

Each loader returns a :class:`CIRBenchmark`: named gallery images, and queries holding the
reference name, one or more modifier texts (their normalised features are averaged), the target
names (empty on test splits) and, for CIRR, the ``img_set`` subset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IsacirError


class BenchmarkDataError(IsacirError, ValueError):
    pass


@dataclass
class CIRQuery:
    qid: str
    reference: str
    modifiers: list[str]
    #: Every correct gallery image (CIRCO and Shapes-CIR have several; CIRR and FashionIQ one).
    targets: list[str] = field(default_factory=list)
    subset: list[str] | None = None
    #: CIRCO's ``target_img_id``: the one image its official Recall@K counts (None elsewhere).
    target: str | None = None


@dataclass
class CIRBenchmark:
    name: str
    split: str
    queries: list[CIRQuery]
    gallery: dict[str, Path]
    exclude_reference: bool
    labelled: bool


def _read_json(path: Path):
    if not path.is_file():
        raise BenchmarkDataError(f"missing benchmark file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkDataError(f"{path} is not valid JSON: {exc}") from None


def _first_existing(candidates: Sequence[Path], what: str) -> Path:
    for c in candidates:
        if c.exists():
            return c
    raise BenchmarkDataError(f"cannot find {what}; looked at: {', '.join(map(str, candidates))}")


def _check_images(gallery: dict[str, Path], name: str, sample: int = 20) -> None:
    missing = [str(p) for p in list(gallery.values())[:sample] if not p.is_file()]
    if missing:
        raise BenchmarkDataError(f"{name}: gallery images not found, e.g. {missing[:3]}")


# ----- CIRR -----------------------------------------------------------------------------------------
def load_cirr(root: str | Path, split: str = "val") -> CIRBenchmark:
    """CIRR rc2: ``captions/cap.rc2.{split}.json`` + ``image_splits/split.rc2.{split}.json``.

    ``root`` may be the folder holding ``captions/`` and ``image_splits/`` or its parent (``cirr/``
    inside). Image paths in the split file are relative to the raw-image folder: ``root``,
    ``root/img_raw`` or the parent are tried.
    """
    root = Path(root)
    split = {"test": "test1", "dev": "val"}.get(split, split)
    if split not in ("val", "test1"):
        raise BenchmarkDataError(f"CIRR split must be val or test1, got {split!r}")
    ann = _first_existing([root / "captions", root / "cirr" / "captions"], "CIRR captions/").parent
    caps = _read_json(ann / "captions" / f"cap.rc2.{split}.json")
    names = _read_json(ann / "image_splits" / f"split.rc2.{split}.json")
    probe = next(iter(names.values()))
    bases = [root, root / "img_raw", ann, root.parent]
    found = [b for b in bases if (b / probe).is_file()]
    if not found:
        raise BenchmarkDataError(f"cannot find CIRR image {probe!r} under any of: {', '.join(map(str, bases))}")
    base_dir = found[0]
    gallery = {name: (base_dir / rel).resolve() for name, rel in names.items()}
    _check_images(gallery, "CIRR")
    queries = []
    for c in caps:
        queries.append(
            CIRQuery(
                qid=str(c["pairid"]),
                reference=c["reference"],
                modifiers=[c["caption"]],
                targets=[c["target_hard"]] if "target_hard" in c else [],
                subset=list(c["img_set"]["members"]),
            )
        )
    return CIRBenchmark("cirr", split, queries, gallery, exclude_reference=True, labelled=split == "val")


# ----- FashionIQ ------------------------------------------------------------------------------------
FIQ_CATEGORIES = ("dress", "shirt", "toptee")


def load_fashioniq(root: str | Path, category: str, split: str = "val") -> CIRBenchmark:
    """One FashionIQ category: captions joined both ways (``c1 and c2``, ``c2 and c1``)."""
    root = Path(root)
    if category not in FIQ_CATEGORIES:
        raise BenchmarkDataError(f"FashionIQ category must be one of {FIQ_CATEGORIES}, got {category!r}")
    if split != "val":
        raise BenchmarkDataError("FashionIQ is evaluated on its val split (test labels are not public)")
    caps = _read_json(root / "captions" / f"cap.{category}.{split}.json")
    ids = _read_json(root / "image_splits" / f"split.{category}.{split}.json")
    gallery = {}
    for i in ids:
        jpg, png = root / "images" / f"{i}.jpg", root / "images" / f"{i}.png"
        gallery[i] = jpg if jpg.is_file() or not png.is_file() else png
    _check_images(gallery, f"FashionIQ {category}")
    queries = []
    for n, c in enumerate(caps):
        c1, c2 = (list(c["captions"]) + ["", ""])[:2]
        mods = [f"{c1.strip('.? ')} and {c2.strip('.? ')}", f"{c2.strip('.? ')} and {c1.strip('.? ')}"]
        queries.append(CIRQuery(qid=f"{category}-{n}", reference=c["candidate"], modifiers=mods, targets=[c["target"]]))
    return CIRBenchmark(f"fashioniq-{category}", split, queries, gallery, exclude_reference=False, labelled=True)


# ----- CIRCO ----------------------------------------------------------------------------------------
def load_circo(root: str | Path, split: str = "val") -> CIRBenchmark:
    """CIRCO: ``annotations/{split}.json`` over the COCO 2017 unlabeled gallery.

    The COCO index ``image_info_unlabeled2017.json`` and the ``unlabeled2017/`` folder are looked
    for in ``root``, ``root/COCO2017_unlabeled`` and their ``annotations/`` subfolders.
    """
    root = Path(root)
    if split not in ("val", "test"):
        raise BenchmarkDataError(f"CIRCO split must be val or test, got {split!r}")
    anns = _read_json(root / "annotations" / f"{split}.json")
    coco_root = _first_existing([root / "COCO2017_unlabeled", root], "the COCO 2017 unlabeled folder")
    info_path = _first_existing(
        [coco_root / "annotations" / "image_info_unlabeled2017.json", coco_root / "image_info_unlabeled2017.json"],
        "image_info_unlabeled2017.json",
    )
    images_dir = _first_existing([coco_root / "unlabeled2017", root / "unlabeled2017"], "unlabeled2017/")
    info = _read_json(info_path)
    gallery = {str(im["id"]): images_dir / im["file_name"] for im in info["images"]}
    _check_images(gallery, "CIRCO")
    queries = []
    for a in anns:
        ref = str(a["reference_img_id"])
        if ref not in gallery:
            raise BenchmarkDataError(f"CIRCO query {a['id']}: reference image {ref} is not in the gallery index")
        targets = [str(t) for t in a.get("gt_img_ids", [])]
        target = str(a["target_img_id"]) if "target_img_id" in a else None
        queries.append(
            CIRQuery(qid=str(a["id"]), reference=ref, modifiers=[a["relative_caption"]], targets=targets, target=target)
        )
    # CIRCO's test split has no ground truth; a CIRCO-format set that carries it (Shapes-CIR) is scored
    labelled = bool(queries) and all(q.targets for q in queries)
    return CIRBenchmark("circo", split, queries, gallery, exclude_reference=True, labelled=labelled)


def load_shapes(root: str | Path) -> CIRBenchmark:
    """A Shapes-CIR world: CIRCO's layout, with ground truth on its test split.

    Named ``shapes`` so that it is scored by the Shapes-CIR protocol (Recall@K over any ground
    truth), not by CIRCO's (Recall@K over ``target_img_id`` alone).
    """
    from dataclasses import replace

    return replace(load_circo(root, "test"), name="shapes")
