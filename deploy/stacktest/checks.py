"""What an install must survive, each step recording its checks: the previous release and the
upgrade, the API through HTTPS, kill -9 during writes, down and up, backup under load and restore."""

from __future__ import annotations

import base64
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .client import answers, call, ok, random_png, search_by_upload, wait_for
from .common import DOCKER, FOUNDATION, WORK, say, sh
from .stack import Stack


def install(stack: Stack) -> None:
    """What an IT team runs once, after unpacking the weights: a gallery indexed into Milvus and a
    version registered and made active."""
    stack.run(
        "index",
        "--gallery",
        "/data/gallery",
        "--foundation",
        FOUNDATION,
        "--store",
        "milvus://milvus:19530",
        "--no-progress",
        "/import/images",
    )
    stack.run(
        "models",
        "add",
        "--gallery",
        "/data/gallery",
        "--version",
        "v1",
        "--query-encoder",
        "/import/qe",
        "--edge",
        "/import/edge",
        "--reason",
        "first install",
    )
    # the first version has no active one to be compared with, so the gate is passed over, with a reason
    stack.run(
        "models",
        "promote",
        "v1",
        "--to",
        "active",
        "--gallery",
        "/data/gallery",
        "--force",
        "--reason",
        "first install: no active version to compare with",
    )


def payload_of(stack: Stack, image: Path) -> str:
    """A device's token payload for ``image`` (``isacir edge-encode``, no torch), base64."""
    out = Path(tempfile.mkdtemp()) / "p.isat"
    sh(
        Path(sys.executable).with_name("isacir"),
        "edge-encode",
        "--edge",
        stack.dir / "import" / "edge",
        "--image",
        image,
        "--dtype",
        "int8",
        "--out",
        out,
    )
    return base64.b64encode(out.read_bytes()).decode()


class Writer:
    """Uploads of new images, each followed by a verdict naming it, in a thread until stopped;
    remembers what the service acknowledged (a 200). The images are made on the fly (``seed``), so
    there is always one more."""

    def __init__(self, stack: Stack, queries: list[str], seed: int) -> None:
        self.stack, self.queries, self.seed = stack, queries, seed
        self.acked_items: dict[int, int] = {}  # upload number -> gallery id
        self.acked_verdicts: set[tuple[str, int]] = set()
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        s, url, i = self.stack.session(), self.stack.url, 0
        while not self.stop.is_set():
            try:
                files = {"images": (f"w{self.seed}-{i}.png", random_png([self.seed, i]))}
                r = call(s, "POST", f"{url}/v1/gallery", files=files, timeout=30)
                added = r.json().get("added") if r.status_code == 200 else None
                if not added or added[0]["id"] is None:
                    self.failed += 1
                    time.sleep(0.2)  # a 502 while the service restarts: the next image, shortly
                    i += 1
                    continue
                item = self.acked_items[i] = added[0]["id"]
                qid = self.queries[i % len(self.queries)]
                v = s.post(
                    f"{url}/v1/feedback", json={"query_id": qid, "verdict": "corrected", "correct_id": item}, timeout=30
                )
                if v.status_code == 200:
                    self.acked_verdicts.add((qid, item))
                else:
                    self.failed += 1
                i += 1
            except Exception:  # the connection dropped mid-request: that write was never acknowledged
                self.failed += 1
                i += 1
                time.sleep(0.2)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)


def missing_writes(stack: Stack, items: Iterable[int], verdicts: set[tuple[str, int]]) -> int:
    """Acknowledged uploads not in the stack's gallery plus acknowledged verdicts not in its log."""
    return len(stack.missing_items(items)) + len(verdicts - stack.corrected_verdicts())


def uploads_of(stack: Stack) -> list[Path]:
    return sorted((stack.dir / "import" / "uploads").glob("*.png"))


def probes_of(stack: Stack) -> list[Path]:
    """The photos whose answers are compared across a restart and a restore."""
    return sorted((stack.dir / "import" / "images").glob("*.png"))[:3] + uploads_of(stack)[:2]


