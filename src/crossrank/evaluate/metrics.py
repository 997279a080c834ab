"""Ranking metrics through ir-measures, with the relevance threshold of graded sets applied to binary measures.

The stable API other areas call (training for dev-set selection, LTR for its evaluation):

    evaluate_run(qrels, run, measures=("nDCG@10",), rel=None) -> {"nDCG@10": 0.48}
    per_query(qrels, run, measures=("nDCG@10",), rel=None)    -> {"nDCG@10": {"q1": 0.5, ...}}

Measures are named as ir-measures parses them ("nDCG@10", "RR@10", "R@100", "AP", "P@10"); results are keyed
by the caller's own names. Binary measures (RR, AP, R, P, Success) count a document relevant when its grade is
≥ `rel`; nDCG uses the graded gains. `rel=None` picks the set's convention: 2 on the 0–3 TREC DL scale, else 1.
Every judged query is scored: a query the run has no answer for scores 0 (trec_eval -c), so a pipeline cannot
look better by dropping hard queries. A run is scored in crossrank's own order (`crossrank.datasets.ranked`: score
ties in the run's order, e.g. a file's rank column), the order search and rerank show.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import ir_measures

from crossrank.datasets import Qrels, Run, ranked

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "RR@10", "R@100", "AP")
BINARY_MEASURES = frozenset({"RR", "AP", "R", "P", "Success"})


def relevance_threshold(qrels: Qrels) -> int:
    """The grade from which binary measures count a document relevant: 2 on a 0–3 graded scale (TREC DL), else 1."""
    top = max((grade for judged in qrels.values() for grade in judged.values()), default=1)
    return 2 if top >= 3 else 1


def parse_measures(measures: Iterable[str], rel: int) -> dict[str, ir_measures.Measure]:
    """Caller's name → ir-measures Measure, binary ones given `rel` unless the name sets it ("RR(rel=3)@10")."""
    if isinstance(measures, str):
        raise TypeError("measures must be a sequence of names, e.g. ('nDCG@10',), not a single string")
    parsed: dict[str, ir_measures.Measure] = {}
    for name in measures:
        try:
            measure = ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise ValueError(f"unknown measure {name!r} (ir-measures syntax, e.g. 'nDCG@10', 'RR@10', 'AP')") from exc
        if measure.NAME in BINARY_MEASURES and "rel" not in measure.params:
            measure = measure(rel=rel)
        parsed[name] = measure
    if not parsed:
        raise ValueError("no measures given")
    return parsed


def _check_inputs(qrels: Qrels, run: Run) -> None:
    if not qrels:
        raise ValueError("qrels are empty: nothing to evaluate against")
    for qid, scores in run.items():
        if not isinstance(scores, Mapping):
            raise TypeError(f"run[{qid!r}] must map doc id → score, got {type(scores).__name__}")


def per_query(qrels: Qrels, run: Run, measures: Sequence[str] = ("nDCG@10",),
              rel: int | None = None) -> dict[str, dict[str, float]]:
    """measure name → query id → value, for every judged query (0 where the run has no answer)."""
    _check_inputs(qrels, run)
    parsed = parse_measures(measures, relevance_threshold(qrels) if rel is None else rel)
    names_of: dict[ir_measures.Measure, list[str]] = {}
    for name, measure in parsed.items():
        names_of.setdefault(measure, []).append(name)
    values: dict[str, dict[str, float]] = {name: dict.fromkeys(qrels, 0.0) for name in parsed}
    # By rank, not score: ir-measures (trec_eval) would break score ties by doc id descending, not as we rank.
    judged_run = {qid: {doc: -float(rank) for rank, doc in enumerate(ranked(scores))}
                  for qid, scores in run.items() if qid in qrels and scores}
    if judged_run:
        for metric in ir_measures.iter_calc(list(parsed.values()), qrels, judged_run):
            if metric.query_id in qrels:
                for name in names_of[metric.measure]:
                    values[name][metric.query_id] = float(metric.value)
    return values


def aggregate(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Mean over queries of per_query()'s output."""
    return {name: (sum(by_query.values()) / len(by_query) if by_query else 0.0) for name, by_query in values.items()}


def evaluate_run(qrels: Qrels, run: Run, measures: Sequence[str] = ("nDCG@10",),
                 rel: int | None = None) -> dict[str, float]:
    """measure name → mean over the judged queries."""
    return aggregate(per_query(qrels, run, measures, rel))
