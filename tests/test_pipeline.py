"""Pipeline mechanics: stage composition, per-stage scores and ranks, the trace, batching across queries."""

from __future__ import annotations

import pytest
from conftest import count_score_calls

from crossrank.pipeline import Cut, FromRun, Fuse, Pipeline, Rerank, candidates_from_documents
from crossrank.retrieve.fusion import reciprocal_rank_fusion, weighted_fusion
from crossrank.types import Candidate, Document, Query

CORPUS = {
    "d1": Document("BM25 is a bag-of-words ranking function.", title="BM25", id="d1"),
    "d2": Document("Cross-encoders read the query and document together.", title="Cross-encoders", id="d2"),
    "d3": Document("Paris is the capital of France.", id="d3"),
}
RUN = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {"d3": 5.0, "d1": 4.0}}


def test_from_run_orders_by_score_and_records_rank():
    result = Pipeline([FromRun(RUN, CORPUS)]).run([Query("bm25", id="q1"), Query("paris", id="q2")])
    assert [c.id for c in result[0].candidates] == ["d1", "d2", "d3"]
    assert [c.ranks["run"] for c in result[1].candidates] == [1, 2]
    assert result[1].candidates[0].scores["run"] == 5.0
    assert result[0].first_stage_rank(result[0].candidates[2]) == 3


def test_from_run_unknown_document_is_a_clear_error():
    with pytest.raises(KeyError, match="not in the corpus"):
        Pipeline([FromRun({"q1": {"nope": 1.0}}, CORPUS)]).run([Query("x", id="q1")])


def test_rerank_batches_all_queries_in_one_model_call(tiny_model_dir):
    from crossrank.model.cross_encoder import CrossEncoder

    model = CrossEncoder.from_pretrained(tiny_model_dir)
    calls = count_score_calls(model)
    pipeline = FromRun(RUN, CORPUS) >> Rerank(model, k=2) >> Cut(1)
    results = pipeline.run([Query("bm25", id="q1"), Query("paris", id="q2")])
    assert calls == [4]  # 2 + 2 pairs, one pass
    expected = model.score(["bm25", "bm25"], [CORPUS["d1"], CORPUS["d2"]]).logits
    top = results[0].candidates[0]
    assert top.scores["rerank"] == pytest.approx(float(max(expected)), rel=1e-5)
    assert top.ranks["rerank"] == 1 and "run" in top.ranks and "rerank_probability" in top.scores
    trace = results[0].trace
    assert [(t.stage, t.candidates_in, t.candidates_out) for t in trace] == [
        ("run", 0, 3), ("rerank", 3, 2), ("cut", 2, 1)]
    assert all(t.ms >= 0 for t in trace)


def test_given_candidate_lists_start_the_pipeline(tiny_model_dir):
    from crossrank.model.cross_encoder import CrossEncoder

    model = CrossEncoder.from_pretrained(tiny_model_dir)
    lists = [candidates_from_documents(["a cat", {"text": "a dog", "id": "dog"}])]
    result = Pipeline([Rerank(model, k=10)]).run(["pets"], lists)[0]
    assert {c.id for c in result.candidates} == {"0", "dog"}
    assert result.first_stage_rank(result.candidates[0]) is None


def _cand(cid, **signals):
    scores = {k: v[0] for k, v in signals.items()}
    ranks = {k: v[1] for k, v in signals.items()}
    return Candidate(cid, cid, cid, scores=scores, ranks=ranks)


def test_fuse_rrf_and_weighted():
    candidates = [_cand("a", bm25=(10.0, 1)), _cand("b", bm25=(5.0, 2), dense=(0.9, 1)), _cand("c", dense=(0.1, 2))]
    rrf = Fuse("rrf")("q", candidates)
    assert [c.id for c in rrf] == ["b", "a", "c"]
    assert rrf[0].scores["fusion"] == pytest.approx(1 / 62 + 1 / 61)
    weighted = Fuse("weighted", weights={"bm25": 1.0, "dense": 0.0})("q", candidates)
    assert [c.id for c in weighted][:2] == ["a", "b"]
    assert weighted[0].ranks["fusion"] == 1 and weighted[0].ranks["bm25"] == 1


