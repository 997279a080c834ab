"""Keeping the first stage's evidence in the final score: the cross-encoder interpolated with the first stage.

A cross-encoder reads one passage at a time, so what the first stage knew (BM25's exact-term and collection
statistics, the agreement of several retrievers in a fused list) is lost when its logit alone orders the list.
Mixing some of it back in often helps and costs nothing, but the scales differ (logits, BM25 scores, RRF sums),
so both are z-scored over the query's list first: (1 − w)·z(cross-encoder) + w·z(first stage).

How much to mix in depends on how good the first stage is: a BM25 list is weaker evidence than a fused BM25 +
dense list, whose dense half is a bi-encoder about as good as a small cross-encoder out of domain. So a model may
ship one weight per first stage, keyed by the signal that ordered the incoming list ("fusion" for `Fuse`, "run",
"bm25", "retrieve" ...), with `weight` for any other. The weights are fitted on judged training data
(`fit_weight`) and ship beside the checkpoint as `fusion.json`; the engine picks them up when it loads the model,
as it does `calibration.json`.
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossrank.model.checkpoint import CheckpointError
from crossrank.retrieve.fusion import zscore

FUSION_FILE = "fusion.json"
DEFAULT_GRID: tuple[float, ...] = tuple(float(w) for w in np.round(np.arange(0, 0.81, 0.05), 2))

ScoreList = Sequence[float] | np.ndarray


def _checked_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < 1:
        raise ValueError(f"first-stage weight must be a number in [0, 1), got {weight!r}")
    return float(weight)


@dataclass(frozen=True)
class FirstStageInterpolation:
    """The first stage's share of the final score, in [0, 1): 0 is the cross-encoder alone; 1 is refused,
    since it would ignore the cross-encoder the pipeline has just paid for. `by_first_stage` maps the signal that
    ordered the incoming list to its own weight; `weight` serves any other. `fitted_on` names the data."""

    weight: float
    fitted_on: str = ""
    by_first_stage: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.fitted_on, str):
            raise ValueError(f"fitted_on must be a string, got {type(self.fitted_on).__name__}")
        if not isinstance(self.by_first_stage, Mapping) or not all(isinstance(k, str) for k in self.by_first_stage):
            raise ValueError("by_first_stage must map first-stage signal names to weights")
        object.__setattr__(self, "weight", _checked_weight(self.weight))
        object.__setattr__(self, "by_first_stage", {k: _checked_weight(v) for k, v in self.by_first_stage.items()})

    def weight_for(self, first_stage: str | None) -> float:
        return self.by_first_stage.get(first_stage, self.weight) if first_stage is not None else self.weight

    def for_first_stage(self, first_stage: str | None) -> FirstStageInterpolation:
        """The single weight that applies after `first_stage` (the signal that ordered the incoming list)."""
        return FirstStageInterpolation(self.weight_for(first_stage), self.fitted_on)

    @property
    def weights(self) -> list[float]:
        return [self.weight, *self.by_first_stage.values()]

    def combine(self, reranker_scores: ScoreList, first_stage_scores: ScoreList) -> np.ndarray:
        """Final scores of ONE query's list (aligned arrays): both signals z-scored over that list, then mixed."""
        reranker = np.asarray(reranker_scores, dtype=np.float64)
        first_stage = np.asarray(first_stage_scores, dtype=np.float64)
        if reranker.ndim != 1 or reranker.shape != first_stage.shape:
            raise ValueError(f"expected two aligned 1-d score lists, got shapes {reranker.shape} and "
                             f"{first_stage.shape}")
        return (1 - self.weight) * zscore(reranker) + self.weight * zscore(first_stage)

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        path = Path(model_dir) / FUSION_FILE
        data = {"weight": self.weight, **({"by_first_stage": dict(self.by_first_stage)} if self.by_first_stage else {}),
                "fitted_on": self.fitted_on}
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> FirstStageInterpolation | None:
        """The weight a model directory ships, or None when it has no fusion.json (the cross-encoder alone)."""
        path = Path(model_dir) / FUSION_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or "weight" not in data:
            raise CheckpointError(f'{path}: expected an object like {{"weight": 0.2, "by_first_stage": '
                                  f'{{"fusion": 0.4}}, "fitted_on": "..."}}')
        try:
            return cls(data["weight"], data.get("fitted_on", ""), data.get("by_first_stage", {}))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc


def ndcg_at_10(scores: ScoreList, labels: ScoreList) -> float:
    """nDCG@10 of one judged list as trec_eval's ndcg_cut computes it (and so ir-measures' nDCG@10, what
    `crossrank eval` reports): linear gains, 1/log2(rank + 1) discounts, the ideal from the list's own labels.
    Here rather than through the evaluation module, which sits above the engine."""
    gains = np.maximum(np.asarray(labels, dtype=np.float64), 0.0)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:10]
    discounts = 1.0 / np.log2(np.arange(2, len(order) + 2))
    ideal = float(np.sort(gains)[::-1][: len(order)] @ discounts)
    return float(gains[order] @ discounts) / ideal if ideal > 0 else 0.0


def fit_weight(reranker_lists: Sequence[ScoreList], first_stage_lists: Sequence[ScoreList],
               label_lists: Sequence[ScoreList], grid: Sequence[float] = DEFAULT_GRID,
               ) -> tuple[float, dict[float, float]]:
    """The grid weight with the best mean nDCG@10 over judged lists (one list per query), and every weight's
    mean, for the model card. Ties go to the smaller weight: the first stage is mixed in only where it
    measurably helps."""
    if not len(reranker_lists) == len(first_stage_lists) == len(label_lists):
        raise ValueError(f"{len(reranker_lists)} reranker lists, {len(first_stage_lists)} first-stage lists and "
                         f"{len(label_lists)} label lists: they must align")
    if not label_lists:
        raise ValueError("fitting a first-stage weight needs at least one judged list")
    for q, (reranker, labels) in enumerate(zip(reranker_lists, label_lists, strict=True)):
        if len(labels) != len(reranker):
            raise ValueError(f"list {q}: {len(reranker)} scores but {len(labels)} labels")
    weights = sorted({FirstStageInterpolation(w).weight for w in grid})
    if not weights:
        raise ValueError("the weight grid is empty")
    means = {}
    for weight in weights:
        interpolation = FirstStageInterpolation(weight)
        means[weight] = float(np.mean([
            ndcg_at_10(interpolation.combine(reranker, first), labels)
            for reranker, first, labels in zip(reranker_lists, first_stage_lists, label_lists, strict=True)]))
    return max(weights, key=lambda w: (means[w], -w)), means
