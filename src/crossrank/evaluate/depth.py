"""Rerank depth curve: how quality, the first stage's recall ceiling and cost move with the number of candidates
the reranker sees — the "how many candidates are worth the cost" answer.

A reranker's score for a (query, document) pair does not depend on how many other candidates it sees, so the
curve reuses one scoring pass at the largest depth: depth k keeps the first stage's top k, ordered by those
scores. A score interpolated with the first stage does depend on them (both signals are z-scored over the top k),
so it is recomputed at each depth from the same pass. Cost is measured separately (see
`DepthPoint.ms_per_query`), never derived from the quality pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from crossrank.datasets import Qrels, Run, ranked
from crossrank.evaluate.metrics import evaluate_run

if TYPE_CHECKING:
    from crossrank.model.interpolation import FirstStageInterpolation

DEFAULT_DEPTHS: tuple[int, ...] = (10, 20, 50, 100, 200)


@dataclass(frozen=True)
class DepthPoint:
    depth: int
    quality: float  # the measure (nDCG@10 by default) after reranking the first stage's top `depth`
    recall_ceiling: float  # R@depth of the first stage: the most any reranker of this depth can find
    ms_per_query: float | None  # first stage + rerank at this depth, per query (None when not timed)

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def rerank_at_depth(first_stage: Run, rerank_scores: Run, depth: int,
                    interpolation: FirstStageInterpolation | None = None) -> Run:
    """Rerank the first stage's top `depth` per query by the reranker's scores (every one must be scored), or by
    their `interpolation` with the first stage's scores over that top `depth`, as the Rerank stage does; the
    candidates below follow in first-stage order, so measures deeper than `depth` (R@100) stay comparable."""
    if depth < 1:
        raise ValueError(f"depth must be ≥ 1, got {depth}")
    out: Run = {}
    for qid, candidates in first_stage.items():
        scores = rerank_scores.get(qid, {})
        order = ranked(candidates)
        head, tail = order[:depth], order[depth:]
        missing = [doc for doc in head if doc not in scores]
        if missing:
            raise ValueError(f"query {qid}: the reranker did not score {len(missing)} of its top-{depth} "
                             f"candidates (e.g. {missing[0]!r}); score at the largest depth first")
        head_scores = [scores[doc] for doc in head]
        if interpolation is not None:
            head_scores = interpolation.combine(head_scores, [candidates[doc] for doc in head]).tolist()
        out[qid] = dict(zip(head, head_scores, strict=True))
        floor = min(out[qid].values(), default=0.0)
        out[qid].update({doc: floor - 1.0 - rank for rank, doc in enumerate(tail)})
    return out


def usable_depths(first_stage: Run, depths: Sequence[int]) -> list[int]:
    """The requested depths the first stage can supply (a top-100 run cannot be reranked at 200)."""
    deepest = max((len(c) for c in first_stage.values()), default=0)
    return sorted({d for d in depths if d <= deepest} | ({deepest} if any(d > deepest for d in depths) else set()))


def depth_curve(qrels: Qrels, first_stage: Run, rerank_scores: Run, depths: Sequence[int] = DEFAULT_DEPTHS,
                measure: str = "nDCG@10", rel: int | None = None,
                time_depth: Callable[[int], float] | None = None,
                collapse: Callable[[Run], Run] | None = None,
                interpolation: FirstStageInterpolation | None = None) -> list[DepthPoint]:
    """One point per usable depth; `time_depth(k)` returns measured milliseconds per query at depth k;
    `interpolation` mixes the first stage into the reranker's scores at each depth (see `rerank_at_depth`).

    Depth counts the first stage's candidates (passages, for a passage index); `collapse` maps a candidate run
    to the judged units (documents) before it is evaluated.
    """
    collapse = collapse or (lambda run: run)
    points = []
    for depth in usable_depths(first_stage, depths):
        reranked = collapse(rerank_at_depth(first_stage, rerank_scores, depth, interpolation))
        quality = evaluate_run(qrels, reranked, (measure,), rel)[measure]
        head = collapse({qid: {doc: candidates[doc] for doc in ranked(candidates)[:depth]}
                         for qid, candidates in first_stage.items()})
        ceiling = evaluate_run(qrels, head, (f"R@{depth}",), rel)[f"R@{depth}"]
        points.append(DepthPoint(depth, quality, ceiling, time_depth(depth) if time_depth else None))
    return points