def test_fuse_zscore_adds_standardised_scores():
    candidates = [_cand("a", bm25=(10.0, 1)), _cand("b", bm25=(5.0, 2), dense=(0.9, 1)), _cand("c", dense=(0.1, 2))]
    fused = Fuse("weighted", normalization="zscore")("q", candidates)
    # bm25 z: a +1, b −1; dense z: b +1, c −1; a source that missed a candidate adds 0. (Min-max would tie a and b.)
    assert [(c.id, c.scores["fusion"]) for c in fused] == [("a", 1.0), ("b", 0.0), ("c", -1.0)]
    weighted = Fuse("weighted", weights={"bm25": 1.0, "dense": 3.0}, normalization="zscore")("q", candidates)
    assert [(c.id, c.scores["fusion"]) for c in weighted] == [("b", 2.0), ("a", 1.0), ("c", -3.0)]


def test_rrf_ties_keep_the_order_they_arrive_in():
    bm25_only, dense_only = _cand("z", bm25=(3.0, 1)), _cand("a", dense=(0.9, 1))  # both 1/61: a tie
    for arrival in ([bm25_only, dense_only], [dense_only, bm25_only]):
        fused = Fuse("rrf")("q", arrival)
        assert [c.id for c in fused] == [c.id for c in arrival]  # not re-sorted by id
        assert fused[0].scores["fusion"] == fused[1].scores["fusion"] and [c.ranks["fusion"] for c in fused] == [1, 2]


def test_fusion_functions_validate():
    assert reciprocal_rank_fusion({"x": {"a": 1}}, k=0) == {"a": 1.0}
    with pytest.raises(ValueError, match="1-based"):
        reciprocal_rank_fusion({"x": {"a": 0}})
    with pytest.raises(ValueError, match="unknown sources"):
        weighted_fusion({"x": {"a": 1.0}}, weights={"y": 1.0})
    assert weighted_fusion({"x": {"a": 3.0, "b": 1.0}}) == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError, match="normalization"):
        Fuse("weighted", normalization="rank")
    with pytest.raises(ValueError, match="fusion method"):
        Fuse("borda")


def test_pipeline_validation():
    with pytest.raises(ValueError, match="at least one stage"):
        Pipeline([])
    with pytest.raises(TypeError, match="expected a Stage"):
        Pipeline([lambda q, c: c])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="empty"):
        Pipeline([Cut(1)]).run(["  "], [[]])
    with pytest.raises(ValueError, match="candidate lists"):
        Pipeline([Cut(1)]).run(["a", "b"], [[]])
    with pytest.raises(ValueError, match="must be 1 or more"):
        Cut(0)
    assert repr(Cut(3) >> Cut(2)) == "Cut(3) >> Cut(2)"


@pytest.fixture
def small_index(tmp_path, tiny_index_config):
    from crossrank.store import Index

    index = Index.create(tmp_path / "index", tiny_index_config)
    index.add([
        Document("Volcanoes erupt lava and ash. " * 3 + "Magma chambers feed them.", title="Volcanoes", id="v",
                 metadata={"lang": "en", "timestamp": "2024-05-01"}),
        Document("Glaciers move slowly and carve valleys.", title="Glaciers", id="g",
                 metadata={"lang": "en", "timestamp": "2023-01-01"}),
        Document("Lava cools into basalt rock.", title="Basalt", id="b", metadata={"lang": "de", "timestamp": "2025-01-01"}),
    ])
    index.commit()
    yield index
    index.close()


def test_retrieve_unites_retrievers_and_keeps_every_signal(small_index):
    from crossrank.pipeline import Collapse, Retrieve

    pipeline = Retrieve(small_index, ["bm25", "dense"], k=10) >> Fuse("rrf") >> Collapse() >> Cut(2)
    [result] = pipeline.run(["lava"])
    assert [c.doc_id for c in result.candidates][0] in {"v", "b"}
    assert len({c.doc_id for c in result.candidates}) == len(result.candidates) == 2
    for candidate in result.candidates:
        assert "dense" in candidate.scores and "fusion" in candidate.ranks
        assert result.first_stage_rank(candidate) == candidate.ranks["fusion"]  # what the later stages start from
    bm25_only = Pipeline([Retrieve(small_index, "bm25", k=10)]).search("lava")
    assert {c.doc_id for c in bm25_only.candidates} == {"v", "b"}
    assert [c.ranks["retrieve"] for c in bm25_only.candidates] == [1, 2]
    assert [t.stage for t in result.trace] == ["retrieve", "fusion", "collapse", "cut"]


