"""A pilot on Shapes-CIR: its own references, gallery and queries, and a simulated operator.

The pilot split stands for a customer's deployment. Its references, targets, hard negatives and
distractors are rendered from a random stream of their own, into a gallery of their own, so
nothing of the test queries or the test gallery is reused. Its modifiers come from the same
held-out phrasing family as the test queries (operators speak their own words, not the
foundation's captions), minus one phrasing per edit type, so that the test queries in those
phrasings measure what an adapter learned beyond memorising the pilot's phrases.

The simulated operators (:mod:`.operators`) work like people at the web UI: realistic ones by
default, the ground-truth oracle on request. Photos go through the ONNX edge runner and only the
payload travels, over HTTP, as on a device.
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

from . import japanese
from .operators import Operator, OperatorConfig, decide, seconds_to_verdict
from .phrasing import LANGUAGES, pilot_phrasings
from .world import ShapesConfig, draw_edit, modifier_text, random_scene, render

#: The test phrasing each edit type leaves out of the pilot (the "unseen phrasings"), and the
#: rest of the test family, which the pilot's operators use.
LEFT_OUT, PILOT_PHRASINGS = pilot_phrasings("en")
#: The same for Japanese operators (a bilingual world's pilot).
LEFT_OUT_JA, PILOT_PHRASINGS_JA = pilot_phrasings("ja")
#: Bumped whenever the split's output changes for the same settings.
PILOT_FORMAT = 2


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
    # a bilingual world's pilot words each query in Japanese too, from a stream of its own, so
    # its scenes and English texts are those of the English-only world's pilot
    ja_rng = random.Random(f"pilot-japanese-{world.seed}") if world.japanese_fraction > 0 else None
    tmp = out.with_name(out.name + ".partial")
    (tmp / "references").mkdir(parents=True, exist_ok=True)
    (tmp / "gallery").mkdir(parents=True, exist_ok=True)
    scenes, queries, references = [], [], []
    while len(queries) < config.queries:
        ref = random_scene(rng, world.max_objects)
        drawn = draw_edit(rng, ref, "test", PILOT_PHRASINGS)
        if drawn is None:
            continue
        change, template, target, negs = drawn
        kind = change.kind
        n = len(queries)
        render(ref, world.image_size).save(tmp / "references" / f"{n:06d}.png")
        references.append(ref)
        query = {
            "id": n,
            "reference": f"references/{n:06d}.png",
            "text": modifier_text(change, template),
            "kind": kind,
            "phrasing": template,
        }
        if ja_rng is not None:
            template_ja = ja_rng.choice(PILOT_PHRASINGS_JA[kind])
            query |= {"text_ja": japanese.modifier_ja(change, template_ja), "phrasing_ja": template_ja}
        queries.append(query)
        scenes.append((n, target))
        scenes.extend((("near", n), s) for s in negs)
    scenes.extend((None, random_scene(rng, world.max_objects)) for _ in range(config.distractors))
    by_key: dict[tuple, list[str]] = {}
    target_of: dict[int, tuple] = {}
    near_of: dict[int, list[tuple]] = {}
    for gid, (owner, scene) in enumerate(scenes):
        name = f"gallery/{gid:06d}.png"
        render(scene, world.image_size).save(tmp / name)
        by_key.setdefault(scene.key(), []).append(name)
        if isinstance(owner, int):
            target_of[owner] = scene.key()
        elif owner is not None:
            near_of.setdefault(owner[1], []).append(scene.key())
    for q in queries:
        q["targets"] = by_key[target_of[q["id"]]]
        q["target_objects"] = [list(o) for o in target_of[q["id"]]]
        # the edit's hard negatives (one attribute off, or the edit not applied): the near misses
        # a hurried operator may confirm; never a picture of the target's objects
        keys = {key for key in near_of.get(q["id"], []) if key != target_of[q["id"]]}
        q["near"] = sorted(name for key in keys for name in by_key[key])
    # every object set the pilot showed (references and gallery): what an evaluation stream may avoid
    objects = sorted({s.key() for _, s in scenes} | {s.key() for s in references})
    doc = {
        "key": key,
        "world": asdict(world),
        "config": asdict(config),
        "left_out": LEFT_OUT,
        **({"left_out_ja": LEFT_OUT_JA} if ja_rng is not None else {}),
        "queries": queries,
        "object_sets": [[list(o) for o in key] for key in objects],
    }
    atomic_write_text(tmp / "pilot.json", json.dumps(doc))
    replace_dir(tmp, out)
    return out


def pilot_object_sets(doc: dict[str, Any]) -> set[tuple]:
    """The object sets (:meth:`~.world.Scene.key`) of every image a pilot showed, as hashable keys."""
    return {tuple(tuple(o) for o in key) for key in doc["object_sets"]}


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
    operators: OperatorConfig | None = None,
    language: str = "en",
) -> dict[str, Any]:
    """Run the pilot's queries through the device path and the service; the operators judge them.

    ``gallery_ids`` maps the split's gallery file names (``gallery/000123.png``) to the served
    gallery's ids. ``start`` and ``limit`` pick a slice of the pilot's queries. ``operators`` says
    who judges (:class:`~.operators.OperatorConfig`: realistic people by default), and ``language``
    what they write (Japanese needs a bilingual world's pilot, whose queries carry ``text_ja``;
    the service must then compose in a Japanese template). Returns counts,
    the pilot's own hit rates as the operators saw them, and what each query's operator typed
    (``texts``: the first search's modifier per pilot query id).
    """
    from PIL import Image

    operators = operators or OperatorConfig()
    operators.check()
    oracle = operators.kind == "oracle"
    rng = random.Random(f"operators-{operators.seed}")
    clock = random.Random(f"operator-time-{operators.seed}")  # a stream of its own: timing moves no decision
    if language not in LANGUAGES:
        raise IsacirError(f"operators write {' or '.join(LANGUAGES)}, not {language!r}")
    phrasings = PILOT_PHRASINGS if language == "en" else PILOT_PHRASINGS_JA
    crew = [Operator.draw(i, phrasings, operators.habit, rng, language) for i in range(operators.count)]
    folder = Path(pilot_dir)
    queries = load_pilot(folder)["queries"][start:]
    queries = queries[:limit] if limit is not None else queries
    field = "text" if language == "en" else f"text_{language}"
    if queries and field not in queries[0]:
        raise IsacirError(f"pilot {folder} has no modifiers in {language!r}: its world is not bilingual")
    counts = dict.fromkeys(
        ("queries", "judged", "unjudged", "confirmed", "corrected", "rejected_only", "wrong_confirmed",
         "wrong_rejected", "searched_again", "found_again", "hit@1", "hit@k", "payload_bytes"),
        0,
    )  # fmt: skip
    operator_s = 0.0
    texts: dict[int, str] = {}

    def search(payload: bytes, text: str) -> tuple[str, list[int]]:
        answer = client.post("/v1/search/tokens", {"payload": base64.b64encode(payload).decode(), "text": text, "k": k})
        return answer["query_id"], [r["id"] for r in answer["results"]]

    def verdict(query_id: str, **body: Any) -> None:
        client.post("/v1/feedback", {"query_id": query_id, **{k: v for k, v in body.items() if v is not None}})

    t0 = time.perf_counter()
    for q in progress_bar(queries, desc="pilot", unit="query", disable=not progress):
        targets = {gallery_ids[name] for name in q["targets"] if name in gallery_ids}
        if not targets:
            raise IsacirError(f"pilot query {q['id']}: none of its targets is in the served gallery")
        near = {gallery_ids[name] for name in q.get("near", []) if name in gallery_ids}
        with Image.open(folder / q["reference"]) as im:
            payload = edge.payload(im.convert("RGB"), dtype=payload_dtype)
        counts["payload_bytes"] += len(payload)
        person = None if oracle else crew[rng.randrange(len(crew))]
        text = q[field] if person is None else person.word(q["kind"], q[field], rng)
        texts[q["id"]] = text
        query_id, shown = search(payload, text)
        counts["queries"] += 1
        counts["hit@1"] += bool(shown) and shown[0] in targets
        counts["hit@k"] += any(i in targets for i in shown)
        if not oracle and rng.random() < operators.unjudged:
            counts["unjudged"] += 1
            continue
        counts["judged"] += 1
        first = decide(shown, targets, near, operators, rng)
        # the oracle takes no time: it is a yardstick, not a person
        spent = None if oracle else seconds_to_verdict(shown, first, operators, clock)
        counts["wrong_rejected"] += first.overlooked and any(i in targets for i in first.reject)
        if not first.missed:
            verdict(query_id, verdict="confirmed", candidate_id=first.confirm, verdict_s=spent)
            operator_s += spent or 0.0
            counts["confirmed"] += 1
            counts["wrong_confirmed"] += first.wrong
            continue
        correct: int | None = min(targets) if oracle else None
        if person is not None and operators.search_again:
            # the same photo in other words: a second logged query, judged as the first
            counts["searched_again"] += 1
            again_id, again_shown = search(payload, person.word_again(q["kind"], text, rng))
            second = decide(again_shown, targets, near, operators, rng)
            spent_again = seconds_to_verdict(again_shown, second, operators, clock)
            if second.missed:
                for wrong in second.reject:
                    verdict(again_id, verdict="rejected", candidate_id=wrong, verdict_s=spent_again)
            else:
                verdict(again_id, verdict="confirmed", candidate_id=second.confirm, verdict_s=spent_again)
                counts["found_again"] += 1
                counts["wrong_confirmed"] += second.wrong
                correct = second.confirm
        # the first list's verdicts land when the operator comes back to it, after the second search
        total = spent
        if spent is not None and person is not None and operators.search_again:
            total = spent + operators.seconds_retype + spent_again
        for wrong in first.reject:
            verdict(query_id, verdict="rejected", candidate_id=wrong, verdict_s=total)
        operator_s += total or 0.0
        if correct is None:
            counts["rejected_only"] += 1
        else:
            verdict(query_id, verdict="corrected", correct_id=correct, verdict_s=total)
            counts["corrected"] += 1
    n = max(1, counts["queries"])
    summary = {
        "operators": operators.kind,
        **counts,
        "hit@1_rate": round(counts["hit@1"] / n, 4),
        f"hit@{k}_rate": round(counts["hit@k"] / n, 4),
        "judged_rate": round(counts["judged"] / n, 4),
        # operator seconds per judged pilot query (a search again included); None for the oracle
        "operator_s_per_judged": None if oracle else round(operator_s / max(1, counts["judged"]), 2),
        "took_s": round(time.perf_counter() - t0, 1),
        "texts": texts,
    }
    log(
        f"pilot ({operators.kind} operators): {counts['queries']} queries, target top-1 in "
        f"{summary['hit@1_rate']:.1%}, "
        f"in top {k} in {summary[f'hit@{k}_rate']:.1%}; {counts['judged']} judged: {counts['confirmed']} confirmed, "
        f"{counts['corrected']} corrected, {counts['rejected_only']} only rejected"
    )
    return summary
