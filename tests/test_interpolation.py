"""First-stage interpolation: the z-score maths, fitting the weight on judged lists, and fusion.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossrank.model.checkpoint import CheckpointError
from crossrank.model.interpolation import DEFAULT_GRID, FUSION_FILE, FirstStageInterpolation, fit_weight, ndcg_at_10
from crossrank.retrieve.fusion import normalize, zscore


def test_combine_mixes_per_query_z_scores():
    reranker, first_stage = np.array([1.0, 2.0, 3.0]), np.array([30.0, 10.0, 20.0])
    z_reranker = (reranker - 2.0) / np.sqrt(2 / 3)
    z_first = (first_stage - 20.0) / np.sqrt(200 / 3)
    combined = FirstStageInterpolation(0.25).combine(reranker, first_stage)
    np.testing.assert_allclose(combined, 0.75 * z_reranker + 0.25 * z_first)
    np.testing.assert_allclose(FirstStageInterpolation(0.25).combine(reranker * 7 + 3, first_stage / 9), combined)
    assert FirstStageInterpolation(0.0).combine([5.0], [1.0]).tolist() == [0.0]


def test_a_constant_list_z_scores_to_zero():
    assert zscore([0.1, 0.1, 0.1]).tolist() == [0.0, 0.0, 0.0]  # the mean is not exactly 0.1 in floating point
    assert zscore([]).tolist() == []
    combined = FirstStageInterpolation(0.5).combine([1.0, 3.0], [4.0, 4.0])  # the first stage carries no order
    np.testing.assert_allclose(combined, [-0.5, 0.5])
    assert normalize({"a": 2.0, "b": 2.0}, "zscore") == {"a": 0.0, "b": 0.0}
    assert normalize({"a": 1.0, "b": 3.0}, "zscore") == {"a": -1.0, "b": 1.0}
    with pytest.raises(ValueError, match="aligned"):
        FirstStageInterpolation(0.5).combine([1.0, 2.0], [1.0])


def test_fit_picks_the_smallest_weight_that_lets_the_first_stage_fix_the_order():
    # The cross-encoder puts the relevant document second, the first stage first: the z-scores are mirror images,
    # so the relevant one wins only above w = 0.5 (at 0.5 they tie and list order keeps it second).
    weight, means = fit_weight([[1.0, 0.0]], [[0.0, 1.0]], [[0, 1]])
    assert weight == 0.55
    assert set(means) == set(DEFAULT_GRID)
    assert means[0.0] == pytest.approx(1 / np.log2(3)) and means[0.55] == pytest.approx(1.0)


def test_ndcg_at_10_is_what_crossrank_eval_reports():
    from crossrank.evaluate.metrics import evaluate_run

    rng = np.random.default_rng(2)
    for size in (3, 10, 25):
        labels, scores = rng.integers(0, 4, size=size), rng.normal(size=size)
        qrels = {"q": {str(i): int(label) for i, label in enumerate(labels)}}
        run = {"q": {str(i): float(score) for i, score in enumerate(scores)}}
        assert ndcg_at_10(scores, labels) == pytest.approx(evaluate_run(qrels, run, ("nDCG@10",))["nDCG@10"])
    assert ndcg_at_10([1.0, 2.0], [0, 0]) == 0.0


def test_fit_uses_the_first_stage_where_it_carries_the_signal():
    rng = np.random.default_rng(0)
    labels = [rng.permutation([2, 1] + [0] * 18) for _ in range(20)]
    noise = [rng.normal(size=20) for _ in labels]
    first_stage = [label + rng.normal(scale=0.3, size=20) for label in labels]
    weight, means = fit_weight(noise, first_stage, labels)
    assert weight >= 0.5 and means[weight] > means[0.0] + 0.3
    assert means[weight] == max(means.values())


def test_fit_keeps_the_cross_encoder_alone_when_the_first_stage_is_noise():
    rng = np.random.default_rng(1)
    labels = [rng.permutation([3, 1] + [0] * 8) for _ in range(20)]
    reranker = [label + rng.normal(scale=0.01, size=10) for label in labels]  # already the ideal order
    noise = [rng.normal(size=10) for _ in labels]
    weight, means = fit_weight(reranker, noise, labels)
    assert weight == 0.0 and means[0.0] == pytest.approx(1.0)
    assert fit_weight(reranker, reranker, labels)[0] == 0.0  # every weight ties: the smaller one wins


def test_fit_validates_its_inputs():
    with pytest.raises(ValueError, match="align"):
        fit_weight([[1.0]], [], [[1]])
    with pytest.raises(ValueError, match="at least one"):
        fit_weight([], [], [])
    with pytest.raises(ValueError, match="labels"):
        fit_weight([[1.0, 2.0]], [[1.0, 2.0]], [[1]])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fit_weight([[1.0]], [[1.0]], [[1]], grid=(0.0, 1.0))


def test_save_load_round_trip(tmp_path: Path):
    assert FirstStageInterpolation.load(tmp_path) is None
    shipped = FirstStageInterpolation(np.float32(0.25), fitted_on="trec-dl-2019:dev")
    path = shipped.save(tmp_path)
    assert path.name == FUSION_FILE and json.loads(path.read_text()) == {"weight": 0.25,
                                                                       "fitted_on": "trec-dl-2019:dev"}
    assert FirstStageInterpolation.load(tmp_path) == shipped and isinstance(shipped.weight, float)
    path.write_text('{"weight": 0}')
    assert FirstStageInterpolation.load(tmp_path) == FirstStageInterpolation(0.0)


@pytest.mark.parametrize(("content", "message"), [
    ("{weight: 0.2", "not valid JSON"),
    ("[0.2]", "expected an object"),
    ('{"fitted_on": "x"}', "expected an object"),
    ('{"weight": 1.0}', r"in \[0, 1\), got 1.0"),
    ('{"weight": -0.1}', r"in \[0, 1\)"),
    ('{"weight": "0.2"}', r"in \[0, 1\)"),
    ('{"weight": true}', r"in \[0, 1\)"),
    ('{"weight": 0.2, "fitted_on": 3}', "fitted_on"),
])
def test_a_malformed_fusion_json_is_a_clear_error(tmp_path: Path, content: str, message: str):
    (tmp_path / FUSION_FILE).write_text(content)
    with pytest.raises(CheckpointError, match=message) as error:
        FirstStageInterpolation.load(tmp_path)
    assert FUSION_FILE in str(error.value)


def test_the_cross_encoder_loads_what_its_directory_ships(tiny_model_dir: Path, tiny_model_with_fusion_dir: Path,
                                                          tmp_path: Path):
    import shutil

    from crossrank.model.cross_encoder import CrossEncoder

    assert CrossEncoder.from_pretrained(tiny_model_dir, backend="torch").interpolation is None
    shipped = CrossEncoder.from_pretrained(tiny_model_with_fusion_dir, backend="torch").interpolation
    assert shipped == FirstStageInterpolation(0.75, fitted_on="test")
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (broken / FUSION_FILE).write_text('{"weight": 2}')
    with pytest.raises(CheckpointError, match="fusion.json"):
        CrossEncoder.from_pretrained(broken, backend="torch")


def test_a_weight_per_first_stage_round_trips_and_is_checked(tmp_path: Path):
    shipped = FirstStageInterpolation(0.1, fitted_on="training sets", by_first_stage={"fusion": 0.45})
    shipped.save(tmp_path)
    assert json.loads((tmp_path / FUSION_FILE).read_text())["by_first_stage"] == {"fusion": 0.45}
    loaded = FirstStageInterpolation.load(tmp_path)
    assert loaded == shipped and loaded.weight_for("fusion") == 0.45 and loaded.weight_for("run") == 0.1
    assert loaded.weight_for(None) == 0.1 and loaded.for_first_stage("fusion") == FirstStageInterpolation(0.45,
                                                                                                          "training sets")
    for bad in ('{"weight": 0.1, "by_first_stage": {"fusion": 1.5}}', '{"weight": 0.1, "by_first_stage": [0.2]}'):
        (tmp_path / FUSION_FILE).write_text(bad)
        with pytest.raises(CheckpointError, match="fusion.json"):
            FirstStageInterpolation.load(tmp_path)


class FixedScorer:
    """A reranker whose logits put the documents in reverse id order, shipping per-first-stage weights."""

    name = "fixed"

    def __init__(self, interpolation: FirstStageInterpolation) -> None:
        self.interpolation = interpolation

    def score(self, queries, documents):
        from crossrank.model.cross_encoder import PairScores

        logits = np.array([float(d.id[-1]) for d in documents])
        return PairScores(logits, 1 / (1 + np.exp(-logits)), np.ones(len(documents), dtype=int))


def test_rerank_mixes_in_the_weight_of_the_first_stage_it_follows():
    from crossrank.pipeline import Rerank, ordered
    from crossrank.types import Candidate

    def first_stage(signal: str) -> list[Candidate]:  # d1 first, d3 last, by a wide margin
        return ordered([Candidate(f"d{i}", f"d{i}", "text", score=s) for i, s in ((1, 9.0), (2, 1.0), (3, 0.0))],
                       signal)

    stage = Rerank(FixedScorer(FirstStageInterpolation(0.0, by_first_stage={"fusion": 0.9})), k=3)  # type: ignore[arg-type]
    after_fusion = stage("q", first_stage("fusion"))
    after_bm25 = stage("q", first_stage("bm25"))
    assert [c.id for c in after_fusion] == ["d1", "d2", "d3"] and "rerank_interpolated" in after_fusion[0].scores
    assert [c.id for c in after_bm25] == ["d1", "d2", "d3"][::-1] and "rerank_interpolated" not in after_bm25[0].scores
    assert "0.9 after fusion, 0.0 otherwise" in repr(stage)
