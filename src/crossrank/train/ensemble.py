"""The teacher ensemble: several scorers' raw scores per list (`RankingList.signals`), z-scored per list and
weighted. A single teacher caps the student near itself (v1 was distilled from BM25 + MiniLM and stayed below
MiniLM); teachers trained differently make different errors, so their z-scored blend ranks better than any one.

Weights are fitted on judged *training* lists (grid over the simplex, best mean nDCG@10), never on a dev set,
and the grid's whole table is kept so the model card can show how flat the optimum is.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crossrank.datasets import Qrels
from crossrank.retrieve.fusion import zscore
from crossrank.train.data import RankingList


@dataclass(frozen=True)
class TeacherEnsemble:
    weights: dict[str, float]

    def __post_init__(self) -> None:
        if not self.weights or any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {self.weights}")

    def scores(self, item: RankingList) -> np.ndarray:
        """Σ weight · z(signal) over the list; a signal the list lacks is an error, not a silent zero."""
        missing = [name for name, weight in self.weights.items() if weight > 0 and name not in item.signals]
        if missing:
            raise KeyError(f"list {item.query_id or item.query!r} ({item.source}) lacks teacher signals {missing}")
        total = np.zeros(len(item.documents), dtype=np.float32)
        for name, weight in self.weights.items():
            if weight > 0:
                total += weight * zscore(item.signals[name])
        return total

    def attach(self, lists: Sequence[RankingList]) -> None:
        """Set every list's `teacher` to the ensemble score (in place)."""
        for item in lists:
            item.teacher = self.scores(item)

    @classmethod
    def fit(cls, lists: Sequence[RankingList], qrels: Qrels, names: Sequence[str],
            step: float = 0.1) -> tuple[TeacherEnsemble, list[dict]]:
        """The simplex-grid weighting of `names` with the best nDCG@10 on judged lists (ties: the earlier grid
        point), and the table of every weighting tried, best first."""
        if not names:
            raise ValueError("no teacher signals to weight")
        judged = [item for item in lists if item.query_id in qrels and item.document_ids]
        if not judged:
            raise ValueError("no judged lists (query ids present in the qrels) to fit the ensemble on")
        table = []
        for weights in simplex_grid(len(names), step):
            ensemble = cls(dict(zip(names, weights, strict=True)))
            table.append({"weights": ensemble.weights, "ndcg@10": ensemble.evaluate(judged, qrels)})
        table.sort(key=lambda row: -row["ndcg@10"])  # stable: ties keep grid order
        return cls(table[0]["weights"]), table

    def evaluate(self, lists: Sequence[RankingList], qrels: Qrels) -> float:
        from crossrank.train.trainer import ndcg_at_10

        run = {item.query_id: dict(zip(item.document_ids or [], self.scores(item).tolist(), strict=True))
               for item in lists}
        return ndcg_at_10({qid: qrels[qid] for qid in run}, run)


def simplex_grid(size: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of `size` non-negative multiples of `step` that sums to 1."""
    units = round(1 / step)
    if units < 1 or not np.isclose(units * step, 1.0):
        raise ValueError(f"step must divide 1, got {step}")
    return [tuple(round(c * step, 6) for c in counts)
            for counts in itertools.product(range(units + 1), repeat=size) if sum(counts) == units]


def signal_table(lists: Sequence[RankingList], qrels: Qrels, names: Sequence[str]) -> Mapping[str, float]:
    """nDCG@10 of each teacher alone on the judged lists (the card's per-teacher row)."""
    judged = [item for item in lists if item.query_id in qrels and item.document_ids]
    return {name: TeacherEnsemble({name: 1.0}).evaluate(judged, qrels) for name in names}
