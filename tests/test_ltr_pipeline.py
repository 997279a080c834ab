"""LTR in the pipeline and from the shell: the LTR stage, feature logging through real stages, and the
`crossrank ltr` / `crossrank clicks` commands on a tiny BEIR folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.ltr.featurelog import FeatureTable
from crossrank.ltr.features import FeatureSet, StageRank, StageScore
from crossrank.ltr.lambdamart import LambdaMART, train_lambdamart
from crossrank.ltr.stage import LTR
from crossrank.pipeline import Cut, Pipeline
from crossrank.types import Candidate


def _candidates(rng: np.random.Generator, n: int = 12) -> list[Candidate]:
    grades = rng.integers(0, 4, size=n)
    return [Candidate(f"d{i}", f"d{i}", f"text {i}", score=float(n - i),
                      scores={"good": float(g) + rng.normal(0, 0.1), "bad": float(rng.normal())},
                      ranks={"good": i + 1}, metadata={"grade": int(g)})
            for i, g in enumerate(grades)]


@pytest.fixture(scope="module")
def model() -> LambdaMART:
    rng = np.random.default_rng(0)
    fs = FeatureSet("stage-test", 1, (StageScore("good"), StageScore("bad"), StageRank("good")))
    lists = [(f"q{i}", "query", _candidates(rng)) for i in range(40)]
    qrels = {qid: {c.doc_id: c.metadata["grade"] for c in cands} for qid, _, cands in lists}
    return train_lambdamart(FeatureTable.from_candidates(fs, lists, qrels), num_rounds=50, min_data_in_leaf=5)


def test_ltr_stage_reorders_by_the_model_and_records_its_signal(model):
    candidates = _candidates(np.random.default_rng(1))
    out = (LTR(model, k=10) >> Cut(5)).run(["query"], [candidates])[0]
    assert len(out.candidates) == 5 and [t.stage for t in out.trace] == ["ltr", "cut"]
    scores = model.predict(model.feature_set.extract("query", candidates[:10]))
    expected = [candidates[i].doc_id for i in np.argsort(-scores, kind="stable")[:5]]
    assert [c.doc_id for c in out.candidates] == expected
    assert [c.ranks["ltr"] for c in out.candidates] == [1, 2, 3, 4, 5]
    grades = [c.metadata["grade"] for c in out.candidates]
    assert grades == sorted(grades, reverse=True)
    assert LTR(model)("query", []) == []
    with pytest.raises(ValueError, match="must be 1 or more"):
        LTR(model, k=0)
    assert "stage-test@v1" in repr(Pipeline([LTR(model)]))


@pytest.fixture()
def tiny_beir(tmp_path):
    """Two queries over six documents, a BM25-like run, graded judgments."""
    root = tmp_path / "tiny"
    (root / "qrels").mkdir(parents=True)
    (root / "runs").mkdir()
    docs = {f"d{i}": f"passage {i} about {'ranking' if i % 2 else 'cooking'} and search" for i in range(6)}
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "title": "", "text": t}) + "\n"
                                               for d, t in docs.items()))
    queries = {"q1": "ranking search", "q2": "cooking search", "q3": "search engines"}
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    qrels = {"q1": {"d1": 2, "d3": 1}, "q2": {"d0": 3, "d4": 1}, "q3": {"d5": 1}}
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, judged in qrels.items() for d, g in judged.items()))
    (root / "runs" / "bm25.trec").write_text("".join(
        f"{q} Q0 d{i} {i + 1} {10 - i} bm25\n" for q in queries for i in range(6)))
    return root


def test_cli_features_train_simulate_and_learn_from_clicks(tiny_beir, tiny_model_dir, tmp_path):
    runner = CliRunner()
    log = tmp_path / "features.tsv"
    result = runner.invoke(app, ["ltr", "features", f"{tiny_beir}:test", "--run", "bm25", "--model",
                                 str(tiny_model_dir), "--no-dense", "--out", str(log)])
    assert result.exit_code == 0, result.output
    table = FeatureTable.load(log)
    assert table.feature_set.names[:4] == ["score:bm25", "rank:bm25", "score:rerank", "rank:rerank"]
    assert len(table.qids) == 18 and table.labels.tolist().count(0) == 13
    # the logged cross-encoder score is the engine's own score for that pair
    from crossrank.model.cross_encoder import CrossEncoder

    logit = CrossEncoder.from_pretrained(str(tiny_model_dir)).predict([("ranking search", "passage 1 about ranking and search")])
    row = table.qids.index("q1") + table.doc_ids[table.qids.index("q1"):].index("d1")
    assert table.features[row, 2] == pytest.approx(float(logit[0]), abs=1e-4)

    model_dir, results = tmp_path / "model", tmp_path / "results.json"
    result = runner.invoke(app, ["ltr", "train", "--features", str(log), "--test", str(log), "--qrels",
                                 f"{tiny_beir}:test", "--out", str(model_dir), "--json", str(results),
                                 "--folds", "3", "--min-data-in-leaf", "1", "--rounds", "5"])
    assert result.exit_code == 0, result.output
    assert LambdaMART.load(model_dir).feature_set == table.feature_set
    saved = json.loads(results.read_text())
    assert set(saved["systems"]) == {"bm25", "rerank", "ltr"} and saved["baseline"] == "rerank"
    vs_rerank = saved["systems"]["ltr"]["vs_baseline"]  # paired tests against the cross-encoder alone
    assert vs_rerank["wins"] + vs_rerank["ties"] + vs_rerank["losses"] == len(saved["systems"]["ltr"]["per_query"])
    assert 0 < vs_rerank["randomisation_p_holm"] <= 1 and "vs_baseline" not in saved["systems"]["rerank"]

    clicks = tmp_path / "clicks.jsonl"
    result = runner.invoke(app, ["clicks", "simulate", "--features", str(log), "--out", str(clicks),
                                 "--sessions", "50", "--depth", "4", "--swap-prob", "0.3"])
    assert result.exit_code == 0, result.output
    assert len(clicks.read_text().splitlines()) == 150
    result = runner.invoke(app, ["clicks", "train", "--features", str(log), "--log", str(clicks), "--test",
                                 str(log), "--qrels", f"{tiny_beir}:test", "--folds", "1"])
    assert result.exit_code == 0, result.output
    assert "estimated propensities" in result.output and "ltr-clicks-ips" in result.output


@pytest.mark.parametrize("args, message", [
    (["ltr", "train", "--features", "missing.tsv"], "no such feature log"),
    (["clicks", "simulate", "--features", "{log}", "--out", "x.jsonl", "--user", "dbn"], "--user"),
    (["clicks", "simulate", "--features", "{log}", "--out", "x.jsonl", "--logging", "nope"], "not a logged signal"),
    (["clicks", "train", "--features", "{log}", "--log", "missing.jsonl"], "no such click log"),
    (["ltr", "train", "--features", "{log}", "--exclude", "score:nope"], "not in"),
])
def test_cli_reports_bad_input(args, message, tmp_path):
    fs = FeatureSet("t", 1, (StageScore("bm25"),))
    log = tmp_path / "f.tsv"
    FeatureTable(fs, ["q", "q"], ["a", "b"], np.array([[1.0], [2.0]]), np.array([0.0, 1.0])).save(log)
    result = CliRunner().invoke(app, [a.replace("{log}", str(log)) for a in args])
    assert result.exit_code == 2 and message in result.output


def test_sets_without_a_run_get_full_corpus_bm25_with_ties_by_id(tiny_beir):
    from crossrank.datasets import BeirDataset
    from crossrank.ltr.experiment import first_stage_run

    run = first_stage_run(BeirDataset(tiny_beir, "test"), None, 3)
    assert set(run) == {"q1", "q2", "q3"}
    # d1, d3, d5 are the same words about ranking: equal BM25 scores, ordered by id as Retrieve orders ties.
    assert list(run["q1"]) == ["d1", "d3", "d5"] and len(set(run["q1"].values())) == 1
