"""Factorised scoring: a gated cross-encoder whose cross-segment gates are all closed, run one segment at a time.

With every gate at exactly 0 the joint pass over `[CLS] q [SEP] [CLS] d [SEP]` never lets one segment see the
other (`crossrank.model.gated`), so each term of its score depends on one segment only:

    logit = scale · cos(mean(q), mean(d)) + w·h_q[CLS] + b

The same number then comes from encoding each distinct query once and each distinct document window once, with
a plain BERT graph whose attention ONNX Runtime fuses (the joint graph's two-pattern attention has no fused
kernel): fewer tokens — the query is not re-read beside every candidate — and faster ones. A document longer than
one segment is cut into its own windows (`PairEncoder(window_tokens=...)`: as long as a segment may be, whatever
the query's length), so a document always gives the same segments; the joint graph run on the same windows scores
the same, which tests hold. A model whose gates opened (a GPU run, `crossrank adapt`) is not factorised.

A segment's vector depends on its tokens alone, so a `SegmentCache` lets a document that comes back in a later
call skip the model: another user's query over the same popular pages, or the next batch of an evaluation's
queries over the same corpus (within one call each distinct segment is encoded once anyway). An index can go
further and store every passage's vectors when it is built (`crossrank.model.segment_store`): a search then
encodes only its query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crossrank.model.batching import iter_batches
from crossrank.model.gated import is_gated
from crossrank.model.score_cache import BoundedCache
from crossrank.model.segment_store import segment_key
from crossrank.model.tokenization import EncodedRow

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

    from tqdm import tqdm

    from crossrank.model.checkpoint import Checkpoint
    from crossrank.model.segment_store import SegmentStore

GATES_TENSOR = "cross_gates"


def gates_closed(checkpoint: Checkpoint) -> bool:
    """True for a gated cross-encoder whose every cross-segment gate is exactly 0 (so factorising is exact)."""
    if not is_gated(checkpoint.config):
        return False
    from safetensors import safe_open

    weights = checkpoint.weights_file
    if weights is None or weights.suffix != ".safetensors":
        return False
    with safe_open(str(weights), framework="numpy") as handle:
        if GATES_TENSOR not in handle.keys():  # noqa: SIM118 - safe_open has no __contains__
            return False
        return not np.any(handle.get_tensor(GATES_TENSOR))


class SegmentCache(BoundedCache[np.ndarray]):
    """Segment token ids → its vector (the segments graph's output row); about 1.7 kB per entry for a 384-wide
    model."""

    key = staticmethod(segment_key)


class FactorisedScorer:
    """Turns the joint pair rows into distinct query and document segments, finds each one's vector (in `cache`,
    then in the stores an index wrote, else by running the segments graph once) and combines: row logit = query
    vector · document vector + the query's [CLS] term."""

    def __init__(self, run: Callable[[dict[str, np.ndarray]], np.ndarray], pad_id: int, batch_tokens: int,
                 cache: SegmentCache | None = None) -> None:
        self.run = run  # a backend's run over the "segments" head
        self.pad_id = pad_id
        self.batch_tokens = batch_tokens
        self.cache = cache
        # Read-only stores by the index that wrote them; replaced whole (never edited), so a scoring thread sees
        # the old mapping or the new one.
        self.stores: dict[str, SegmentStore] = {}

    @staticmethod
    def split(row: EncodedRow) -> tuple[np.ndarray, np.ndarray]:
        """A joint row's query segment and document segment (the query comes first, token type 0)."""
        split = int(np.count_nonzero(row.token_type_ids == 0))
        return row.input_ids[:split], row.input_ids[split:]

    def logits(self, rows: Sequence[EncodedRow], progress: tqdm | None = None, use_cache: bool = True) -> np.ndarray:
        """One logit per joint row (same order); `progress` is reset to count the distinct segments encoded."""
        segments, pairs = distinct_segments(rows)
        if not segments:
            return np.zeros(0, dtype=np.float32)
        vectors = self._vectors(segments, progress, use_cache)
        queries, documents = vectors[pairs[:, 0]], vectors[pairs[:, 1]]
        return (np.einsum("ij,ij->i", queries[:, :-1], documents[:, :-1]) + queries[:, -1]).astype(np.float32)

    def encode(self, segments: Sequence[np.ndarray], progress: tqdm | None = None) -> list[np.ndarray]:
        """The segments graph's output row for each segment (token ids with their special tokens), by the model."""
        vectors: list[np.ndarray] = [np.empty(0)] * len(segments)
        for indices, batch in segment_batches(segments, self.batch_tokens, self.pad_id):
            for i, vector in zip(indices, self.run(batch), strict=True):
                vectors[i] = vector.copy()  # a kept row must not hold its whole batch's output alive
            if progress is not None:
                progress.update(len(indices))
        return vectors

    def _vectors(self, segments: list[np.ndarray], progress: tqdm | None, use_cache: bool) -> np.ndarray:
        """One row per segment: from the first memory that has it (the cache, then the stores), from the model for
        the rest."""
        cache = self.cache if use_cache else None
        memories = ([cache] if cache is not None else []) + (list(self.stores.values()) if use_cache else [])
        keys = [SegmentCache.key(segment.tobytes()) for segment in segments] if memories else []
        vectors: list[np.ndarray | None] = [None] * len(segments)
        for memory in memories:
            unknown = [i for i, vector in enumerate(vectors) if vector is None]
            if not unknown:
                break
            for i, vector in zip(unknown, memory.get_many([keys[i] for i in unknown]), strict=True):
                vectors[i] = vector
        missing = [i for i, vector in enumerate(vectors) if vector is None]
        if progress is not None:
            progress.reset(total=len(missing))
            progress.unit = "segment"
        for i, vector in zip(missing, self.encode([segments[i] for i in missing], progress), strict=True):
            vectors[i] = vector
        if cache is not None and missing:
            cache.put_many([keys[i] for i in missing], [vectors[i] for i in missing])
        return np.stack(vectors).astype(np.float32, copy=False)


