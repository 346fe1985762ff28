"""Milvus, embedded (Milvus Lite) or a server: a collection per gallery, an alias per serving generation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .base import StoreError, VectorStore

LEGACY_COLLECTION = "isacir_gallery"
#: collection property holding the generation of the gallery's change log that the collection reflects
GENERATION_PROPERTY = "isacir.generation"
#: environment variable holding a Milvus token (``user:password`` or an API key); never stored
MILVUS_TOKEN_ENV = "ISACIR_MILVUS_TOKEN"


def parse_milvus_uri(uri: str, gallery_dir: Path) -> tuple[str, str]:
    """``(target, db_name)`` from what follows ``milvus://``.

    ``./gallery.db`` (Milvus Lite; a relative file lives in the gallery folder), ``host:19530``
    (plain), ``https://host:443`` (TLS), each optionally followed by ``?db=NAME``.
    """
    base, _, query = uri.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    unknown = set(params) - {"db"}
    if unknown:
        raise StoreError(f"unknown Milvus option(s) {sorted(unknown)}; the only one is ?db=NAME")
    db_name = params.get("db", "")
    if base.endswith(".db"):
        # a relative path belongs to the gallery (the spec is stored in gallery.json and must mean
        # the same file whatever the working directory is later)
        return str(Path(base) if os.path.isabs(base) else (gallery_dir / base).resolve()), db_name
    if base.startswith(("http://", "https://", "tcp://")):
        return base, db_name
    return f"http://{base}", db_name


class MilvusStore(VectorStore):
    """Milvus Lite (a local ``.db`` file, the real engine embedded) or a Milvus server.

    Each gallery has its own collection (named in ``gallery.json``), so galleries share a server
    safely. The generation lives in the collection's properties, beside the data it describes.
    Reads use strong consistency: a search sees every write acknowledged before it. Milvus makes
    writes durable itself, so nothing is flushed per change.
    """

    shared = True

    def __init__(
        self, uri: str, dim: int, gallery_dir: Path, collection: str = LEGACY_COLLECTION, token: str | None = None
    ):
        from pymilvus import MilvusClient

        self.dim = dim
        self.uri = uri
        self.collection = collection
        target, db_name = parse_milvus_uri(uri, gallery_dir)
        self.db_name = db_name
        token = token if token is not None else os.environ.get(MILVUS_TOKEN_ENV, "")
        try:
            if db_name and not target.endswith(".db"):
                admin = MilvusClient(target, token=token)
                if db_name not in admin.list_databases():
                    admin.create_database(db_name)  # a gallery's first use creates its database
                admin.close()
            self.client = MilvusClient(target, token=token, db_name=db_name)
        except Exception as exc:
            raise StoreError(f"cannot connect to Milvus at {uri}: {exc}") from None
        self._ensure_collection()
        legacy = gallery_dir / "milvus-generation.json"  # where the generation lived before
        if legacy.is_file() and not str(self._properties().get(GENERATION_PROPERTY, "")).strip():
            self._set_generation(int(json.loads(legacy.read_text())["generation"]))
        self.generation = self.persisted_generation = self.disk_generation()

    def _ensure_collection(self) -> None:
        from pymilvus import DataType

        if not self.client.has_collection(self.collection):
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
            index_params = self.client.prepare_index_params()
            index_params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
            self.client.create_collection(
                self.collection, schema=schema, index_params=index_params, consistency_level="Strong"
            )
        self.client.load_collection(self.collection)  # reopened files come back "released"

    def _properties(self) -> dict:
        return dict(self.client.describe_collection(self.collection).get("properties") or {})

    @property
    def is_server(self) -> bool:
        """A Milvus server (shared by galleries and their generations), not a Lite file."""
        return not self.uri.partition("?")[0].endswith(".db")

    def point_alias(self, alias: str) -> None:
        """Make ``alias`` name this collection: created, or moved here from another collection in one
        step, so a client that searches the alias switches generations atomically."""
        try:
            self.client.create_alias(self.collection, alias)
        except Exception:  # noqa: BLE001  (it exists: pymilvus raises its own error types per version)
            self.client.alter_alias(self.collection, alias)

    def has_alias(self, alias: str) -> bool:
        """Whether ``alias`` names this collection now (resolved as a search resolves it: some
        servers' alias listing ignores the database, collection lookups do not)."""
        try:
            return self.client.describe_collection(alias).get("collection_name") == self.collection
        except Exception:  # noqa: BLE001  (no such alias)
            return False

    def _set_generation(self, generation: int) -> None:
        self.client.alter_collection_properties(self.collection, properties={GENERATION_PROPERTY: str(generation)})
        self.generation = self.persisted_generation = generation

    def disk_generation(self) -> int:
        try:
            return int(self._properties().get(GENERATION_PROPERTY, 0))
        except (ValueError, TypeError):
            return 0

    def reload(self) -> None:
        self.generation = self.disk_generation()  # the collection itself is shared: nothing else to read

    def persist(self) -> None:
        self._set_generation(self.generation)

    def apply(self, upsert_ids, upsert_vecs, delete_ids, generation, persist=True, prepared=None) -> None:
        if len(delete_ids):
            self.client.delete(self.collection, ids=[int(i) for i in delete_ids])
        if len(upsert_ids):
            rows = [
                {"id": int(i), "vector": v.astype(np.float32).tolist()}
                for i, v in zip(upsert_ids, upsert_vecs, strict=True)
            ]
            for start in range(0, len(rows), 1000):
                self.client.upsert(self.collection, rows[start : start + 1000])
        if persist:
            self._set_generation(generation)
        else:
            self.generation = generation

    def rebuild(self, ids, vecs, generation, persist=True) -> None:
        self.client.drop_collection(self.collection)  # this gallery's own collection only
        self._ensure_collection()
        self.apply(ids, vecs, np.zeros(0, np.int64), generation, persist)

    def search(self, queries, k, ids=None, widen=1):
        res = self.client.search(
            self.collection,
            data=[q.astype(np.float32).tolist() for q in queries],
            limit=k,
            search_params={"metric_type": "IP"},
            output_fields=["id"],
            # a boolean expression over the primary key (the matching ids come from the gallery's metadata)
            filter="" if ids is None else f"id in [{','.join(str(int(i)) for i in ids)}]",
            consistency_level="Strong",
        )
        scores = np.zeros((len(queries), k), np.float32)
        out = -np.ones((len(queries), k), np.int64)
        for qi, hits in enumerate(res):
            for j, hit in enumerate(hits[:k]):
                out[qi, j] = int(hit["id"])
                scores[qi, j] = float(hit["distance"])
        return scores, out

    def count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])

    def ids(self) -> np.ndarray:
        got: list[int] = []
        iterator = self.client.query_iterator(
            self.collection, batch_size=10_000, filter="", output_fields=["id"], consistency_level="Strong"
        )
        while True:
            batch = iterator.next()
            if not batch:
                iterator.close()
                break
            got += [int(r["id"]) for r in batch]
        return np.sort(np.array(got, dtype=np.int64))

    def describe(self) -> dict:
        return {
            "backend": "milvus",
            "uri": self.uri,
            "db": self.db_name or "default",
            "collection": self.collection,
            "index": "FLAT",
            "metric": "IP",
            "generation": self.generation,
        }

    def close(self) -> None:
        self.client.close()