def use_the_previous_release(a: Stack) -> tuple[str, int, int]:
    """A search and a verdict while the previous release serves; returns the verdict and the schema."""
    s = a.session()
    answer = search_by_upload(s, a.url, a.dir / "import" / "images" / "ima001.png")
    item = answer["results"][0]["id"]
    ok(
        s.post(
            f"{a.url}/v1/feedback", json={"query_id": answer["query_id"], "verdict": "confirmed", "candidate_id": item}
        )
    )
    return answer["query_id"], item, int(a.psql("SELECT version FROM isacir_feedback_schema")[0])


def check_the_upgrade(a: Stack, kept: tuple[str, int, int], checks: dict[str, Any]) -> None:
    """After the upgrade: the log's schema is this release's, and the earlier verdict is in it."""
    from isacir.feedback.store import SCHEMA_VERSION

    checks["schema_before_upgrade"] = kept[2]
    checks["previous_release_wrote_schema_4"] = kept[2] == 4
    checks["schema_after_upgrade"] = int(a.psql("SELECT version FROM isacir_feedback_schema")[0])
    checks["upgrade_migrated_schema"] = checks["schema_after_upgrade"] == SCHEMA_VERSION
    rows = a.psql("SELECT query_id || ' ' || candidate_id || ' ' || verdict FROM feedback")
    checks["upgrade_kept_verdict"] = rows == [f"{kept[0]} {kept[1]} confirmed"]
    checks["upgrade_serves_version"] = ok(call(a.session(), "GET", f"{a.url}/v1/info"))["model_version"] == "v1"


def use_the_api(a: Stack, checks: dict[str, Any]) -> list[str]:
    """Through HTTPS at the proxy: add images, search by upload and by token payload, send verdicts,
    read the pilot summary, and find the searches counted in Prometheus. Returns query ids."""
    import requests

    s, imp = a.session(), a.dir / "import"
    photo = imp / "images" / "ima000.png"
    files = [("images", (p.name, p.read_bytes(), "image/png")) for p in uploads_of(a)[:4]]
    checks["added_via_api"] = len(ok(s.post(f"{a.url}/v1/gallery", files=files))["added"])
    first = search_by_upload(s, a.url, photo)
    body = {"payload": payload_of(a, photo), "text": "in red", "k": 5}
    tokens = ok(s.post(f"{a.url}/v1/search/tokens", json=body))
    checks["search_upload_results"] = len(first["results"])
    checks["search_tokens_results"] = len(tokens["results"])
    checks["search_tokens_version"] = tokens["model_version"]
    for answer, verdict in [(first, "confirmed"), (tokens, "rejected")]:
        body = {"query_id": answer["query_id"], "verdict": verdict, "candidate_id": answer["results"][0]["id"]}
        ok(s.post(f"{a.url}/v1/feedback", json=body))
    checks["pilot_judged"] = ok(s.get(f"{a.url}/v1/pilot/summary"))["overall"]["judged"]
    checks["pilot_counts_every_verdict"] = checks["pilot_judged"] == 3  # with the previous release's one

    def searches_counted() -> bool:
        query = {"query": "sum(isacir_search_total)"}
        r = requests.get(f"http://127.0.0.1:{a.prom_port}/api/v1/query", params=query, timeout=10, proxies={})
        result = r.json()["data"]["result"]
        checks["prometheus_isacir_search_total"] = float(result[0]["value"][1]) if result else 0.0
        return checks["prometheus_isacir_search_total"] >= 2

    wait_for("Prometheus to scrape isacir_search_total", searches_counted)
    return [search_by_upload(s, a.url, p)["query_id"] for p in sorted((imp / "images").glob("*.png"))[:8]]


