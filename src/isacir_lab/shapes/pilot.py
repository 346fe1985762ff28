"""A pilot on Shapes-CIR: its own references, gallery and queries, and a simulated operator.

The pilot split stands for a customer's deployment. Its references, targets, hard negatives and
distractors are rendered from a random stream of their own, into a gallery of their own, so
nothing of the test queries or the test gallery is reused. Its modifiers come from the same
held-out phrasing family as the test queries (operators speak their own words, not the
foundation's captions), minus one phrasing per edit type, so that the test queries in those
phrasings measure what an adapter learned beyond memorising the pilot's phrases.

The simulated operator works like a person at the web UI: it confirms the target when search
shows it in the top K, and otherwise rejects the top three and names the target (``corrected``).
Photos go through the ONNX edge runner and only the payload travels, over HTTP, as on a device.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from isacir._fs import atomic_write_text, replace_dir
from isacir.errors import IsacirError
from isacir.progress import progress_bar

from .phrasing import parse_modifier
from .world import PHRASES, ShapesConfig, make_edit, random_scene, render

#: The test phrasing each edit type leaves out of the pilot (the "unseen phrasings").
LEFT_OUT = {kind: p["test"][-1] for kind, p in PHRASES.items()}
PILOT_PHRASINGS = {kind: [t for t in p["test"] if t != LEFT_OUT[kind]] for kind, p in PHRASES.items()}
#: Bumped whenever the split's output changes for the same settings.
PILOT_FORMAT = 1


@dataclass(frozen=True)
class PilotConfig:
    queries: int = 1000
    distractors: int = 1500

    def key(self, world: ShapesConfig) -> str:
        raw = json.dumps([PILOT_FORMAT, world.key(), asdict(self)], sort_keys=True).encode()
        return hashlib.blake2b(raw, digest_size=6).hexdigest()


def generate_pilot(out: str | Path, world: ShapesConfig, config: PilotConfig | None = None) -> Path:
    """Write the pilot split (``pilot.json``, ``references/``, ``gallery/``); cached by its key."""
    config = config or PilotConfig()
    out = Path(out)
    key = config.key(world)
    if (out / "pilot.json").is_file() and json.loads((out / "pilot.json").read_text()).get("key") == key:
        return out
    rng = random.Random(f"pilot-{world.seed}")  # a stream of its own: no test scene is re-drawn
    tmp = out.with_name(out.name + ".partial")
    (tmp / "references").mkdir(parents=True, exist_ok=True)
    (tmp / "gallery").mkdir(parents=True, exist_ok=True)
    scenes, queries = [], []
    while len(queries) < config.queries:
        ref = random_scene(rng, world.max_objects)
        edit = make_edit(rng, ref, "test", PILOT_PHRASINGS)
        if edit is None:
            continue
        kind, text, target, negs = edit
        n = len(queries)
        render(ref, world.image_size).save(tmp / "references" / f"{n:06d}.png")
        phrasing = parse_modifier(kind, text)[1]
        queries.append(
            {"id": n, "reference": f"references/{n:06d}.png", "text": text, "kind": kind, "phrasing": phrasing}
        )
        scenes.append((n, target))
        scenes.extend((None, s) for s in negs)
    scenes.extend((None, random_scene(rng, world.max_objects)) for _ in range(config.distractors))
    by_key: dict[tuple, list[str]] = {}
    target_of: dict[int, tuple] = {}
    for gid, (owner, scene) in enumerate(scenes):
        name = f"gallery/{gid:06d}.png"
        render(scene, world.image_size).save(tmp / name)
        by_key.setdefault(scene.key(), []).append(name)
        if owner is not None:
            target_of[owner] = scene.key()
    for q in queries:
        q["targets"] = by_key[target_of[q["id"]]]
    doc = {"key": key, "world": asdict(world), "config": asdict(config), "left_out": LEFT_OUT, "queries": queries}
    atomic_write_text(tmp / "pilot.json", json.dumps(doc))
    replace_dir(tmp, out)
    return out


def load_pilot(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "pilot.json"
    if not path.is_file():
        raise IsacirError(f"{folder} is not a pilot split (no pilot.json); isacir-lab pilot prepare writes one")
    return json.loads(path.read_text())


class ServiceClient:
    """The two calls a device and an operator make, over plain HTTP (the standard library's)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise IsacirError(f"POST {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None


def simulate_pilot(
    pilot_dir: str | Path,
    client: ServiceClient,
    edge: Any,
    gallery_ids: dict[str, int],
    k: int = 10,
    limit: int | None = None,
    payload_dtype: str = "int8",
    start: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the pilot's queries through the device path and the service; the operator answers each.

    ``gallery_ids`` maps the split's gallery file names (``gallery/000123.png``) to the served
    gallery's ids. ``start`` and ``limit`` pick a slice of the pilot's queries. Returns counts and
    the pilot's own hit rates as the operator saw them.
    """
    from PIL import Image

    folder = Path(pilot_dir)
    queries = load_pilot(folder)["queries"][start:]
    queries = queries[:limit] if limit is not None else queries
    stats = {"queries": 0, "confirmed": 0, "corrected": 0, "hit@1": 0, "payload_bytes": 0}
    t0 = time.perf_counter()
    for q in progress_bar(queries, desc="pilot", unit="query", disable=not progress):
        targets = {gallery_ids[name] for name in q["targets"] if name in gallery_ids}
        if not targets:
            raise IsacirError(f"pilot query {q['id']}: none of its targets is in the served gallery")
        with Image.open(folder / q["reference"]) as im:
            payload = edge.payload(im.convert("RGB"), dtype=payload_dtype)
        stats["payload_bytes"] += len(payload)
        answer = client.post(
            "/v1/search/tokens", {"payload": base64.b64encode(payload).decode(), "text": q["text"], "k": k}
        )
        shown = [r["id"] for r in answer["results"]]
        stats["queries"] += 1
        found = [i for i in shown if i in targets]
        if shown and shown[0] in targets:
            stats["hit@1"] += 1
        if found:
            client.post(
                "/v1/feedback", {"query_id": answer["query_id"], "verdict": "confirmed", "candidate_id": found[0]}
            )
            stats["confirmed"] += 1
            continue
        for wrong in shown[:3]:
            client.post("/v1/feedback", {"query_id": answer["query_id"], "verdict": "rejected", "candidate_id": wrong})
        client.post(
            "/v1/feedback", {"query_id": answer["query_id"], "verdict": "corrected", "correct_id": min(targets)}
        )
        stats["corrected"] += 1
    n = max(1, stats["queries"])
    summary = {
        **stats,
        "hit@1_rate": round(stats["hit@1"] / n, 4),
        f"hit@{k}_rate": round(stats["confirmed"] / n, 4),
        "took_s": round(time.perf_counter() - t0, 1),
    }
    log(
        f"pilot: {stats['queries']} queries, target top-1 in {summary['hit@1_rate']:.1%}, in top {k} in "
        f"{summary[f'hit@{k}_rate']:.1%}; {stats['corrected']} corrections"
    )
    return summary
