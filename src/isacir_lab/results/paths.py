"""Where the docs and their run records are: the checkout the renderer works on.

The docs are not installed with the package, so the renderer works on the checkout this module
sits in when installed editable, otherwise on the current directory.
"""

from __future__ import annotations

from pathlib import Path


def _checkout() -> Path:
    here = Path(__file__).resolve().parents[3]
    return here if (here / "docs" / "results").is_dir() else Path.cwd()


ROOT = _checkout()
RESULTS = ROOT / "docs" / "results"
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
