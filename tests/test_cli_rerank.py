"""`crossrank rerank` and `crossrank export` from the shell's point of view."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crossrank.cli import app

runner = CliRunner()


def test_rerank_reads_jsonl_and_plain_lines_and_writes_json_lines(tiny_model_dir, tmp_path):
    from crossrank.model.cross_encoder import CrossEncoder

    source = tmp_path / "docs.jsonl"
    source.write_text('{"id": "a", "text": "vaccines train immunity", "title": "Vaccines"}\nplain line document\n\n'
                      '{"text": "a third one about the immune system"}\n')
    result = runner.invoke(app, ["rerank", "--model", str(tiny_model_dir), "--query", "vaccines",
                                 "--output", "jsonl", "--top-k", "2", str(source)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    documents = [{"id": "a", "text": "vaccines train immunity", "title": "Vaccines"}, "plain line document",
                 {"text": "a third one about the immune system"}]
    expected = CrossEncoder.from_pretrained(tiny_model_dir).rank("vaccines", documents, top_k=2)
    assert [(row["index"], row["document"]) for row in rows] == [(r.index, r.document) for r in expected]
    assert [row["score"] for row in rows] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_rerank_reads_stdin_and_prints_a_table_in_rank_order(tiny_model_dir):
    from crossrank.model.cross_encoder import CrossEncoder

    documents = ["sourdough bread", "stock prices", "whole wheat bread rolls", "interest rates rise"]
    result = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "bread", "--backend", "torch", "-"],
                           input="\n".join(documents) + "\n")
    assert result.exit_code == 0, result.output
    expected = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch").rank("bread", documents)
    assert "windows" in result.stdout
    positions = [result.stdout.index(documents[r.index]) for r in expected]
    assert positions == sorted(positions)  # printed best first, as the engine ranks them


def test_rerank_bad_input_exits_with_a_message(tiny_model_dir, tmp_path):
    empty_query = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "  ", "-"], input="doc\n")
    assert empty_query.exit_code == 2 and "query is empty" in empty_query.output
    missing = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "x", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    no_model = runner.invoke(app, ["rerank", "-m", str(tmp_path / "absent"), "-q", "x", "-"], input="doc\n")
    assert no_model.exit_code == 2 and "not found" in no_model.output
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": \n')
    broken = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "x", str(bad_json)])
    assert broken.exit_code == 2 and "line 2" in broken.output


def test_export_prints_cached_onnx_paths(tiny_model_dir):
    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--int8"])
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert paths[0].endswith("model.onnx") and paths[1].endswith("model.int8.onnx")
