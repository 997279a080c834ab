"""Bounded memories of model work, so repeats are answered without running the model again.

`ScoreCache` keeps scored pairs: exact repeats (a RAG turn retried, the next page of the same search, one query
run through several pipelines). `SegmentCache` (`crossrank.model.factorised`) keeps the vectors of encoded
segments, so a document that comes back for another query — the same abstract in many queries' top 100 —
is encoded once.

Each `CrossEncoder` owns its caches, so an entry can never outlive the model, tokenisation settings and
calibration that produced it (the model fingerprint is implied by the owner). Keys are 16-byte BLAKE2 digests, so
memory is bounded by entries, not by text length. The least recently used entries go first."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

Value = TypeVar("Value")


@dataclass(frozen=True)
class CacheStats:
    entries: int
    max_entries: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


class BoundedCache(Generic[Value]):
    """key → value, at most `max_entries` (least recently used first out), safe to share across threads."""

    def __init__(self, max_entries: int) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries <= 0:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, Value] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get_many(self, keys: Sequence[bytes]) -> list[Value | None]:
        with self._lock:
            found = []
            for key in keys:
                value = self._entries.get(key)
                if value is not None:
                    self._entries.move_to_end(key)
                found.append(value)
            hits = sum(value is not None for value in found)
            self._hits += hits
            self._misses += len(found) - hits
            return found

    def put_many(self, keys: Sequence[bytes], values: Sequence[Value]) -> None:
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self._entries), self.max_entries, self._hits, self._misses)


class ScoreCache(BoundedCache[tuple[float, int]]):
    """(query, document) → (logit, windows); about 150 bytes per entry with Python's overheads."""

    @staticmethod
    def key(query: str, content: str) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        digest.update(query.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")  # no (query, content) split of one string collides with another
        digest.update(content.encode("utf-8", "surrogatepass"))
        return digest.digest()