def kill_during_writes(a: Stack, queries: list[str], checks: dict[str, Any]) -> Writer:
    """``kill -9`` of the service while uploads and verdicts arrive; it is started again, and the
    writes go on until ten more are acknowledged."""
    with Writer(a, queries, seed=1) as w:
        wait_for("the first acknowledged uploads", lambda: len(w.acked_items) >= 5)
        sh(DOCKER, "kill", "-s", "KILL", a.container("isacir"))
        before_kill = len(w.acked_items)
        say(f"killed the service after {before_kill} acknowledged uploads")
        a.compose("up", "-d", "--no-build", "isacir")
        a.wait_healthy(("isacir", "proxy"))
        wait_for("writes after the restart", lambda: len(w.acked_items) >= before_kill + 10, timeout=300)
    checks["acked_uploads_across_kill"] = len(w.acked_items)
    checks["acked_verdicts_across_kill"] = len(w.acked_verdicts)
    checks["requests_refused_while_down"] = w.failed
    checks["kill_landed_mid_stream"] = w.failed > 0
    return w


def down_and_up(a: Stack, checks: dict[str, Any]) -> None:
    """``down`` then ``up``: the volumes keep the gallery, the registry and the log."""
    s = a.session()
    before, count = answers(s, a.url, probes_of(a)), ok(call(s, "GET", f"{a.url}/v1/info"))["gallery_items"]
    a.down()
    a.up()
    checks["same_answers_after_down_up"] = answers(s, a.url, probes_of(a)) == before
    checks["same_gallery_items_after_down_up"] = ok(call(s, "GET", f"{a.url}/v1/info"))["gallery_items"] == count


def backup_and_restore(a: Stack, base: str, queries: list[str], checks: dict[str, Any]) -> tuple[Stack, int]:
    """A backup taken while uploads and verdicts arrive, restored into a second, empty stack with the
    same secrets. Returns that stack and the writes acknowledged before the backup began that it
    lacks (or that the live stack lacks)."""
    db = "postgresql://isacir@postgres:5432/isacir"
    with Writer(a, queries, seed=2) as w:
        wait_for("uploads under load", lambda: len(w.acked_items) >= 2)
        items_before, verdicts_before = dict(w.acked_items), set(w.acked_verdicts)
        a.compose("exec", "-T", "isacir", "isacir-entrypoint", "backup", "--gallery", "/data/gallery",
                  "--feedback-db", db, "--out", "/data/backup.tar")  # fmt: skip
        checks["writes_acked_during_backup"] = len(w.acked_items) - len(items_before)
        checks["backup_under_load"] = checks["writes_acked_during_backup"] > 0
    lost = missing_writes(a, w.acked_items.values(), w.acked_verdicts)
    backup = WORK / "backup" / "backup.tar"
    backup.parent.mkdir(exist_ok=True)
    sh(DOCKER, "cp", f"{a.container('isacir')}:/data/backup.tar", backup)
    backup.chmod(0o644)
    b = Stack("b", base)
    shutil.rmtree(b.dir / "secrets", ignore_errors=True)
    sh("cp", "-a", a.dir / "secrets", b.dir / "secrets")  # the same keys and certificate, group kept
    b.key, b.ca = a.key, str(b.dir / "secrets" / "tls.crt")
    shutil.copytree(a.dir / "import", b.dir / "import", dirs_exist_ok=True)
    b.run("weights", "unpack", "/import/weights.tar")  # weights come from their bundle, not the backup
    b.run("restore", "/backup/backup.tar", "--out", "/data", "--feedback-db", db,
          volumes=(f"{backup.parent}:/backup:ro",))  # fmt: skip
    b.up()
    lost += missing_writes(b, items_before.values(), verdicts_before)
    # uploads acknowledged after the backup's copy are in the live stack only: compare on what both hold
    late = b.missing_items(w.acked_items.values())
    live = [[r for r in q if r[0] not in late] for q in answers(a.session(), a.url, probes_of(a))]
    restored = answers(b.session(), b.url, probes_of(a))
    checks["restored_same_answers"] = all(r[: len(x)] == x for r, x in zip(restored, live, strict=True))
    checks["uploads_after_backup"] = len(late)
    checks["restored_verdicts"] = len(b.corrected_verdicts())
    verify = b.run("gallery", "verify", "--gallery", "/data/gallery", "--json").splitlines()[-1]
    checks["restored_gallery_verified"] = json.loads(verify).get("ok")
    return b, lost
