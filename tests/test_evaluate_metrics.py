"""Metric values equal pytrec_eval's (trec_eval's code) on hand-made qrels and runs; thresholds and errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytrec_eval

from crossrank.datasets import BeirDataset
from crossrank.evaluate.metrics import aggregate, evaluate_run, parse_measures, per_query, relevance_threshold

GRADED_QRELS = {
    "q1": {"a": 3, "b": 2, "c": 1, "d": 0, "e": 2},
    "q2": {"x": 1, "y": 0, "z": 3},
    "q3": {"m": 2},
}
GRADED_RUN = {
    "q1": {"c": 9.0, "a": 8.0, "d": 7.5, "f": 7.0, "b": 6.0, "g": 1.0},
    "q2": {"y": 3.0, "x": 2.0, "z": 1.0},
    "q3": {"n": 1.0, "o": 0.5},
}


def trec_eval(qrels: dict, run: dict, measure: str, rel: int) -> dict[str, float]:
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {measure.split(".")[0]}, relevance_level=rel)
    return {qid: values[measure.replace(".", "_")] for qid, values in evaluator.evaluate(run).items()}


@pytest.mark.parametrize(("ours", "theirs", "rel"), [
    ("nDCG@10", "ndcg_cut.10", 1),
    ("RR@10", "recip_rank", 2),  # every run here is shorter than 10, so the cutoff is inert
    ("AP", "map", 2),
    ("R@5", "recall.5", 2),
    ("P@5", "P.5", 2),
    ("AP", "map", 1),
])
def test_per_query_values_equal_trec_eval(ours: str, theirs: str, rel: int) -> None:
    got = per_query(GRADED_QRELS, GRADED_RUN, (ours,), rel=rel)[ours]
    expected = trec_eval(GRADED_QRELS, GRADED_RUN, theirs, rel)
    assert set(got) == set(expected) == set(GRADED_QRELS)
    for qid in expected:
        assert got[qid] == pytest.approx(expected[qid], abs=1e-9), qid


def test_hand_computed_values() -> None:
    # q2 with rel ≥ 2: only z is relevant, at rank 3 → RR 1/3; q3: m never retrieved → 0.
    values = per_query(GRADED_QRELS, GRADED_RUN, ("RR@10",), rel=2)["RR@10"]
    assert values["q2"] == pytest.approx(1 / 3)
    assert values["q3"] == 0.0
    # nDCG uses graded gains, linear as in trec_eval: q2 ideal order z(3), x(1); actual y(0), x(1), z(3).
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert per_query(GRADED_QRELS, GRADED_RUN, ("nDCG@10",))["nDCG@10"]["q2"] == pytest.approx(dcg / idcg)


def test_threshold_defaults_follow_the_scale() -> None:
    assert relevance_threshold(GRADED_QRELS) == 2
    assert relevance_threshold({"q": {"a": 1, "b": 0}}) == 1
    assert evaluate_run(GRADED_QRELS, GRADED_RUN, ("AP",)) == evaluate_run(GRADED_QRELS, GRADED_RUN, ("AP",), rel=2)
    # An explicit rel in the measure name wins over the default.
    assert str(parse_measures(["RR(rel=3)@10"], rel=2)["RR(rel=3)@10"]) == "RR(rel=3)@10"
    assert str(parse_measures(["RR@10"], rel=2)["RR@10"]) == "RR(rel=2)@10"


def test_missing_queries_score_zero_and_unjudged_queries_are_ignored() -> None:
    run = {"q1": GRADED_RUN["q1"], "unjudged": {"a": 1.0}}
    values = per_query(GRADED_QRELS, run, ("nDCG@10",))["nDCG@10"]
    assert set(values) == set(GRADED_QRELS)
    assert values["q2"] == values["q3"] == 0.0
    assert evaluate_run(GRADED_QRELS, run, ("nDCG@10",))["nDCG@10"] == pytest.approx(values["q1"] / 3)
    assert evaluate_run(GRADED_QRELS, {}, ("nDCG@10",)) == {"nDCG@10": 0.0}


def test_same_measure_under_two_names_fills_both() -> None:
    values = per_query(GRADED_QRELS, GRADED_RUN, ("RR@10", "RR(rel=2)@10"), rel=2)
    assert values["RR@10"] == values["RR(rel=2)@10"]
    assert aggregate(values)["RR@10"] > 0


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown measure"):
        evaluate_run(GRADED_QRELS, GRADED_RUN, ("nDCG@ten",))
    with pytest.raises(TypeError, match="sequence of names"):
        evaluate_run(GRADED_QRELS, GRADED_RUN, "nDCG@10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qrels are empty"):
        evaluate_run({}, GRADED_RUN)
    with pytest.raises(ValueError, match="no measures"):
        evaluate_run(GRADED_QRELS, GRADED_RUN, ())
    with pytest.raises(TypeError, match="doc id"):
        evaluate_run(GRADED_QRELS, {"q1": [("a", 1.0)]})  # type: ignore[dict-item]


@pytest.mark.shared
def test_shipped_bm25_run_of_dl20_reproduces_published_ndcg(shared_datasets: Path) -> None:
    dataset = BeirDataset(shared_datasets / "trec-dl-2020", "test")
    scores = evaluate_run(dataset.qrels, dataset.run("bm25-top100"), ("nDCG@10", "RR@10"))
    assert round(scores["nDCG@10"], 4) == 0.4796
    assert scores["RR@10"] == pytest.approx(0.6533, abs=1e-4)
