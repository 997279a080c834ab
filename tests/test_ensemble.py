"""The teacher ensemble: per-list z-scored blending, weights fitted on judged lists, and the signal cache
that lets weights be refitted without rescoring."""

from __future__ import annotations

import numpy as np
import pytest

from crossrank.train.data import RankingList, load_lists, save_lists
from crossrank.train.ensemble import TeacherEnsemble, signal_table, simplex_grid


def _judged_lists(seed: int = 0, count: int = 12) -> tuple[list[RankingList], dict]:
    """Lists where `good` follows the labels, `noise` is random, and `half` is right on the top half only."""
    rng = np.random.default_rng(seed)
    lists, qrels = [], {}
    for q in range(count):
        labels = rng.integers(0, 4, size=20).astype(np.float32)
        ids = [f"q{q}d{i}" for i in range(20)]
        good = labels + rng.normal(0, 0.3, size=20)
        noise = rng.normal(0, 1, size=20)
        lists.append(RankingList(query=f"query {q}", documents=[f"doc {q} {i}" for i in range(20)], query_id=f"q{q}",
                                 document_ids=ids, signals={"good": good * 10 + 3, "noise": noise}))
        qrels[f"q{q}"] = {doc: int(label) for doc, label in zip(ids, labels, strict=True)}
    return lists, qrels


def test_simplex_grid_covers_the_simplex() -> None:
    grid = simplex_grid(3, 0.5)
    assert sorted(grid) == sorted([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.0),
                                   (0.5, 0.0, 0.5), (0.0, 0.5, 0.5)])
    assert len(simplex_grid(4, 0.1)) == 286 and all(np.isclose(sum(w), 1) for w in simplex_grid(4, 0.1))
    with pytest.raises(ValueError, match="divide 1"):
        simplex_grid(2, 0.3)


def test_scores_are_scale_free_per_list() -> None:
    item = RankingList(query="q", documents=["a", "b", "c"], signals={"x": np.array([1.0, 2.0, 3.0]),
                                                                      "y": np.array([300.0, 100.0, 200.0])})
    both = TeacherEnsemble({"x": 0.5, "y": 0.5}).scores(item)
    scaled = RankingList(query="q", documents=["a", "b", "c"], signals={"x": np.array([10.0, 20.0, 30.0]),
                                                                        "y": np.array([3.0, 1.0, 2.0])})
    np.testing.assert_allclose(both, TeacherEnsemble({"x": 0.5, "y": 0.5}).scores(scaled), atol=1e-6)


def test_fit_prefers_the_informative_teacher() -> None:
    lists, qrels = _judged_lists()
    ensemble, table = TeacherEnsemble.fit(lists, qrels, ["good", "noise"], step=0.1)
    assert ensemble.weights["good"] >= 0.8
    assert table[0]["ndcg@10"] == max(row["ndcg@10"] for row in table) and len(table) == 11
    single = signal_table(lists, qrels, ["good", "noise"])
    assert single["good"] > single["noise"] + 0.2
    ensemble.attach(lists)
    assert all(item.teacher is not None and item.teacher.shape == (20,) for item in lists)


def test_missing_signal_and_bad_weights_are_errors() -> None:
    item = RankingList(query="q", documents=["a", "b"], signals={"x": np.array([1.0, 2.0])})
    with pytest.raises(KeyError, match="lacks teacher signals"):
        TeacherEnsemble({"x": 0.5, "y": 0.5}).scores(item)
    with pytest.raises(ValueError, match="non-negative"):
        TeacherEnsemble({"x": -1.0})
    with pytest.raises(ValueError, match="shape"):
        RankingList(query="q", documents=["a", "b"], signals={"x": np.array([1.0])})
    with pytest.raises(ValueError, match="no judged lists"):
        TeacherEnsemble.fit([item], {}, ["x"])


def test_signals_survive_the_list_file(tmp_path) -> None:  # noqa: ANN001
    lists, _ = _judged_lists(count=2)
    loaded = load_lists(save_lists(lists, tmp_path / "lists.jsonl.gz"))
    for before, after in zip(lists, loaded, strict=True):
        assert sorted(after.signals) == ["good", "noise"]
        np.testing.assert_allclose(after.signals["good"], before.signals["good"], atol=1e-4)
