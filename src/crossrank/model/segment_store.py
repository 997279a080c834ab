"""Document segment vectors computed ahead of time, so a search runs the cross-encoder on the query alone.

A factorised model's vector for a document window depends on the window's tokens and the model's weights only
(`crossrank.model.factorised`), so, like the index's dense vectors, it can be computed when the passage is
indexed: reranking 100 candidates then encodes one query and reads 100+ stored vectors instead of encoding every
candidate's windows. The scores are the model's own: a stored vector is the segments graph's output for exactly
those tokens, looked up by the digest of the token ids (`segment_key`), so a passage added after the store was
written, or tokenised under other window settings, is simply not found and is encoded as usual.

On disk (one directory per model and index generation, written whole in a hidden sibling and renamed into place,
so a reader sees a complete store or none):

    keys.npy      sorted 16-byte digests (numpy "S16")
    rows.npy      for each sorted key, its row in vectors.f32
    vectors.f32   float32 rows of `dimension` values, in the order they were encoded (memory-mapped when read)
    meta.json     fingerprint (whose vectors these are), dimension, count, and what the writer recorded
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.model.score_cache import CacheStats

KEY_DTYPE = "S16"
META = "meta.json"


# Precisions whose vectors differ only in the last digits: a model at one reads a store written at the other (bf16
# autocast keeps fp32 accumulation and outputs; ranking within 0.002 nDCG@10 of fp32, README "Reranking speed"), so
# an index built on one machine is not re-encoded on another. int8 vectors are coarser: only int8 reads them.
FAITHFUL_PRECISIONS = frozenset({"fp32", "bf16"})


def readable_in_place(stored: str, own: str) -> bool:
    """May a model whose fingerprint is `own` read vectors written under `stored` (`CrossEncoder.fingerprint`:
    `<weights>-<backend>-<precision>`)? Its own, or the same weights' at another faithful precision or backend."""
    if stored == own:
        return True
    stored_parts, own_parts = stored.rsplit("-", 2), own.rsplit("-", 2)
    return (len(stored_parts) == len(own_parts) == 3 and stored_parts[0] == own_parts[0]
            and {stored_parts[2], own_parts[2]} <= FAITHFUL_PRECISIONS)


def segment_key(token_bytes: bytes) -> bytes:
    """A segment's lookup key, in a store and in `SegmentCache`: the digest of its token ids (`ids.tobytes()`)."""
    return hashlib.blake2b(token_bytes, digest_size=16).digest()


class SegmentStoreError(ValueError):
    """A store directory that cannot be read (truncated, or written by something else)."""


class SegmentStore:
    """Read-only digest → vector lookups over a store directory; safe to share across threads."""

    def __init__(self, path: Path) -> None:
        try:
            meta = json.loads((path / META).read_text(encoding="utf-8"))
            self.fingerprint: str = meta["fingerprint"]
            self.dimension = int(meta["dimension"])
            self.keys = np.load(path / "keys.npy")
            self.rows = np.load(path / "rows.npy")
            count = int(meta["count"])
            self.vectors = (np.memmap(path / "vectors.f32", dtype=np.float32, mode="r", shape=(count, self.dimension))
                            if count else np.zeros((0, self.dimension), dtype=np.float32))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise SegmentStoreError(f"{path}: not a readable segment store ({exc})") from exc
        if self.keys.dtype != np.dtype(KEY_DTYPE) or not len(self.keys) == len(self.rows) == count:
            raise SegmentStoreError(f"{path}: keys, rows and vectors disagree ({len(self.keys)} keys, "
                                    f"{len(self.rows)} rows, {count} vectors)")
        self.path = path
        self.meta: dict[str, Any] = meta
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"SegmentStore({str(self.path)!r}, {len(self)} segments)"

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """The stored vector of each key (a row of the memory map), None where the store has none."""
        if not keys or not len(self.keys):
            found: list[np.ndarray | None] = [None] * len(keys)
        else:
            probe = np.frombuffer(b"".join(keys), dtype=KEY_DTYPE)
            at = np.minimum(np.searchsorted(self.keys, probe), len(self.keys) - 1)
            hit = self.keys[at] == probe
            found = [self.vectors[row] if ok else None for ok, row in zip(hit.tolist(), self.rows[at].tolist(),
                                                                          strict=True)]
        hits = sum(vector is not None for vector in found)
        with self._lock:
            self._hits += hits
            self._misses += len(found) - hits
        return found

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(len(self), len(self), self._hits, self._misses)


