"""`crossrank bench`: synthetic and dataset inputs, per-variant speed and fidelity, and its CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crossrank.bench import BenchInput, dataset_input, run_bench, synthetic_input
from crossrank.cli import app

VOCABULARY = ["alpha", "beta", "gamma", "delta", "##ing", "[CLS]", "x1", "ok"]


def test_synthetic_input_is_deterministic_and_sized():
    first = synthetic_input(VOCABULARY, queries=3, candidates=5, query_words=4, document_words=10, seed=7)
    again = synthetic_input(VOCABULARY, queries=3, candidates=5, query_words=4, document_words=10, seed=7)
    assert first == again and first.pairs == 15
    words = {w for text in first.queries + [d for docs in first.candidates for d in docs] for w in text.split()}
    assert words <= {"alpha", "beta", "gamma", "delta"}  # no subwords, specials or digits
    assert all(5 <= len(d.split()) <= 15 for docs in first.candidates for d in docs)
    with pytest.raises(ValueError, match="no plain words"):
        synthetic_input(["##a", "[SEP]"])


def test_bench_input_rejects_misaligned_or_empty_lists():
    with pytest.raises(ValueError, match="2 queries but 1"):
        BenchInput(["a", "b"], [["x"]], "t")
    with pytest.raises(ValueError, match="at least one candidate"):
        BenchInput(["a"], [[]], "t")
    with pytest.raises(ValueError, match="at least one query"):
        BenchInput([], [], "t")


def test_run_bench_compares_variants_on_the_same_pairs(tiny_model_dir):
    data = synthetic_input(VOCABULARY, queries=2, candidates=6, document_words=8)
    calls = []
    results = run_bench(data, str(tiny_model_dir), ["torch", "onnx"], repeats=2, on_query=lambda: calls.append(1))
    assert [r.variant for r in results] == ["torch", "onnx"]
    assert len(calls) == 2 * 2 * 2
    assert results[0].tau_vs_reference == pytest.approx(1.0) and results[0].speedup_vs_reference == 1.0
    assert results[1].tau_vs_reference > 0.99  # fp32 ONNX orders exactly like torch
    assert all(r.pairs_per_second > 0 and r.p95_ms >= r.p50_ms > 0 for r in results)
    with pytest.raises(ValueError, match="unknown variant"):
        run_bench(data, str(tiny_model_dir), ["onnx", "tensorrt"])
    with pytest.raises(ValueError, match="repeats"):
        run_bench(data, str(tiny_model_dir), ["onnx"], repeats=0)


def test_dataset_input_reads_a_shipped_run(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) + "\n"
                                                   for i in range(4)))
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t1\n")
    (tmp_path / "runs" / "bm25.trec").write_text("q1 Q0 d2 1 9 x\nq1 Q0 d0 2 8 x\nq1 Q0 d3 3 7 x\nq2 Q0 d1 1 5 x\n")
    data = dataset_input(str(tmp_path), queries=5, candidates=2)
    assert data.queries == ["first", "second"]
    assert data.candidates == [["doc 2", "doc 0"], ["doc 1"]]
    (tmp_path / "runs" / "bm25.trec").unlink()
    with pytest.raises(ValueError, match="ships no runs"):
        dataset_input(str(tmp_path))


def test_bench_cli_prints_a_table_and_writes_json(tiny_model_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", "-m", str(tiny_model_dir), "--queries", "2", "--candidates", "4",
                                      "--variants", "onnx,onnx-int8", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "onnx-int8" in result.stdout and "pairs/s" in result.stdout
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["results"]] == ["onnx", "onnx-int8"] and saved["pairs"] == 8
    bad = CliRunner().invoke(app, ["bench", "-m", str(tiny_model_dir), "--variants", "gpu"])
    assert bad.exit_code == 2 and "unknown variant" in bad.output
