"""Gallery side: incremental indexing into FAISS or Milvus, crash-safe metadata, search."""

from .gallery import Gallery
from .ingest import encode_records
from .items import GalleryError, Hit, IndexReport, check_filter, item_id
from .stores import FaissStore, MilvusStore, VectorStore, choose_index, open_store

__all__ = [
    "FaissStore",
    "Gallery",
    "GalleryError",
    "Hit",
    "IndexReport",
    "MilvusStore",
    "VectorStore",
    "check_filter",
    "choose_index",
    "encode_records",
    "item_id",
    "open_store",
]