class SegmentStoreWriter:
    """Builds a store in a hidden folder beside `target`; `commit` renames it into place. Vectors are appended as
    they are encoded (nothing large held in memory); a key added twice keeps its first vector."""

    def __init__(self, target: Path, fingerprint: str) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.target, self.fingerprint = target, fingerprint
        self.dimension: int | None = None  # the first vector's
        self.staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.writing-", dir=target.parent))
        self._vectors = (self.staging / "vectors.f32").open("wb")
        self._keys: dict[bytes, int] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def add(self, keys: Sequence[bytes], vectors: Iterable[np.ndarray]) -> None:
        for key, vector in zip(keys, vectors, strict=True):
            if key in self._keys:
                continue
            row = np.asarray(vector, dtype=np.float32)
            if self.dimension is None and row.ndim == 1:
                self.dimension = len(row)
            if row.shape != (self.dimension,):
                raise ValueError(f"a segment vector of shape {row.shape}; this store holds ({self.dimension},)")
            self._keys[key] = len(self._keys)
            self._vectors.write(row.tobytes())

    def commit(self, **meta: Any) -> SegmentStore:
        """Finish the files and move them to `target` (which must not exist yet)."""
        self._vectors.close()
        keys = np.array(list(self._keys), dtype=KEY_DTYPE) if self._keys else np.zeros(0, dtype=KEY_DTYPE)
        order = np.argsort(keys, kind="stable")
        np.save(self.staging / "keys.npy", keys[order])
        np.save(self.staging / "rows.npy", np.fromiter(self._keys.values(), dtype=np.int64, count=len(keys))[order])
        (self.staging / META).write_text(json.dumps({"fingerprint": self.fingerprint, "dimension": self.dimension or 0,
                                                     "count": len(keys), **meta}, indent=2), encoding="utf-8")
        self.staging.rename(self.target)
        return SegmentStore(self.target)

    def abort(self) -> None:
        self._vectors.close()
        shutil.rmtree(self.staging, ignore_errors=True)


def write_segment_store(model: Any, batches: Iterable[Sequence[str]], target: Path,
                        previous: SegmentStore | None = None, progress: Any = None,
                        **meta: Any) -> tuple[SegmentStore, int]:
    """Store `model`'s vector of every window of the documents (model-read contents, in batches) at `target`, a
    factorised `CrossEncoder`; vectors `previous` holds are copied, not encoded. Returns the store and how many
    segments ran the model. `progress` (a tqdm) advances by documents."""
    writer = SegmentStoreWriter(target, model.fingerprint)
    encoded = 0
    try:
        for contents in batches:
            fresh: dict[bytes, np.ndarray] = {}
            for segments in model.document_segments(contents):
                for ids in segments:
                    key = segment_key(ids.tobytes())
                    if key not in writer:
                        fresh.setdefault(key, ids)
            keys = list(fresh)
            known = previous.get_many(keys) if previous is not None else [None] * len(keys)
            writer.add([k for k, v in zip(keys, known, strict=True) if v is not None],
                       [v for v in known if v is not None])
            todo = [k for k, v in zip(keys, known, strict=True) if v is None]
            writer.add(todo, model.encode_segments([fresh[k] for k in todo]))
            encoded += len(todo)
            if progress is not None:
                progress.update(len(contents))
        return writer.commit(model=model.name, **meta), encoded
    except BaseException:
        writer.abort()
        raise