def distinct_segments(rows: Sequence[EncodedRow]) -> tuple[list[np.ndarray], np.ndarray]:
    """The joint rows' query and document segments with each distinct one listed once — the work factorising
    saves: (segments, pairs), where pairs[i] holds row i's query and document positions in `segments`."""
    index: dict[bytes, int] = {}  # a segment's token bytes → its position in `segments`
    segments: list[np.ndarray] = []
    pairs = np.empty((len(rows), 2), dtype=np.int64)
    for i, row in enumerate(rows):
        for side, ids in enumerate(FactorisedScorer.split(row)):
            position = index.setdefault(ids.tobytes(), len(segments))
            if position == len(segments):
                segments.append(ids)
            pairs[i, side] = position
    return segments, pairs


def segment_batches(segments: Sequence[np.ndarray], batch_tokens: int, pad_id: int
                    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Lone segments (token ids with their special tokens, token type 0) in length-sorted padded batches."""
    return iter_batches([EncodedRow(i, ids, np.zeros_like(ids)) for i, ids in enumerate(segments)], batch_tokens,
                        pad_id)


def close_gates(source: Path, out: Path) -> Path:
    """Write `source` with every cross-segment gate set to 0 to `out` (the other files copied as they are): the
    model the factorised path runs exactly. Whether that costs ranking quality is measured, not assumed (the
    recipe's `close-gates` stage)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "model.safetensors":
            shutil.copy(path, out / path.name)
    state = load_file(str(source / "model.safetensors"))
    if GATES_TENSOR not in state:
        raise ValueError(f"{source}: not a gated cross-encoder (no {GATES_TENSOR})")
    state[GATES_TENSOR] = np.zeros_like(state[GATES_TENSOR])
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
