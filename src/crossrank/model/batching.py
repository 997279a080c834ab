"""Length-sorted, token-budget batching: rows of similar length share a batch, padding stays within it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from crossrank.model.tokenization import EncodedRow


def pack_batches(lengths: Sequence[int], batch_tokens: int) -> list[np.ndarray]:
    """Group row indices, longest first, so that rows × longest-row ≤ batch_tokens (at least one row a batch)."""
    if batch_tokens <= 0:
        raise ValueError(f"batch_tokens must be positive, got {batch_tokens}")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = lengths[order[start]]
        size = max(1, batch_tokens // max(longest, 1))
        batches.append(order[start : start + size])
        start += size
    return batches


def pad_batch(rows: Sequence[EncodedRow], pad_id: int) -> dict[str, np.ndarray]:
    """Stack rows into right-padded int64 arrays the backends take."""
    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((len(rows), width), dtype=np.int64)
    attention_mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        n = len(row)
        input_ids[i, :n] = row.input_ids
        token_type_ids[i, :n] = row.token_type_ids
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def iter_batches(rows: Sequence[EncodedRow], batch_tokens: int, pad_id: int) -> Iterator[tuple[np.ndarray, dict]]:
    """Yield (row indices, padded arrays) in length order; callers scatter outputs back by the indices."""
    for indices in pack_batches([len(row) for row in rows], batch_tokens):
        yield indices, pad_batch([rows[i] for i in indices], pad_id)
