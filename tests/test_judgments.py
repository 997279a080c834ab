"""Relevance judgments stored in an index: durable appends, latest-wins reads, the judge-combining rule, TREC
export, and the judged BEIR folder that eval, train and ltr read (`crossrank.judgments`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.datasets import parse_dataset_spec, read_qrels
from crossrank.judgments import GRADES, Judgment, JudgmentStore, judged_dataset, query_id
from crossrank.store import Index, IndexConfig
from crossrank.types import Document

LONG = " ".join(f"Sentence {i} says the zebra{i} grazes near river {i % 7}." for i in range(40))
DOCS = [Document(LONG, title="Zebras", id="long"),
        Document("Lions hunt zebras at night on the savanna.", title="Lions", id="lions"),
        Document("Penguins live in the southern hemisphere.", id="penguins"),
        Document("Rivers carry water to the sea.", id="rivers")]


@pytest.fixture
def index_dir(tmp_path: Path, tiny_index_config: IndexConfig) -> Path:
    path = tmp_path / "index"
    with Index.create(path, tiny_index_config) as index:
        index.add(DOCS)
        index.commit()
    return path


@pytest.fixture
def store(index_dir: Path) -> JudgmentStore:
    return JudgmentStore(index_dir)


def lines(store: JudgmentStore, judge: str) -> list[str]:
    return store.path(judge).read_text(encoding="utf-8").splitlines()


def test_query_id_is_stable_and_whitespace_insensitive():
    assert query_id("zebra  habitat\n") == query_id(" zebra habitat") == "q-" + query_id("zebra habitat")[2:]
    assert re.fullmatch(r"q-[0-9a-f]{12}", query_id("zebra habitat"))
    assert query_id("Zebra habitat") != query_id("zebra habitat")  # case kept
    assert GRADES == {"not": 0, "partly": 1, "relevant": 2}


def test_record_and_read_back_with_timestamps(store: JudgmentStore):
    before = datetime.now(UTC).replace(microsecond=0)
    recorded = store.record("alice", "  where do  zebras live ", "long", 2, passage_id="long#1")
    after = datetime.now(UTC)
    assert recorded == Judgment("alice", "where do zebras live", query_id("where do zebras live"), "long", 2,
                                recorded.time, "long#1")
    assert before <= datetime.fromisoformat(recorded.time) <= after + timedelta(seconds=1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", recorded.time)
    assert store.judgments() == [recorded]
    assert json.loads(lines(store, "alice")[0]) == recorded.to_dict()
    assert store.path("alice") == store.index_path / "judgments" / "alice.jsonl"


def test_latest_judgment_wins_and_filters(store: JudgmentStore):
    store.record("alice", "zebra", "long", 0)
    store.record("alice", "zebra", "lions", 1)
    latest = store.record("alice", "zebra", "long", 2)
    bob = store.record("bob", "penguins", "penguins", 2)
    assert len(lines(store, "alice")) == 3  # nothing is rewritten: the history stays
    assert [(j.doc_id, j.grade) for j in store.judgments("alice")] == [("lions", 1), ("long", 2)]
    assert latest in store.judgments()
    assert store.judgments("bob") == [bob] == store.judgments(query=" penguins ")
    assert store.judgments("carol") == [] and store.judges() == ["alice", "bob"]


def test_judges_combine_by_low_median(store: JudgmentStore):
    for judge, grade in (("a", 2), ("b", 0), ("c", 1)):
        store.record(judge, "zebra", "long", grade)
    store.record("a", "zebra", "lions", 2)
    store.record("b", "zebra", "lions", 0)  # two judges disagreeing: the lower grade
    store.record("a", "zebra", "rivers", 1)  # one judge alone: their grade
    texts, qrels = store.qrels()
    qid = query_id("zebra")
    assert texts == {qid: "zebra"}
    assert qrels == {qid: {"long": 1, "lions": 0, "rivers": 1}}
    assert store.qrels("a")[1] == {qid: {"long": 2, "lions": 2, "rivers": 1}}


def test_a_torn_last_line_is_skipped_and_later_records_still_work(store: JudgmentStore):
    first = store.record("alice", "zebra", "long", 2)
    line = (json.dumps(store.record("alice", "lion", "lions", 1).to_dict()) + "\n").encode()
    with store.path("alice").open("ab") as handle:
        handle.write(line[: len(line) // 2])  # a crash in the middle of a write
    with pytest.warns(UserWarning, match=r"alice\.jsonl: skipped unreadable line\(s\) 3"):
        assert [j.doc_id for j in store.judgments()] == ["long", "lions"]
    later = store.record("alice", "penguin", "penguins", 0)
    with pytest.warns(UserWarning, match="line"):
        assert store.judgments() == [first, store.judgments("alice")[1], later]
    assert len(lines(store, "alice")) == 4  # the torn fragment was ended, the new judgment has its own line


def test_concurrent_writers_in_several_processes_lose_nothing(store: JudgmentStore):
    script = ("import sys; from crossrank.judgments import JudgmentStore\n"
              "store = JudgmentStore(sys.argv[1])\n"
              "for i in range(50): store.record('crowd', f'query {sys.argv[2]}', f'doc{i}', i % 3)\n")
    workers = [subprocess.Popen([sys.executable, "-c", script, str(store.index_path), str(n)]) for n in range(4)]
    assert [worker.wait(timeout=60) for worker in workers] == [0] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one torn or interleaved line
        recorded = store.judgments("crowd")
    assert len(recorded) == 200 and len(lines(store, "crowd")) == 200
    assert {(j.query, j.doc_id) for j in recorded} == {(f"query {n}", f"doc{i}") for n in range(4) for i in range(50)}


@pytest.mark.parametrize(("args", "message"), [
    (("al ice", "q", "long", 1), "judge name"),
    (("", "q", "long", 1), "judge name"),
    (("a" * 65, "q", "long", 1), "judge name"),
    (("../x", "q", "long", 1), "judge name"),
    (("alice", "   ", "long", 1), "query must be a non-blank"),
    (("alice", "q" * 10_001, "long", 1), "at most 10000"),
    (("alice", "q", " ", 1), "doc_id"),
    (("alice", "q", "two words", 1), "doc_id"),
    (("alice", "q", "long", 3), "grade must be an integer 0-2"),
    (("alice", "q", "long", -1), "grade"),
    (("alice", "q", "long", True), "grade"),
    (("alice", "q", "long", 1.0), "grade"),
    (("alice", "q", "long", "2"), "grade"),
])
def test_bad_input_is_refused_and_writes_nothing(store: JudgmentStore, args, message):
    with pytest.raises(ValueError, match=message):
        store.record(*args)
    assert not store.directory.exists()


def test_recording_needs_an_index(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no crossrank index"):
        JudgmentStore(tmp_path).record("alice", "q", "d", 1)
    assert not (tmp_path / "judgments").exists()


def test_trec_export(store: JudgmentStore, tmp_path: Path):
    store.record("alice", "zebra", "long", 2)
    store.record("alice", "zebra", "lions", 0)
    store.record("bob", "penguin", "penguins", 1)
    qz, qp = query_id("zebra"), query_id("penguin")
    expected = "".join(sorted([f"{qz} 0 lions 0\n", f"{qz} 0 long 2\n", f"{qp} 0 penguins 1\n"]))
    assert store.trec_text() == expected
    store.write_trec(tmp_path / "qrels.txt", judge="bob")
    assert (tmp_path / "qrels.txt").read_text() == f"{qp} 0 penguins 1\n"
    assert read_qrels(tmp_path / "qrels.txt") == {qp: {"penguins": 1}}


def test_judged_dataset_stitches_documents_caches_and_rebuilds(store: JudgmentStore, index_dir: Path):
    with Index.open(index_dir) as index:
        assert len(index.passages("long")) > 3  # several overlapping passages
    store.record("alice", "zebra grazing", "long", 2)
    store.record("alice", "zebra grazing", "penguins", 0)
    dataset = judged_dataset(index_dir)
    assert dataset.split == "judgments" and dataset.source_index == index_dir and dataset.name == "index"
    corpus = dataset.corpus
    assert set(corpus) == {d.id for d in DOCS}
    assert corpus["long"].text == LONG and corpus["long"].title == "Zebras"  # overlaps removed exactly
    assert corpus["lions"].text == DOCS[1].text
    qid = query_id("zebra grazing")
    assert dataset.queries == {qid: "zebra grazing"} and dataset.qrels == {qid: {"long": 2, "penguins": 0}}

    stamp = (dataset.path / "corpus.jsonl").stat().st_mtime_ns
    again = judged_dataset(index_dir)
    assert again.path == dataset.path and (again.path / "corpus.jsonl").stat().st_mtime_ns == stamp  # cached

    store.record("bob", "zebra grazing", "long", 0)
    rebuilt = judged_dataset(index_dir)
    assert rebuilt.path != dataset.path and rebuilt.qrels == {qid: {"long": 0, "penguins": 0}}
    assert judged_dataset(index_dir, "alice").qrels == dataset.qrels
    assert parse_dataset_spec(f"{index_dir}:judgments@bob").qrels == {qid: {"long": 0}}
    assert parse_dataset_spec(f"{index_dir}:judgments").path == rebuilt.path


def test_judged_dataset_leaves_out_deleted_documents(store: JudgmentStore, index_dir: Path):
    store.record("alice", "rivers", "rivers", 2)
    store.record("alice", "rivers", "lions", 1)
    with Index.open(index_dir, writable=True) as index:
        index.delete(["lions"])
        index.commit()
    assert judged_dataset(index_dir).qrels == {query_id("rivers"): {"rivers": 2}}


def test_no_judgments_is_a_clear_error(index_dir: Path, store: JudgmentStore):
    with pytest.raises(ValueError, match=r"has no judgments.*/ui.*POST /indexes/index/judgments"):
        judged_dataset(index_dir)
    store.record("alice", "q", "long", 1)
    with pytest.raises(ValueError, match="no judgments by 'bob'"):
        parse_dataset_spec(f"{index_dir}:judgments@bob")


def test_eval_on_an_index_with_judgments(store: JudgmentStore, index_dir: Path, tmp_path: Path):
    store.record("alice", "zebra7 grazes", "long", 2)
    store.record("alice", "zebra7 grazes", "lions", 0)
    store.record("bob", "penguins hemisphere", "penguins", 2)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(index_dir), "--qrels", "judgments", "--pipelines", "bm25",
                                      "--permutations", "10", "--no-curve", "--timing-queries", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    texts = {query_id("zebra7 grazes"): "zebra7 grazes", query_id("penguins hemisphere"): "penguins hemisphere"}
    assert data["dataset"] == "index" and data["split"] == "judgments" and data["query_text"] == texts
    [bm25] = data["systems"]
    assert set(bm25["per_query"]["nDCG@10"]) == set(texts)
    assert bm25["means"]["nDCG@10"] == 1.0  # both relevant documents are BM25's first hit
    run = (out / "runs" / "bm25.trec").read_text().split()
    assert {"long", "penguins"} <= set(run)  # document ids of the index itself

    result = CliRunner().invoke(app, ["eval", str(index_dir), "--qrels", "judgments@bob", "--pipelines", "bm25",
                                      "--permutations", "10", "--no-curve", "--out", str(tmp_path / "bob")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "bob" / "results.json").read_text())["queries"] == 1


def test_eval_refuses_dense_on_a_bm25_only_index(tmp_path: Path, tiny_index_config: IndexConfig):
    path = tmp_path / "bm25-only"
    with Index.create(path, IndexConfig(**{**tiny_index_config.__dict__, "dense": False})) as index:
        index.add(DOCS)
        index.commit()
    JudgmentStore(path).record("alice", "lions", "lions", 2)
    result = CliRunner().invoke(app, ["eval", str(path), "--qrels", "judgments", "--pipelines", "dense",
                                      "--permutations", "10", "--no-curve", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "has none" in result.output


def test_judgments_cli_exports_and_refuses_bad_input(store: JudgmentStore, index_dir: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["judgments", str(index_dir)])
    assert result.exit_code == 2 and "error:" in result.output and "no judgments" in result.output
    store.record("alice", "zebra", "long", 2)
    store.record("bob", "zebra", "long", 0)
    store.record("bob", "lions", "lions", 1)
    result = runner.invoke(app, ["judgments", str(index_dir)])
    assert result.exit_code == 0, result.output
    assert result.stdout == store.trec_text()
    assert "2 judges, 2 queries, 3 judgments" in result.stderr
    out = tmp_path / "alice.qrels"
    result = runner.invoke(app, ["judgments", str(index_dir), "--judge", "alice", "--out", str(out)])
    assert result.exit_code == 0 and result.stdout == ""
    assert out.read_text() == f"{query_id('zebra')} 0 long 2\n" and "1 judge, 1 query, 1 judgment" in result.stderr
    for args, message in (([str(index_dir), "--judge", "carol"], "no judge 'carol'"),
                          ([str(tmp_path)], "no crossrank index")):
        result = runner.invoke(app, ["judgments", *args])
        assert result.exit_code == 2 and result.stderr.strip().startswith("error:") and message in result.stderr


def test_train_on_an_index_judgments(store: JudgmentStore, index_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    store.record("alice", "zebra grazing river", "long", 2)
    store.record("alice", "lions hunting", "lions", 2)
    store.record("alice", "lions hunting", "rivers", 0)
    out = tmp_path / "model"
    result = CliRunner().invoke(app, ["train", "--base", str(tiny_model_dir), "--train", f"{index_dir}:judgments",
                                      "--steps", "2", "--max-length", "128", "--group-size", "4",
                                      "--lists-per-step", "2", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


def test_ltr_features_on_an_index_judgments(store: JudgmentStore, index_dir: Path, tmp_path: Path):
    store.record("alice", "lions hunting zebras", "lions", 2)
    store.record("alice", "lions hunting zebras", "long", 0)
    out = tmp_path / "features.tsv"
    result = CliRunner().invoke(app, ["ltr", "features", f"{index_dir}:judgments", "--out", str(out),
                                      "--model", "none", "--no-dense"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in out.read_text().splitlines()[2:]]
    assert {(row[1], row[2]) for row in rows} >= {("lions", "2.0"), ("long", "0.0")}


def test_default_pipelines_follow_what_the_index_offers():
    from crossrank.evaluate.runner import default_pipelines

    ce = object()  # a scorer without a shipped interpolation
    assert [s.name for s in default_pipelines(False, {"ce": ce}, ["bm25"])] == ["bm25", "bm25>>ce"]
    assert [s.name for s in default_pipelines(False, {"ce": ce}, ["bm25", "dense"])] == [
        "bm25", "dense", "hybrid", "hybrid>>ce"]
