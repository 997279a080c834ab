"""Combining several rankings of the same query into one: reciprocal rank fusion and weighted score fusion.

Both take, per source ("bm25", "dense", ...), a mapping from item id to that source's rank or raw score for ONE
query, and return item id → fused score. An item a source did not return simply gets nothing from it.
`zscore` is the per-query normalisation shared with the reranker's first-stage interpolation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RRF_K = 60
NORMALIZATIONS = ("minmax", "zscore")


def _check_weights(sources: Mapping[str, object], weights: Mapping[str, float] | None) -> Mapping[str, float]:
    if weights is None:
        return {name: 1.0 for name in sources}
    unknown = sorted(set(weights) - set(sources))
    if unknown:
        raise ValueError(f"weights name unknown sources {unknown}; sources are {sorted(sources)}")
    for name, weight in weights.items():
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"weight for {name!r} must be a non-negative number, got {weight!r}")
    return {name: float(weights.get(name, 0.0)) for name in sources}


def reciprocal_rank_fusion(ranks: Mapping[str, Mapping[str, int]], k: int = RRF_K,
                           weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Σ_source weight / (k + rank) with 1-based ranks (Cormack et al. 2009, k=60)."""
    if k < 0:
        raise ValueError(f"RRF k must be non-negative, got {k}")
    weight_of = _check_weights(ranks, weights)
    fused: dict[str, float] = {}
    for name, source in ranks.items():
        for item, rank in source.items():
            if rank < 1:
                raise ValueError(f"{name}: ranks are 1-based, got {rank} for {item!r}")
            fused[item] = fused.get(item, 0.0) + weight_of[name] / (k + rank)
    return fused


def zscore(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """(x − mean) / std over one query's scores, so scores on different scales can be added; a list whose
    values are all equal (or empty) carries no ordering and maps to 0s."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.ptp(values) == 0:
        return np.zeros_like(values)
    return (values - values.mean()) / values.std()


def normalize(scores: Mapping[str, float], method: str = "minmax") -> dict[str, float]:
    """Per-query normalisation so sources on different scales can be added: min-max to [0, 1], or z-scores."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {method!r}")
    if not scores:
        return {}
    values = list(scores.values())
    if method == "minmax":
        low, high = min(values), max(values)
        span = high - low
        return {item: (value - low) / span if span > 0 else 1.0 for item, value in scores.items()}
    return dict(zip(scores, zscore(values).tolist(), strict=True))


def weighted_fusion(scores: Mapping[str, Mapping[str, float]], weights: Mapping[str, float] | None = None,
                    normalization: str = "minmax") -> dict[str, float]:
    """Σ_source weight × normalised score; a source that missed an item contributes 0 (its floor for min-max)."""
    weight_of = _check_weights(scores, weights)
    fused: dict[str, float] = {}
    for name, source in scores.items():
        for item, value in normalize(source, normalization).items():
            fused[item] = fused.get(item, 0.0) + weight_of[name] * value
    return fused