def test_filters_flow_from_search_to_the_index(small_index):
    from crossrank.pipeline import Retrieve

    pipeline = Pipeline([Retrieve(small_index, ["bm25", "dense"], k=10), Fuse("weighted")])
    english = pipeline.search("lava", filters={"lang": "en"})
    assert {c.doc_id for c in english.candidates} <= {"v", "g"} and english.candidates
    recent = pipeline.search("lava", filters={"timestamp": {"gte": "2024-01-01"}})
    assert {c.doc_id for c in recent.candidates} == {"v", "b"}
    with pytest.raises(ValueError, match="unknown filter field 'author'"):
        pipeline.search("lava", filters={"author": "x"})
    own = pipeline.run([Query("lava", filters={"lang": "de"})], filters={"lang": "en"})[0]
    assert {c.doc_id for c in own.candidates} == {"b"}  # a query's own filters win


def test_many_queries_in_one_run_and_unknown_retriever(small_index):
    from crossrank.pipeline import Retrieve

    results = Pipeline([Retrieve(small_index, "bm25", k=5)]).run(["glaciers", "basalt", "the of"])
    assert [r.candidates[0].doc_id if r.candidates else None for r in results] == ["g", "b", None]
    with pytest.raises(ValueError, match="unknown retriever"):
        Pipeline([Retrieve(small_index, "sparse", k=5)]).search("x")


def test_rerank_interpolates_with_the_first_stage_at_the_models_weight(tiny_model_dir, tiny_model_with_fusion_dir):
    from crossrank.evaluate.systems import CosineScorer
    from crossrank.model.cross_encoder import CrossEncoder
    from crossrank.model.interpolation import FirstStageInterpolation

    plain_model = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch")
    model = CrossEncoder.from_pretrained(tiny_model_with_fusion_dir, backend="torch")
    texts = ["a cat sat", "dogs bark loudly", "the stock market fell", "rain in spain", "quantum physics"]
    logits = model.score(["pets"] * len(texts), [Document(t) for t in texts]).logits.astype(float)
    assert len(set(logits.tolist())) == len(texts)
    # The first stage ranks exactly against the cross-encoder, so any weight above 0.5 reverses its order.
    candidates = [Candidate(str(i), str(i), text, score=-logit) for i, (text, logit) in enumerate(zip(texts, logits))]
    by_logit = [str(i) for i in sorted(range(len(texts)), key=lambda i: -logits[i])]

    def run(stage: Rerank) -> list[Candidate]:
        return Pipeline([stage]).run(["pets"], [candidates])[0].candidates

    for plain in (Rerank(plain_model), Rerank(model, first_stage_weight=None), Rerank(model, first_stage_weight=0)):
        out = run(plain)
        assert [c.id for c in out] == by_logit and "rerank_interpolated" not in out[0].scores
        assert "first_stage_weight" not in repr(plain)
    stage = Rerank(model, k=10)
    assert repr(stage) == "Rerank('tiny-bert-fusion', k=10, first_stage_weight=0.75)"
    out = run(stage)
    assert [c.id for c in out] == by_logit[::-1]
    expected = FirstStageInterpolation(0.75).combine(logits, -logits)
    for rank, c in enumerate(out, start=1):
        i = int(c.id)
        assert c.score == c.scores["rerank_interpolated"] == pytest.approx(expected[i])
        assert c.scores["rerank"] == pytest.approx(logits[i]) and "rerank_probability" in c.scores
        assert c.ranks["rerank_interpolated"] == rank and c.ranks["rerank"] == by_logit.index(c.id) + 1
    assert [c.id for c in run(Rerank(plain_model, first_stage_weight=0.75))] == by_logit[::-1]
    assert [c.id for c in run(Rerank(model, first_stage_weight=0.25))] == by_logit  # (1 − 2w)·z(logit) at w < 0.5
    assert Rerank(CosineScorer(None)).interpolation is None  # type: ignore[arg-type]  # scorers ship no weight
    for bad in (1.0, -0.1, "modle", True):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            Rerank(model, first_stage_weight=bad)  # type: ignore[arg-type]
