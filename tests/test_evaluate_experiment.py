"""Experiments end to end on a hand-made BEIR folder: pipelines through the real stages and models, depth curve,
failure analysis, TREC/JSON outputs, the HTML report, and the `crossrank eval` command."""

from __future__ import annotations

import base64
import json
import math
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import count_score_calls
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.datasets import BeirDataset, ranked, read_run, write_qrels, write_run
from crossrank.evaluate.depth import rerank_at_depth, usable_depths
from crossrank.evaluate.experiment import Experiment, ExperimentConfig, safe_name
from crossrank.evaluate.metrics import evaluate_run
from crossrank.evaluate.report import markdown_summary, render_html
from crossrank.evaluate.systems import CosineScorer, SystemSpec, interpolated, parse_pipelines, scorer_of
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.embedding import BiEncoder
from crossrank.pipeline import FromRun, Pipeline, Rerank
from crossrank.types import Candidate, Query

TOPICS = ["solar panels convert sunlight into electricity", "bees pollinate flowering plants",
          "the heart pumps blood through arteries", "volcanoes erupt molten rock called lava",
          "glaciers carve valleys as they move", "vaccines train the immune system"]


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 queries × 12 candidates over 40 documents, graded 0-3 judgments, one judged doc outside the run."""
    root = tmp_path_factory.mktemp("beir") / "toy"
    (root / "qrels").mkdir(parents=True)
    rng = random.Random(0)
    docs = {f"d{i}": f"{TOPICS[i % 6]} — note {i} with filler words {rng.random():.3f}" for i in range(40)}
    with (root / "corpus.jsonl").open("w") as handle:
        for doc_id, text in docs.items():
            handle.write(json.dumps({"_id": doc_id, "title": f"title {doc_id}", "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as handle:
        for q, topic in enumerate(TOPICS):
            handle.write(json.dumps({"_id": f"q{q}", "text": topic.split()[0] + " " + topic.split()[-1]}) + "\n")
    qrels, run = {}, {}
    for q in range(6):
        on_topic = [f"d{i}" for i in range(40) if i % 6 == q]
        qrels[f"q{q}"] = {doc: grade for doc, grade in zip(on_topic, (3, 2, 1, 0, 2, 3, 1), strict=False)}
        pool = on_topic[1:] + rng.sample([d for d in docs if d not in on_topic], 12 - len(on_topic[1:]))
        run[f"q{q}"] = {doc: float(12 - rank) + rng.random() for rank, doc in enumerate(rng.sample(pool, 12))}
    write_qrels(qrels, root / "qrels" / "test.tsv")
    write_run(run, root / "runs" / "first.trec")
    return root


@pytest.fixture(scope="module")
def result(beir_dir: Path, tiny_model_dir: Path, minilm_dir: Path):
    dataset = BeirDataset(beir_dir, "test")
    scorers = {"ce": CrossEncoder.from_pretrained(tiny_model_dir, backend="torch"),
               "bi": CosineScorer(BiEncoder.from_pretrained(minilm_dir, backend="torch"))}
    config = ExperimentConfig(depth=10, depths=(5, 10, 50), permutations=200, timing_queries=2, worst=3)
    experiment = Experiment(dataset, {"run": FromRun(dataset.run("first"), dataset.corpus)}, scorers, config,
                            progress=False)
    return experiment.run(parse_pipelines("run,run>>ce,run>>bi")), dataset, scorers


def test_first_stage_row_equals_the_run_evaluated_directly(result) -> None:
    experiment, dataset, _ = result
    expected = evaluate_run(dataset.qrels, dataset.run("first"), experiment.config.measures)
    assert experiment.system("run").means == pytest.approx(expected)
    assert experiment.rel == 2


def test_a_first_stage_that_found_nothing_for_some_queries_is_noted(beir_dir: Path) -> None:
    dataset = BeirDataset(beir_dir, "test")
    partial = {qid: docs for qid, docs in dataset.run("first").items() if qid not in {"q0", "q3"}}
    config = ExperimentConfig(depth=10, depths=(10,), permutations=50, timing_queries=1, curve=False)
    experiment = Experiment(dataset, {"run": FromRun(partial, dataset.corpus)}, {}, config, progress=False)
    result = experiment.run(parse_pipelines("run"))
    assert "first stage 'run' returned no candidates for 2 of 6 queries" in result.notes
    full = Experiment(dataset, {"run": FromRun(dataset.run("first"), dataset.corpus)}, {}, config, progress=False)
    assert not any("no candidates" in note for note in full.run(parse_pipelines("run")).notes)


def test_reranked_rows_are_the_models_own_ranking(result) -> None:
    experiment, dataset, scorers = result
    run = dataset.run("first")
    for name, scorer in (("run>>ce", scorers["ce"]), ("run>>bi", scorers["bi"])):
        system = experiment.system(name)
        for qid, candidates in run.items():
            order = sorted(candidates, key=lambda d: (candidates[d], d), reverse=True)
            top, tail = order[:10], order[10:]
            logits = scorer.score([dataset.queries[qid]] * len(top), [dataset.corpus[d] for d in top]).logits
            assert {d: system.run[qid][d] for d in top} == pytest.approx(dict(zip(top, logits.tolist(), strict=True)),
                                                                         abs=1e-5)
            assert ranked(system.run[qid])[10:] == tail  # below the depth: first-stage order, under the head
        assert system.means == pytest.approx(evaluate_run(dataset.qrels, system.run, experiment.config.measures))


def test_significance_and_win_tie_loss_cover_every_query(result) -> None:
    experiment, _, _ = result
    assert experiment.baseline == "run"
    for measure in experiment.config.measures:
        assert set(experiment.tests[measure]) == {"run>>ce", "run>>bi"}
        test = experiment.tests[measure]["run>>ce"]
        assert test.wins + test.ties + test.losses == 6
        assert 0 < test.randomisation_p <= test.randomisation_p_holm <= 1


def test_depth_curve_reuses_one_scoring_pass(result) -> None:
    experiment, _, _ = result
    assert experiment.curve_system == "run>>ce"
    assert [p.depth for p in experiment.curve] == [5, 10, 12]  # 50 capped at the run's 12 candidates
    at_table_depth = next(p for p in experiment.curve if p.depth == 10)
    assert at_table_depth.quality == pytest.approx(experiment.system("run>>ce").means["nDCG@10"])
    ceilings = [p.recall_ceiling for p in experiment.curve]
    assert ceilings == sorted(ceilings) and ceilings[-1] < 1.0  # one relevant doc per query is never retrieved
    assert all(p.ms_per_query is not None and p.ms_per_query > 0 for p in experiment.curve)


def test_failure_analysis_names_moves_and_unretrieved_documents(result) -> None:
    experiment, _, _ = result
    report = next(r for r in experiment.failures if r.system == "run>>ce")
    assert report.relevant_unretrieved == 6 and report.queries_with_unretrieved == 6  # each q's first on-topic doc
    assert report.hurt  # the random tiny model hurts some queries: the checks below must see them
    for hurt in report.hurt:
        assert hurt.after < hurt.before
        for move in hurt.promoted:
            assert move.rank_after <= 10 and (move.rank_before is None or move.rank_before > 10)
            assert (move.grade or 0) < 2 and move.snippet
        for move in hurt.demoted:
            assert move.grade >= 2 and move.rank_before <= 10


def test_outputs_are_trec_runs_and_json(result, tmp_path: Path) -> None:
    experiment, _, _ = result
    written = experiment.write(tmp_path)
    for system in experiment.systems:
        back = read_run(written[system.name])
        assert set(back) == set(system.run)
        for qid, docs in system.run.items():
            assert back[qid] == pytest.approx(docs, abs=1e-6)
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in data["systems"]] == ["run", "run>>ce", "run>>bi"]
    assert data["tests"]["nDCG@10"]["run>>ce"] == pytest.approx(experiment.tests["nDCG@10"]["run>>ce"].to_dict(),
                                                               nan_ok=True)
    assert len(data["depth_curve"]["points"]) == 3


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        self.tables += tag == "table"


def test_html_report_is_self_contained_and_embeds_png_plots(result) -> None:
    experiment, _, _ = result
    document = render_html(experiment)
    parser = _Collector()
    parser.feed(document)
    parser.close()
    assert len(parser.images) == 3  # bars, depth curve, per-query Δ
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert parser.tables >= 2 and "http" not in document.replace("https://", "")  # no external resources
    summary = markdown_summary(experiment)
    assert "| run>>ce |" in summary and "Rerank depth" in summary


def test_depth_helpers_reject_what_they_cannot_do() -> None:
    assert usable_depths({"q": {str(i): float(i) for i in range(30)}}, (10, 20, 50, 100)) == [10, 20, 30]
    with pytest.raises(ValueError, match="did not score"):
        rerank_at_depth({"q": {"a": 2.0, "b": 1.0}}, {"q": {"a": 0.5}}, 2)
    with pytest.raises(ValueError, match="depth"):
        rerank_at_depth({}, {}, 0)


def test_spec_parsing_errors() -> None:
    assert SystemSpec.parse("hybrid >> ce:mini").name == "hybrid>>ce:mini"
    for bad, message in (("bm26", "first stage"), ("bm25>>xx", "reranker"), ("a>>b>>c", "FIRST"),
                         ("bm25,bm25", "twice"), ("", "no pipelines")):
        with pytest.raises(ValueError, match=message):
            parse_pipelines(bad)


def test_ce_plus_specs_name_the_interpolated_cross_encoder() -> None:
    assert SystemSpec.parse("hybrid >> ce+:mini").name == "hybrid>>ce+:mini"
    assert [s.reranker for s in parse_pipelines("run>>ce,run>>ce+")] == ["ce", "ce+"]
    assert (scorer_of("ce+"), scorer_of("ce+:mini"), scorer_of("ce:mini"), scorer_of("bi")) == (
        "ce", "ce:mini", "ce:mini", "bi")
    assert (interpolated("ce"), interpolated("ce:mini")) == ("ce+", "ce+:mini")
    assert safe_name("hybrid>>ce+:mini") != safe_name("hybrid>>ce:mini")  # their TREC runs must not collide
    with pytest.raises(ValueError, match="reranker must be one of"):
        parse_pipelines("bm25>>bi+")


def test_ce_plus_row_is_the_rerank_stage_at_the_shipped_weight(beir_dir: Path, tiny_model_with_fusion_dir: Path,
                                                                 tiny_model_dir: Path) -> None:
    from crossrank.evaluate.runner import default_pipelines

    dataset = BeirDataset(beir_dir, "test")
    model = CrossEncoder.from_pretrained(tiny_model_with_fusion_dir, backend="torch")
    passes = count_score_calls(model)
    config = ExperimentConfig(depth=10, depths=(5, 10, 50), permutations=50, timing_queries=1, worst=1)
    first = FromRun(dataset.run("first"), dataset.corpus)
    result = Experiment(dataset, {"run": first}, {"ce": model}, config, progress=False).run(
        parse_pipelines("run,run>>ce+,run>>ce"))
    assert passes.count(6 * 12) == 1  # one quality pass at the curve's depth, shared by the ce+ and ce rows
    plus, plain = result.system("run>>ce+"), result.system("run>>ce")
    assert "first_stage_weight=0.75" in plus.pipeline and "first_stage_weight" not in plain.pipeline
    queries = [Query(dataset.queries[qid], qid) for qid in sorted(dataset.qrels)]
    lists = [r.candidates[:10] for r in Pipeline([first]).run(queries)]
    for system, stage in ((plus, Rerank(model, k=10)), (plain, Rerank(model, k=10, first_stage_weight=None))):
        for reranked in Pipeline([stage]).run(queries, lists):
            assert ranked(system.run[reranked.query.id])[:10] == [c.id for c in reranked.candidates]
    assert plus.run != plain.run
    # The curve follows ce+ and scores 12 deep, yet its depth-10 point is the table's row: re-z-scored per depth.
    assert result.curve_system == "run>>ce+"
    assert next(p for p in result.curve if p.depth == 10).quality == pytest.approx(plus.means["nDCG@10"])
    plain_model = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch")
    assert [s.name for s in default_pipelines(True, {"ce": model})] == ["run", "run>>bi", "run>>ce", "run>>ce+"]
    assert [s.name for s in default_pipelines(False, {"ce:b": model, "ce:a": plain_model})] == [
        "bm25", "dense", "hybrid", "hybrid>>ce:a", "hybrid>>ce:b", "hybrid>>ce+:b"]


def test_ce_plus_without_fusion_json_is_a_clear_error(beir_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    dataset = BeirDataset(beir_dir, "test")
    experiment = Experiment(dataset, {"run": FromRun(dataset.run("first"), dataset.corpus)},
                            {"ce": CrossEncoder.from_pretrained(tiny_model_dir, backend="torch")}, progress=False)
    with pytest.raises(ValueError, match="'tiny-bert' has no fusion.json"):
        experiment.run(parse_pipelines("run,run>>ce+"))
    result = CliRunner().invoke(app, ["eval", str(beir_dir), "--run", str(beir_dir / "runs" / "first.trec"),
                                      "--model", str(tiny_model_dir), "--pipelines", "run,run>>ce+",
                                      "--backend", "torch", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "has no fusion.json" in result.output and "use 'ce'" in result.output


def test_experiment_config_and_baseline_errors(beir_dir: Path) -> None:
    with pytest.raises(ValueError, match="depth"):
        ExperimentConfig(depth=0)
    with pytest.raises(ValueError, match="permutations"):
        ExperimentConfig(permutations=0)
    with pytest.raises(ValueError, match="unknown measure"):
        ExperimentConfig(measures=("nDCG@10", "MRR@ten"))
    dataset = BeirDataset(beir_dir, "test")
    experiment = Experiment(dataset, {"run": FromRun(dataset.run("first"), dataset.corpus)}, {}, progress=False)
    with pytest.raises(ValueError, match="baseline"):
        Experiment(dataset, experiment.first_stages, {}, ExperimentConfig(baseline="nope"),
                   progress=False).run(parse_pipelines("run"))
    with pytest.raises(ValueError, match="no reranker"):
        experiment.run(parse_pipelines("run>>ce"))


def test_cli_eval_writes_runs_report_and_summary(beir_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "r.html"
    result = CliRunner().invoke(app, [
        "eval", str(beir_dir), "--run", str(beir_dir / "runs" / "first.trec"), "--model", str(tiny_model_dir),
        "--pipelines", "run,run>>ce", "--depths", "5,10", "--depth", "10", "--permutations", "100",
        "--timing-queries", "1", "--out", str(out), "--report", str(report), "--backend", "torch"])
    assert result.exit_code == 0, result.output
    assert "| run>>ce |" in result.stdout
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["run.trec", "run__ce.trec"]
    assert report.read_text().count("data:image/png;base64,") == 3


def test_evaluating_a_factorised_model_encodes_each_document_once_across_query_batches(
        beir_dir: Path, closed_gated_dir: Path) -> None:
    from crossrank.evaluate.runner import run_evaluation

    said: list[str] = []
    config = ExperimentConfig(depth=12, curve=False, permutations=100, timing_queries=2, query_batch=2)
    run_path = beir_dir / "runs" / "first.trec"
    result = run_evaluation(BeirDataset(beir_dir, "test"), config, run=run_path, pipelines="run,run>>ce",
                            models=[str(closed_gated_dir)], backend="torch", say=said.append, progress=False)
    encoded, recurring = (int(n.replace(",", "")) for n in re.search(
        r"ce: ([\d,]+) segments encoded, ([\d,]+) recurring ones read from memory", "\n".join(said)).groups())
    run = read_run(run_path)
    qids = sorted(run)  # the experiment's query order (the file's)
    batches = [qids[i:i + 2] for i in range(0, len(qids), 2)]
    looked_up = sum(len(batch) + len({d for q in batch for d in run[q]}) for batch in batches)
    documents = {d for ranking in run.values() for d in ranking}
    assert encoded == len(qids) + len(documents)  # every query and document once
    assert recurring == looked_up - encoded > 0  # the latency rows (2 queries) read nothing
    uncached = CrossEncoder.from_pretrained(closed_gated_dir, backend="torch")
    ranked_by_eval = next(s for s in result.systems if s.name == "run>>ce").run
    dataset = BeirDataset(beir_dir, "test")
    for query in qids:
        ids = list(run[query])
        scores = uncached.score([dataset.queries[query]] * len(ids), [dataset.corpus[d] for d in ids]).logits
        assert ranked(ranked_by_eval[query])[:3] == [ids[i] for i in np.argsort(-scores, kind="stable")[:3]]


def test_cli_without_a_cross_encoder_says_so_and_evaluates_the_rest(beir_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crossrank.model.checkpoint.BUNDLED_MODELS_DIR", tmp_path / "no-bundled-models")
    result = CliRunner().invoke(app, ["eval", str(beir_dir), "--run", str(beir_dir / "runs" / "first.trec"),
                                      "--pipelines", "run", "--out", str(tmp_path), "--permutations", "50"])
    assert result.exit_code == 0, result.output
    assert "| run (baseline) |" in result.stdout
    result = CliRunner().invoke(app, ["eval", str(beir_dir), "--run", str(beir_dir / "runs" / "first.trec"),
                                      "--pipelines", "run,run>>ce", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no cross-encoder evaluated" in result.output
    assert "cross-encoders loaded are none" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "dev"], "no split 'dev'"),
    (["--run", "missing.trec"], "no such run file"),
    (["--pipelines", "run"], "needs --run"),
    (["--pipelines", "bogus"], "first stage must be one of"),
    (["--measures", "nDCG@x", "--pipelines", "run", "--run", "RUN"], "unknown measure"),
    (["--depths", "10,x"], "comma-separated integers"),
])
def test_cli_bad_input_is_a_clear_error(beir_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [str(beir_dir / "runs" / "first.trec") if a == "RUN" else a for a in args]
    result = CliRunner().invoke(app, ["eval", str(beir_dir), "--out", str(tmp_path), *args])
    assert result.exit_code != 0
    assert message in result.output


@pytest.mark.shared
def test_dl20_shipped_bm25_run_through_the_experiment_gives_published_ndcg(shared_datasets: Path) -> None:
    dataset = BeirDataset(shared_datasets / "trec-dl-2020", "test")
    experiment = Experiment(dataset, {"run": FromRun(dataset.run("bm25-top100"), dataset.corpus)}, {},
                            ExperimentConfig(permutations=10), progress=False)
    row = experiment.run(parse_pipelines("run")).system("run")
    assert round(row.means["nDCG@10"], 4) == 0.4796
    assert len(row.run) == 54


@pytest.mark.slow
def test_full_retrieval_builds_the_corpus_index_once_and_ranks_through_it(beir_dir: Path, tiny_model_dir: Path,
                                                                          tmp_path: Path) -> None:
    from crossrank.evaluate.corpus_index import COMPLETE, index_path
    from crossrank.evaluate.runner import run_evaluation
    from crossrank.store.index import IndexConfig

    dataset = BeirDataset(beir_dir, "test")
    config = ExperimentConfig(depth=10, depths=(5, 10), permutations=100, timing_queries=1)
    result = run_evaluation(dataset, config, pipelines="bm25,dense,hybrid,bm25>>ce", models=[str(tiny_model_dir)],
                            backend="torch", say=lambda _: None, progress=False)
    marker = index_path(dataset, IndexConfig()) / COMPLETE
    built = marker.stat().st_mtime_ns
    assert [s.name for s in result.systems] == ["bm25", "dense", "hybrid", "bm25>>ce"]
    for system in result.systems:
        assert set(system.run) == set(dataset.qrels) and all(system.run.values())
        assert set().union(*system.run.values()) <= set(dataset.corpus)  # document ids, not passage ids
    # Topic words are shared by on-topic documents only, so lexical and dense retrieval both find them.
    assert result.system("bm25").means["nDCG@10"] > 0.5 and result.system("dense").means["nDCG@10"] > 0.5
    for qid, candidates in result.system("bm25").run.items():  # BM25 returns only documents sharing a term
        reranked = ranked(result.system("bm25>>ce").run[qid])
        assert set(reranked[:10]) == set(ranked(candidates)[:10]) and reranked[10:] == ranked(candidates)[10:]
    run_evaluation(dataset, config, pipelines="dense", say=lambda _: None, progress=False)
    assert marker.stat().st_mtime_ns == built  # cached, not rebuilt
    bm25_only = run_evaluation(dataset, config, pipelines="bm25", say=lambda _: None, progress=False)
    assert (index_path(dataset, IndexConfig(dense=False)) / COMPLETE).is_file()  # no corpus embedding needed
    assert bm25_only.system("bm25").run == result.system("bm25").run


def test_depth_curve_by_hand_with_passages_collapsed_to_documents() -> None:
    from crossrank.evaluate.depth import depth_curve

    qrels = {"q": {"a": 1, "b": 1}}
    # First stage: passages a#0 (rank 1), x#0, y#0, b#0 (rank 4), a#1; the reranker loves b and a's 2nd passage.
    first = {"q": {"a#0": 5.0, "x#0": 4.0, "y#0": 3.0, "b#0": 2.0, "a#1": 1.0}}
    scores = {"q": {"a#0": 0.1, "x#0": 0.5, "y#0": 0.4, "b#0": 0.9, "a#1": 0.95}}

    def collapse(run: dict) -> dict:
        out: dict = {}
        for qid, docs in run.items():
            for pid, score in docs.items():
                out.setdefault(qid, {})[pid.split("#")[0]] = max(score, out.get(qid, {}).get(pid.split("#")[0], -1e9))
        return out

    points = depth_curve(qrels, first, scores, depths=(1, 3, 5), measure="P@1", collapse=collapse)
    assert [(p.depth, p.quality, p.recall_ceiling) for p in points] == [(1, 1.0, 0.5), (3, 0.0, 0.5), (5, 1.0, 1.0)]


class _TiedIndex:
    """Two retrievers that never agree: bm25 finds z1..z5, dense a1..a5, so RRF ties every zN with aN."""

    def retrieve(self, retriever: str, queries, k: int):
        prefix = "z" if retriever == "bm25" else "a"
        return [[Candidate(f"{prefix}{r}", f"{prefix}{r}", f"passage {prefix}{r} about {q.text}",
                           score=10.0 - r, scores={retriever: 10.0 - r}, ranks={retriever: r})
                 for r in range(1, 6)][:k] for q in queries]


class _LengthScorer:
    """A pair scorer that ranks by document length, recording which documents it was asked about."""

    name = "length"

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def score(self, queries, documents):
        from crossrank.model.cross_encoder import PairScores

        self.seen |= {d.id for d in documents}
        logits = np.array([float(len(d.text) % 3) for d in documents], dtype=np.float32)
        return PairScores(logits, logits, np.ones(len(documents), dtype=np.int64))


def test_search_and_eval_rerank_the_same_top_k_when_rrf_ties(beir_dir: Path) -> None:
    from crossrank.pipeline import Fuse, Retrieve

    dataset = BeirDataset(beir_dir, "test")
    hybrid = Pipeline([Retrieve(_TiedIndex(), ["bm25", "dense"], k=5), Fuse("rrf")])
    eval_scorer, search_scorer = _LengthScorer(), _LengthScorer()
    config = ExperimentConfig(depth=3, depths=(3,), permutations=10, timing_queries=1, curve=False)
    result = Experiment(dataset, {"hybrid": hybrid}, {"ce": eval_scorer}, config, progress=False).run(
        parse_pipelines("hybrid,hybrid>>ce"))
    search = hybrid >> Rerank(search_scorer, k=3)
    for qid in sorted(dataset.qrels):
        searched = search.search(Query(dataset.all_queries[qid], qid))
        assert ranked(result.system("hybrid>>ce").run[qid])[:3] == [c.id for c in searched.candidates]
        first = ranked(result.system("hybrid").run[qid])
        assert first[:3] == ["a1", "z1", "a2"]  # ties in the first stage's order: best rank, then id
    assert eval_scorer.seen == search_scorer.seen == {"a1", "z1", "a2"}


def test_a_run_of_equal_scores_keeps_its_file_order(tmp_path: Path) -> None:
    from crossrank.types import Document

    # All scores equal; the rank column orders them, and the lines themselves are not in rank order.
    path = tmp_path / "equal.trec"
    path.write_text("q Q0 d2 2 0.0 t\nq Q0 d3 1 0.0 t\nq Q0 d1 3 0.0 t\nq Q0 d9 4 -1.0 t\n")
    run = read_run(path)
    assert ranked(run["q"]) == ["d3", "d2", "d1", "d9"]
    corpus = {d: Document(f"text {d}", id=d) for d in ("d1", "d2", "d3", "d9")}
    result = Pipeline([FromRun(run, corpus)]).search(Query("x", "q"))
    assert [c.id for c in result.candidates] == ["d3", "d2", "d1", "d9"]
    # Scored in that order too: the one relevant document is first (trec_eval's id order would put it third).
    assert evaluate_run({"q": {"d3": 1}}, run, ("RR@10",))["RR@10"] == 1.0
    write_run(run, tmp_path / "back.trec")
    assert ranked(read_run(tmp_path / "back.trec")["q"]) == ["d3", "d2", "d1", "d9"]


def test_failure_analysis_by_hand() -> None:
    from crossrank.evaluate.failures import analyse
    from crossrank.types import Document

    qrels = {"q": {"good": 2, "fine": 1}, "p": {"x": 1, "lost": 1}}
    first = {"q": {"good": 3.0, "fine": 2.0, "junk": 1.0}, "p": {"x": 1.0}}
    system = {"q": {"junk": 3.0, "fine": 2.0, "good": 1.0}, "p": {"x": 1.0}}
    corpus = {d: Document(f"text of {d}", id=d) for d in ("good", "fine", "junk", "x")}
    report = analyse(qrels, {"q": "query q", "p": "query p"}, corpus, first, system, {"q": 1.0, "p": 0.6},
                     {"q": 0.4, "p": 0.6}, system="s", baseline="b", cutoff=1, rel=1)
    [hurt] = report.hurt  # p did not move: only q is listed
    assert (hurt.qid, hurt.before, hurt.after) == ("q", 1.0, 0.4)
    assert [(m.doc_id, m.grade, m.rank_before, m.rank_after) for m in hurt.promoted] == [("junk", None, 3, 1)]
    assert [(m.doc_id, m.grade, m.rank_before, m.rank_after) for m in hurt.demoted] == [("good", 2, 1, 3)]
    assert (report.relevant_total, report.relevant_unretrieved, report.queries_with_unretrieved) == (4, 1, 1)
    assert report.unretrieved_examples[0]["doc_id"] == "lost"
    assert report.unretrieved_examples[0]["snippet"] == "(not in corpus)"


def test_context_measures_count_documents_and_tokens() -> None:
    from crossrank.context import Context, Snippet
    from crossrank.evaluate.context import measure

    def snip(doc: str, tokens: int) -> Snippet:
        return Snippet(1, doc, doc, "", "t", 0, 1, 0.0, 0.5, 0.5, tokens)

    context = Context("q", [snip("a", 30), snip("b", 10), snip("a", 20)], 100, 62, "estimate", "sentence", "score",
                      0.0, 0.0)
    assert measure(context, {"a", "c"}) == {"recall": 0.5, "precision": 50 / 60, "tokens": 62.0}
    empty = measure(Context("q", [], 100, 0, "estimate", "sentence", "score", 0.0, 0.0, abstained=True), {"a"})
    assert empty["recall"] == 0.0 and math.isnan(empty["precision"])


def test_eval_context_refuses_a_first_stage_that_found_nothing(tiny_model_dir: Path) -> None:
    from crossrank.context import ContextSelector
    from crossrank.evaluate.context import ContextEvaluation

    evaluation = ContextEvaluation(ContextSelector(CrossEncoder.from_pretrained(tiny_model_dir, backend="torch")),
                                   progress=False)
    with pytest.raises(ValueError, match="no candidates for any of its 2 judged queries"):
        evaluation.run("toy", "test", {"q0": "a", "q1": "b"}, {"q0": []}, {"q0": {"d0": 1}, "q1": {"d1": 2}})


def test_a_first_stage_ordered_by_the_judgments_is_called_out() -> None:
    from crossrank.evaluate.context import judged_order_note

    def lists(relevant_first: int) -> dict[str, list[Candidate]]:
        return {f"q{i}": [Candidate(f"{d}", f"{d}", "text") for d in
                          (["r", "n1", "n2"] if i < relevant_first else ["n1", "r", "n2"])] for i in range(20)}

    relevant = {f"q{i}": {"r"} for i in range(20)}
    assert "ranks every relevant candidate first on 20 of 20 queries" in judged_order_note(lists(20), relevant)[0]
    assert judged_order_note(lists(18), relevant) == []  # 90 %: a strong first stage, not an oracle
    assert judged_order_note({q: c for q, c in list(lists(20).items())[:5]}, relevant) == []  # too few to tell


def test_cli_eval_context_reports_every_budget_within_budget(beir_dir: Path, tiny_model_dir: Path,
                                                              minilm_dir: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "context.json", tmp_path / "context.html"
    result = CliRunner().invoke(app, [
        "eval-context", str(beir_dir), "--run", "first", "--model", str(tiny_model_dir), "--budgets", "24,96",
        "--min-probability", "0", "--tokenizer", str(minilm_dir), "--permutations", "50", "-o", str(out),
        "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert "context vs first-stage" in result.stdout and "abstention:" in result.stdout
    data = json.loads(out.read_text())
    assert data["first_stage"] == "run first" and [b["budget"] for b in data["budgets"]] == [24, 96]
    assert data["notes"] == []  # the toy run is shuffled, not ordered by the judgments
    for budget in data["budgets"]:
        for system, by_measure in budget["per_query"].items():
            assert len(by_measure["recall"]) == data["queries"] == 6, system
            assert all(0 <= r <= 1 for r in by_measure["recall"].values())
            assert all(t <= budget["budget"] for t in by_measure["tokens"].values())
        assert set(budget["tests"]) == {"context vs first-stage", "context vs ce-passages"}
    small, large = (b["means"]["first-stage"]["recall"] for b in data["budgets"])
    assert large > small  # more budget, more evidence
    assert data["answered"] == 1.0  # floor 0: every answerable query gets context
    assert report.read_text().count("data:image/png;base64,") == 1
