"""The on-disk index (passages, vectors, BM25) with ingest from files, chunking and crash-safe commits."""

from crossrank.store.index import Index, IndexConfig, IngestReport, adapted_model
from crossrank.store.loaders import FieldMapping

__all__ = ["FieldMapping", "Index", "IndexConfig", "IngestReport", "adapted_model"]
