"""Dense retrieval over unit-length passage vectors keyed by row id: exact inner product (FAISS IndexFlatIP)
below `exact_threshold` vectors, HNSW above it. Filtered searches are always exact over the allowed rows.

The ANN graph is built lazily on the first search after a change; additions extend it, removals (which HNSW
cannot do in place) drop it for a rebuild.
"""

from __future__ import annotations

import faiss
import numpy as np

DEFAULT_EXACT_THRESHOLD = 20_000


class DenseIndex:
    def __init__(self, dimension: int, *, exact_threshold: int = DEFAULT_EXACT_THRESHOLD, hnsw_m: int = 32,
                 ef_construction: int = 200, ef_search: int = 256) -> None:
        self.dimension, self.exact_threshold = dimension, exact_threshold
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.rows = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros((0, dimension), dtype=np.float32)
        self._faiss: faiss.Index | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def kind(self) -> str:
        return "exact" if len(self) < self.exact_threshold else "hnsw"

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(rows), self.dimension):
            raise ValueError(f"expected {len(rows)} vectors of dimension {self.dimension}, got {vectors.shape}")
        was = self.kind
        self.rows = np.concatenate([self.rows, rows])
        self.vectors = np.concatenate([self.vectors, vectors])
        if self._faiss is not None and self.kind == was:
            self._faiss.add_with_ids(vectors, rows)
        else:
            self._faiss = None

    def remove(self, rows: np.ndarray) -> None:
        keep = ~np.isin(self.rows, np.asarray(rows, dtype=np.int64))
        if keep.all():
            return
        self.rows, self.vectors = self.rows[keep], self.vectors[keep]
        self._faiss = None

    def _index(self) -> faiss.Index:
        if self._faiss is None:
            if self.kind == "exact":
                base = faiss.IndexFlatIP(self.dimension)
            else:
                base = faiss.IndexHNSWFlat(self.dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
                base.hnsw.efConstruction = self.ef_construction
            index = faiss.IndexIDMap(base)
            index.add_with_ids(self.vectors, self.rows)
            self._faiss = index
        if self.kind == "hnsw":
            faiss.downcast_index(self._faiss.index).hnsw.efSearch = self.ef_search
        return self._faiss

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """(row, cosine) best first for each query vector."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if len(self) == 0 or k <= 0:
            return [[] for _ in queries]
        index = self._index()
        if self.kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = max(self.ef_search, k)
        scores, ids = index.search(queries, min(k, len(self)))
        return [[(int(r), float(s)) for r, s in zip(row_ids, row_scores, strict=True) if r >= 0]
                for row_ids, row_scores in zip(ids, scores, strict=True)]

    def search_exact(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Brute force over all rows, or only `allowed` ones (metadata filters)."""
        mask = slice(None) if allowed is None else np.isin(self.rows, allowed)
        rows, vectors = self.rows[mask], self.vectors[mask]
        if len(rows) == 0 or k <= 0:
            return []
        scores = vectors @ np.asarray(query, dtype=np.float32)
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(rows[i]), float(scores[i])) for i in top]
