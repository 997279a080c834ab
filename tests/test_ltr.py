"""LTR core: click-log format, click simulator, position-bias EM and IPS, features, feature logs, LambdaMART."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from crossrank.evaluate.metrics import evaluate_run
from crossrank.ltr.clicks import Impression, read_click_log, write_click_log
from crossrank.ltr.featurelog import FeatureTable
from crossrank.ltr.features import (
    DocLength, FeatureSet, Freshness, Numeric, QueryCoverage, StageRank, StageScore, TitleMatch,
    default_feature_set,
)
from crossrank.ltr.lambdamart import LambdaMART, cross_validate_lambdamart, split_queries, train_lambdamart
from crossrank.ltr.propensity import (
    PositionBias, click_labels, estimate_position_bias, grade_labels, harvest_position_bias, ips_weights,
)
from crossrank.ltr.simulator import CascadeModel, ClickSimulator, PositionBasedModel, graded_click_probs
from crossrank.types import Candidate

# ---------------------------------------------------------------- click log


def test_click_log_round_trip(tmp_path):
    impressions = [Impression("q1", ("a", "b", "c"), {"b": 41.5}, query="hello", timestamp=3.0),
                   Impression("q2", ("x",), {})]
    path = tmp_path / "clicks.jsonl"
    assert write_click_log(impressions, path) == 2
    assert read_click_log(path) == impressions
    assert impressions[0].position("b") == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"query_id": "q", "shown": ()}, "empty"),
    ({"query_id": "q", "shown": ("a", "a")}, "repeats"),
    ({"query_id": "q", "shown": ("a",), "clicks": {"b": 1.0}}, "was not shown"),
    ({"query_id": "q", "shown": ("a",), "clicks": {"a": -1.0}}, ">= 0"),
    ({"query_id": "", "shown": ("a",)}, "query_id"),
])
def test_impression_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Impression(**kwargs)


def test_click_log_names_the_bad_line(tmp_path):
    path = tmp_path / "clicks.jsonl"
    good = json.dumps(Impression("q1", ("a",)).to_json())
    path.write_text(good + "\n" + json.dumps({"query_id": "q2"}) + "\n")
    with pytest.raises(ValueError, match=r"clicks.jsonl:2: .*missing \['shown'\]"):
        read_click_log(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r":1: "):
        read_click_log(path)


def test_dwell_threshold_keeps_satisfied_clicks():
    impression = Impression("q", ("a", "b", "c"), {"a": 5.0, "b": 45.0, "c": None})
    assert impression.satisfied_clicks(30.0) == ["b", "c"]
    assert impression.satisfied_clicks(None) == ["a", "b", "c"]


# ---------------------------------------------------------------- simulator


def test_graded_click_probs_span_noise_to_one_minus_noise():
    assert graded_click_probs(1, 0.1) == pytest.approx((0.1, 0.9))
    assert graded_click_probs(3, 0.0) == pytest.approx((0.0, 1 / 7, 3 / 7, 1.0))
    with pytest.raises(ValueError, match="noise"):
        graded_click_probs(3, 0.6)
    with pytest.raises(ValueError, match="max_grade"):
        graded_click_probs(0)


def _within_sampling_error(observed: float, expected: float, n: int) -> bool:
    return abs(observed - expected) <= 4.5 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def test_pbm_click_through_rates_match_parameters():
    qrels = {"q": {"d1": 0, "d2": 3, "d3": 1, "d4": 2, "d5": 3}}
    ranking = ["d1", "d2", "d3", "d4", "d5"]
    model = PositionBasedModel(graded_click_probs(3, 0.1), eta=1.0)
    n = 20_000
    log = list(ClickSimulator(model, qrels, depth=5, seed=1).simulate({"q": ranking}, n))
    assert len(log) == n and all(i.shown == tuple(ranking) for i in log)
    theta = model.examination(5)
    for k, doc in enumerate(ranking):
        ctr = sum(doc in i.clicks for i in log) / n
        assert _within_sampling_error(ctr, theta[k] * model.click_probs[qrels["q"][doc]], n), (doc, ctr)


def test_cascade_click_through_rates_match_parameters():
    qrels = {"q": {"a": 1, "b": 0, "c": 1}}
    model = CascadeModel(click_probs=(0.2, 0.7), stop_probs=(0.1, 0.6))
    n = 20_000
    log = list(ClickSimulator(model, qrels, depth=3, seed=2).simulate({"q": ["a", "b", "c"]}, n))
    reach_b = 1 - 0.7 * 0.6
    reach_c = reach_b * (1 - 0.2 * 0.1)
    for doc, expected in (("a", 0.7), ("b", reach_b * 0.2), ("c", reach_c * 0.7)):
        ctr = sum(doc in i.clicks for i in log) / n
        assert _within_sampling_error(ctr, expected, n), (doc, ctr, expected)


def test_simulator_dwell_separates_relevant_from_noise_clicks():
    qrels = {"q": {"r": 1}}
    model = PositionBasedModel((0.5, 0.9), eta=0.0)
    log = list(ClickSimulator(model, qrels, depth=2, seed=3).simulate({"q": ["r", "n"]}, 2000))
    relevant = [i.clicks["r"] for i in log if "r" in i.clicks]
    noise = [i.clicks["n"] for i in log if "n" in i.clicks]
    assert np.median(relevant) == pytest.approx(60, rel=0.1) and np.median(noise) == pytest.approx(8, rel=0.1)
    satisfied = sum(len(i.satisfied_clicks(30.0)) for i in log)
    assert satisfied < len(relevant) + 0.05 * len(noise)


def test_simulator_swaps_move_documents_and_is_seeded():
    sim = ClickSimulator(PositionBasedModel((0.1, 0.9)), {}, depth=3, swap_prob=0.5, seed=4)
    shown = [sim.shown_list(["a", "b", "c", "d"]) for _ in range(200)]
    assert {s[0] for s in shown} == {"a", "b"} and any("d" in s for s in shown)
    again = ClickSimulator(PositionBasedModel((0.1, 0.9)), {}, depth=3, swap_prob=0.5, seed=4)
    assert [again.shown_list(["a", "b", "c", "d"]) for _ in range(200)] == shown


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 0}, "depth"), ({"swap_prob": 1.5}, "swap_prob"),
])
def test_simulator_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClickSimulator(PositionBasedModel((0.1, 0.9)), {}, **kwargs)


def test_click_models_reject_bad_probabilities():
    with pytest.raises(ValueError, match="click_probs"):
        PositionBasedModel((0.1, 1.5))
    with pytest.raises(ValueError, match="one entry per grade"):
        CascadeModel((0.1, 0.9), (0.5,))
    with pytest.raises(ValueError, match="sessions_per_query"):
        list(ClickSimulator(PositionBasedModel((0.1, 0.9)), {}).simulate({"q": ["a"]}, 0))


# ---------------------------------------------------------------- propensity and IPS


def test_ips_weights_equal_hand_computed():
    bias = PositionBias((1.0, 0.5, 0.25))
    assert ips_weights([1, 2, 3, 5], bias).tolist() == [1.0, 2.0, 4.0, 4.0]
    assert ips_weights([1, 2, 3], bias, max_weight=3.0).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="start at 1"):
        bias.weight(0)
    with pytest.raises(ValueError, match="propensities"):
        PositionBias((1.0, 0.0))


def test_click_labels_naive_and_ips_equal_hand_computed():
    log = [
        Impression("q", ("a", "b", "c"), {"b": 40.0}),
        Impression("q", ("b", "a", "c"), {"a": 50.0, "c": 3.0}),  # c: a short, unsatisfied click
        Impression("q", ("c", "b", "a"), {"a": 60.0}),
    ]
    bias = PositionBias((1.0, 0.5, 0.25))
    naive = click_labels(log, dwell_threshold=30.0)
    assert naive == {"q": {"a": pytest.approx(2 / 3), "b": pytest.approx(1 / 3), "c": 0.0}}
    ips = click_labels(log, bias, dwell_threshold=30.0)
    assert ips == {"q": {"a": pytest.approx((2 + 4) / 3), "b": pytest.approx(2 / 3), "c": 0.0}}
    clipped = click_labels(log, bias, dwell_threshold=30.0, max_weight=3.0)
    assert clipped["q"]["a"] == pytest.approx((2 + 3) / 3)
    with_short = click_labels(log, bias, dwell_threshold=None)
    assert with_short["q"]["c"] == pytest.approx(4 / 3)
    assert grade_labels({"q": {"a": 2.0, "b": 0.34, "c": 0.0}}, levels=10) == {"q": {"a": 10, "b": 3, "c": 0}}
    with pytest.raises(ValueError, match="empty"):
        click_labels([])


def test_position_bias_em_recovers_simulated_propensities():
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {f"d{i}-{j}": int(rng.integers(0, 2)) for j in range(8)} for i in range(30)}
    rankings = {q: list(docs) for q, docs in qrels.items()}
    model = PositionBasedModel(graded_click_probs(1, 0.1), eta=1.0)
    log = list(ClickSimulator(model, qrels, depth=6, swap_prob=0.5, seed=5).simulate(rankings, 600))
    bias = estimate_position_bias(log)
    assert np.allclose(bias.theta, model.examination(6), atol=0.02), bias.theta
    assert bias.theta[0] == 1.0
    assert np.allclose(harvest_position_bias(log).theta, model.examination(6), atol=0.03)
    unrandomised = list(ClickSimulator(model, qrels, depth=6, seed=5).simulate(rankings, 5))
    with pytest.raises(ValueError, match="not identifiable"):
        harvest_position_bias(unrandomised)


def test_position_bias_round_trips(tmp_path):
    bias = PositionBias((1.0, 0.6, 0.3), iterations=7)
    bias.save(tmp_path / "bias.json")
    assert PositionBias.load(tmp_path / "bias.json") == bias


# ---------------------------------------------------------------- features


def _candidates() -> list[Candidate]:
    return [
        Candidate("p1", "d1", "bm25 ranks documents", "Ranking with BM25", {"ts": "2026-11-16T00:00:00Z", "pop": 9},
                  1.0, {"bm25": 7.5, "dense": 0.4}, {"bm25": 1, "dense": 2}),
        Candidate("p2", "d2", "dense vectors", "", {"ts": 1_700_000_000, "pop": "n/a"},
                  0.5, {"dense": 0.9}, {"dense": 1}),
    ]


def test_features_are_hand_computed_and_aligned_with_candidates():
    now = 1_795_651_200.0  # 2026-11-26T00:00:00Z
    fs = FeatureSet("t", 1, (StageScore("bm25"), StageRank("dense"), DocLength(), TitleMatch(stemming=True), QueryCoverage(stemming=True),
                             Freshness("ts", half_life_days=10, now=now), Numeric("pop", log=True)))
    candidates = _candidates()
    x = fs.extract("BM25 ranking", candidates)
    assert x.shape == (2, 7)
    np.testing.assert_allclose(x[0], [7.5, 2, 6, 1.0, 1.0, 0.5, math.log1p(9)])
    assert math.isnan(x[1, 0]) and x[1, 1] == 1 and x[1, 2] == 2 and x[1, 3] == 0 and x[1, 4] == 0
    assert 0 < x[1, 5] < 1e-9 and math.isnan(x[1, 6])
    np.testing.assert_array_equal(fs.extract("BM25 ranking", candidates[::-1]), x[::-1])
    np.testing.assert_array_equal(fs.extract("BM25 ranking", candidates), x)  # deterministic
    assert fs.extract("q", []).shape == (0, 7)
    # Terms as BM25 sees them: "the" is a stop word, "ranked"/"documents" stem to what the passage says.
    coverage = QueryCoverage(stemming=True).values("the ranked documents", candidates)
    np.testing.assert_allclose(coverage, [1.0, 0.0])
    np.testing.assert_allclose(QueryCoverage(stemming=False).values("the ranked documents", candidates), [0.5, 0.0])


def test_feature_set_json_round_trip_and_errors():
    fs = default_feature_set().__class__("mine", 3, (StageScore("rerank"), Freshness("ts", 7.0, now=1.0)))
    assert FeatureSet.from_json(json.loads(fs.dumps())) == fs
    assert default_feature_set().names[:2] == ["score:bm25", "rank:bm25"]
    with pytest.raises(ValueError, match="unknown feature type"):
        FeatureSet.from_json({"name": "x", "version": 1, "features": [{"type": "magic"}]})
    with pytest.raises(ValueError, match="bad parameters"):
        FeatureSet.from_json({"name": "x", "version": 1, "features": [{"type": "score"}]})
    with pytest.raises(ValueError, match="bad parameters"):  # saved when terms were \w+: refused, not recomputed
        FeatureSet.from_json({"name": "x", "version": 1, "features": [{"type": "query_coverage"}]})
    with pytest.raises(ValueError, match="missing"):
        FeatureSet.from_json({"name": "x", "features": []})
    with pytest.raises(ValueError, match="repeats"):
        FeatureSet("x", 1, (DocLength(), DocLength()))
    with pytest.raises(ValueError, match="half_life"):
        Freshness("ts", 0)


def test_feature_table_logs_and_reloads(tmp_path):
    fs = FeatureSet("t", 1, (StageScore("bm25"), StageScore("dense"), DocLength()))
    table = FeatureTable.from_candidates(fs, [("q1", "bm25", _candidates()), ("q2", "x", _candidates()[:1])],
                                         qrels={"q1": {"d2": 2}})
    assert table.qids == ["q1", "q1", "q2"] and table.groups().tolist() == [2, 1]
    assert table.labels[:2].tolist() == [0.0, 2.0] and math.isnan(table.labels[2])
    path = tmp_path / "features.tsv"
    table.save(path)
    loaded = FeatureTable.load(path)
    assert loaded.feature_set == fs and loaded.doc_ids == table.doc_ids
    np.testing.assert_array_equal(loaded.features, table.features)
    np.testing.assert_array_equal(np.isnan(loaded.labels), np.isnan(table.labels))
    clicks = table.with_labels({"q2": {"d1": 4}}, only_labelled=True)
    assert clicks.qids == ["q2"] and clicks.labels.tolist() == [4.0]
    assert table.select(["score:dense"]).features.shape == (3, 1)
    ranked = FeatureTable.from_candidates(
        FeatureSet("r", 1, (StageRank("dense"),)), [("q1", "x", _candidates())])
    assert ranked.head(1, "dense").doc_ids == ["d2"]
    with pytest.raises(ValueError, match="not in"):
        ranked.head(1, "bm25")
    joined = table.join(FeatureTable.from_candidates(FeatureSet("ce", 1, (StageRank("dense"), StageScore("bm25"))),
                                                      [("q1", "bm25", _candidates()[1:])]))
    assert joined.feature_set.names == ["score:bm25", "score:dense", "doc_length", "rank:dense"]
    assert np.isnan(joined.features[0, 3]) and joined.features[1, 3] == 1 and np.isnan(joined.features[2, 3])
    with pytest.raises(ValueError, match="adds no feature"):
        table.join(table)
    with pytest.raises(ValueError, match="not in"):
        table.select(["score:nope"])
    with pytest.raises(ValueError, match="no rows"):
        table.with_labels({"zzz": {}})
    path.write_text("qid\tdoc\n")
    with pytest.raises(ValueError, match="not a crossrank feature log"):
        FeatureTable.load(path)
    with pytest.raises(ValueError, match="misaligned"):
        FeatureTable(fs, ["q"], ["d"], np.zeros((1, 2)), np.zeros(1))
    with pytest.raises(ValueError, match="not contiguous"):
        FeatureTable(fs, ["a", "b", "a"], ["1", "2", "3"], np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="no id"):
        FeatureTable.from_candidates(fs, [(None, "q", _candidates())])


# ---------------------------------------------------------------- LambdaMART


def _synthetic(n_queries: int, seed: int) -> FeatureTable:
    """Feature 0 is the graded label, features 1-2 noise: a solvable ranking task."""
    rng = np.random.default_rng(seed)
    fs = FeatureSet("synthetic", 1, (StageScore("label"), StageScore("noise1"), StageScore("noise2")))
    qids, docs, rows, labels = [], [], [], []
    for q in range(n_queries):
        for d in range(20):
            grade = int(rng.integers(0, 4))
            qids.append(f"q{seed}-{q}")
            docs.append(f"d{d}")
            rows.append([grade + rng.normal(0, 0.05), rng.normal(), rng.normal()])
            labels.append(grade)
    return FeatureTable(fs, qids, docs, np.array(rows), np.array(labels, dtype=float))


def test_lambdamart_learns_a_feature_that_is_the_label(tmp_path):
    train, valid = split_queries(_synthetic(40, seed=0), 0.25)
    test = _synthetic(15, seed=1)
    model = train_lambdamart(train, valid, num_rounds=200, early_stopping=20)
    qrels = {q: {d: int(lab) for qq, d, lab in zip(test.qids, test.doc_ids, test.labels) if qq == q}
             for q in set(test.qids)}
    ndcg = evaluate_run(qrels, test.run(model.score(test)), ("nDCG@10",))["nDCG@10"]
    assert ndcg > 0.99
    importance = model.importance("gain")
    assert max(importance, key=importance.get) == "score:label"
    assert model.card["best_iterations"][0] < 200 and model.card["valid"]["ndcg@10"] > 0.99
    model.save(tmp_path / "ltr")
    loaded = LambdaMART.load(tmp_path / "ltr")
    np.testing.assert_allclose(loaded.score(test), model.score(test))
    assert loaded.feature_set == test.feature_set and "score:label" in loaded.card_markdown()


def test_cross_validated_lambdamart_averages_one_model_per_fold(tmp_path):
    table, test = _synthetic(40, seed=0), _synthetic(15, seed=1)
    model = cross_validate_lambdamart(table, folds=4, num_rounds=100, early_stopping=10)
    assert len(model.boosters) == 4 and len(model.card["best_iterations"]) == 4
    assert model.card["valid"]["queries"] == 40 and len(model.card["valid"]["ndcg@10 per fold"]) == 4
    assert model.card["valid"]["ndcg@10"] == pytest.approx(np.mean(model.card["valid"]["ndcg@10 per fold"]))
    members = [LambdaMART([b], table.feature_set, {"best_iterations": [it]})
               for b, it in zip(model.boosters, model.card["best_iterations"], strict=True)]
    np.testing.assert_allclose(model.score(test), np.mean([m.score(test) for m in members], axis=0))
    importance = model.importance("gain")
    assert max(importance, key=importance.get) == "score:label"
    model.save(tmp_path / "cv")
    (tmp_path / "cv" / "model-9.txt").write_text("stale")  # a previous, bigger model's leftovers are replaced
    model.save(tmp_path / "cv")
    loaded = LambdaMART.load(tmp_path / "cv")
    assert len(loaded.boosters) == 4
    np.testing.assert_allclose(loaded.score(test), model.score(test))
    with pytest.raises(ValueError, match="folds"):
        cross_validate_lambdamart(table, folds=1)
    with pytest.raises(ValueError, match="folds"):
        cross_validate_lambdamart(_synthetic(3, seed=2), folds=4)


def test_lambdamart_rejects_bad_training_input(tmp_path):
    table = _synthetic(4, seed=2)
    unlabelled = FeatureTable(table.feature_set, table.qids, table.doc_ids, table.features,
                              np.full(len(table.qids), np.nan))
    with pytest.raises(ValueError, match="unlabelled"):
        train_lambdamart(unlabelled)
    fractional = FeatureTable(table.feature_set, table.qids, table.doc_ids, table.features, table.labels + 0.5)
    with pytest.raises(ValueError, match="integer grades"):
        train_lambdamart(fractional)
    with pytest.raises(ValueError, match="gain"):
        train_lambdamart(table, gain="cubic")
    other = table.select(["score:label", "score:noise1"])
    with pytest.raises(ValueError, match="differ"):
        train_lambdamart(table, other)
    model = train_lambdamart(table, num_rounds=5, min_data_in_leaf=1)
    assert model.card["valid"] is None and model.card["best_iterations"] == [5]
    with pytest.raises(ValueError, match="expects features"):
        model.score(other)
    with pytest.raises(ValueError, match="shape"):
        model.predict(np.zeros((2, 2)))
    with pytest.raises(FileNotFoundError, match="not an LTR model"):
        LambdaMART.load(tmp_path)
    with pytest.raises(ValueError, match="valid_fraction"):
        split_queries(table, 1.0)


def test_ips_click_labels_are_unbiased_where_naive_ones_are_not():
    """On PBM logs, IPS labels with EM-estimated propensities average P(click | seen, grade) per grade; naive
    click-through rates fall short by the examination probability of where the document was shown."""
    rng = np.random.default_rng(6)
    qrels = {f"q{i}": {f"d{j}": int(rng.integers(0, 2)) for j in range(10)} for i in range(40)}
    rankings = {q: [f"d{j}" for j in range(10)] for q in qrels}
    model = PositionBasedModel(graded_click_probs(1, 0.1), eta=1.0)
    log = list(ClickSimulator(model, qrels, depth=8, swap_prob=0.3, seed=7).simulate(rankings, 400))
    naive = click_labels(log, dwell_threshold=None)
    ips = click_labels(log, estimate_position_bias(log), dwell_threshold=None)
    for grade, expected in enumerate(model.click_probs):
        pairs = [(q, d) for q in naive for d in naive[q] if qrels[q][d] == grade and int(d[1:]) < 8]
        assert np.mean([ips[q][d] for q, d in pairs]) == pytest.approx(expected, abs=0.03)
        assert np.mean([naive[q][d] for q, d in pairs]) < 0.6 * expected
