"""The `LTR` pipeline stage: rerank each query's top-k with a LambdaMART model over the features earlier stages
recorded on the candidates (typically after `Rerank`, so the cross-encoder's logit is one of them)."""

from __future__ import annotations

from collections.abc import Sequence

from crossrank.ltr.lambdamart import LambdaMART
from crossrank.pipeline import Stage, ordered
from crossrank.types import Candidate, Query, check_positive


class LTR(Stage):
    """Score the top `k` candidates (all when None) with `model`; record it as signal `name` and reorder.
    Candidates below k are dropped, as `Rerank` does."""

    def __init__(self, model: LambdaMART, k: int | None = None, name: str = "ltr") -> None:
        check_positive("k", k, optional=True)
        self.model, self.k, self.name = model, k, name

    def __repr__(self) -> str:
        return f"LTR({self.model.feature_set.key}, k={self.k})"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        out = []
        for query, candidates in zip(queries, candidate_lists, strict=True):
            head = list(candidates[: self.k])
            scores = self.model.predict(self.model.feature_set.extract(query.text, head))
            out.append(ordered([c.with_signal(self.name, s) for c, s in zip(head, scores)], self.name))
        return out
