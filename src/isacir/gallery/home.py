"""A gallery's home: which generation of it serves, read from ``generations.json``.

A leaf below :class:`~isacir.gallery.Gallery` (which opens one folder, and asks this which folder
serves) and below :mod:`.generations` (which builds and switches generations, and so opens
galleries): neither has to import the other to route a request.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import IsacirError
from ..ledger import Ledger

GENERATIONS_FILE = "generations.json"
ROOT_GENERATION = "main"
GENERATION_STATES = ("building", "ready", "serving", "retired")


class GenerationError(IsacirError):
    pass


class GenerationLedger:
    """What a gallery folder (``home``) serves: its generations and their states, read-only.

    :class:`~isacir.gallery.generations.Generations` adds the writes (create, build, promote,
    retire); :meth:`isacir.gallery.Gallery.open` reads this to open the serving generation.
    """

    def __init__(self, home: str | Path):
        self.home = Path(home)

    # ----- reading --------------------------------------------------------------------------------
    def _implicit(self) -> dict:
        """A gallery that never had a second generation: its folder is the only, serving one."""
        meta = self.home / "gallery.json"
        if not meta.is_file():
            raise GenerationError(f"{self.home} is not a gallery (no gallery.json)")
        info = json.loads(meta.read_text())
        return {
            "format": 1,
            "serving": ROOT_GENERATION,
            "generations": {
                ROOT_GENERATION: {
                    "name": ROOT_GENERATION,
                    "path": ".",
                    "foundation_id": info["foundation_id"],
                    "foundation_fingerprint": info["foundation_fingerprint"],
                    "state": "serving",
                    "created": info.get("created", 0.0),
                }
            },
            "history": [],
        }

    @property
    def ledger(self) -> Ledger:
        """``generations.json`` under ``.generations.lock`` (see :mod:`isacir.ledger`)."""
        return Ledger(
            self.home / GENERATIONS_FILE, self.home / ".generations.lock", missing=self._implicit, error=GenerationError
        )

    def _read(self) -> dict:
        return self.ledger.read()

    def all(self) -> list[dict]:
        data = self._read()
        return [{**g, "serving": g["name"] == data["serving"]} for g in data["generations"].values()]

    def get(self, name: str) -> dict:
        gens = self._read()["generations"]
        if name not in gens:
            raise GenerationError(f"no generation {name!r} in {self.home} (generations: {', '.join(gens)})")
        return dict(gens[name])

    def serving(self) -> dict:
        data = self._read()
        return dict(data["generations"][data["serving"]])

    def live(self) -> list[dict]:
        """The generations a service answers from: the serving one and every ready one."""
        return [g for g in self.all() if g["state"] in ("serving", "ready")]

    def folder(self, name: str) -> Path:
        return (self.home / self.get(name)["path"]).resolve()

    def stamp(self) -> tuple | None:
        return self.ledger.stamp()
