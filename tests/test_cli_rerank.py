"""`crossrank rerank` and `crossrank export` from the shell's point of view."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from crossrank.cli import app

runner = CliRunner()


def test_rerank_reads_json_and_plain_lines_and_writes_json_lines(tiny_model_dir, tmp_path):
    from crossrank.model.cross_encoder import CrossEncoder

    source = tmp_path / "docs.txt"  # plain text: one document per line, a JSON object line read as one
    source.write_text('{"id": "a", "text": "vaccines train immunity", "title": "Vaccines"}\nplain line document\n\n'
                      '{"text": "a third one about the immune system"}\n')
    result = runner.invoke(app, ["rerank", "--model", str(tiny_model_dir), "--query", "vaccines",
                                 "--format", "jsonl", "--top-k", "2", str(source)])
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


def test_bf16_runs_the_torch_backend_and_excludes_int8(tiny_model_dir):
    from crossrank.model.cross_encoder import CrossEncoder

    documents = ["sourdough bread", "stock prices", "whole wheat bread rolls"]
    result = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "bread", "--bf16", "--format", "jsonl",
                                 "-"], input="\n".join(documents) + "\n")
    assert result.exit_code == 0, result.output
    expected = CrossEncoder.from_pretrained(tiny_model_dir, backend="torch", quantize="bf16").rank("bread", documents)
    assert [json.loads(line)["score"] for line in result.stdout.splitlines()] == [r.score for r in expected]
    both = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "bread", "--bf16", "--int8", "-"],
                         input="bread\n")
    assert both.exit_code == 2 and "--int8 and --bf16 exclude each other" in both.output


def test_export_prints_cached_onnx_paths(tiny_model_dir):
    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--int8"])
    assert result.exit_code == 0, result.output
    paths = result.stdout.split()
    assert paths[0].endswith("model.onnx") and paths[1].endswith("model.int8.onnx")


def test_rerank_input_is_read_by_the_ingest_rules_or_refused_in_one_line(tiny_model_dir, tmp_path):
    base = ["rerank", "-m", str(tiny_model_dir), "-q", "bread", "--backend", "torch"]
    binary = tmp_path / "image.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    strict = tmp_path / "docs.jsonl"
    strict.write_text('{"text": "rye bread"}\nplain line\n')
    cases = {
        str(binary): (2, "is not text"),
        str(empty): (1, "holds no documents"),
        str(tmp_path): (2, "is a folder"),
        str(strict): (2, "line 2: invalid JSON"),
    }
    for source, (code, message) in cases.items():
        result = runner.invoke(app, [*base, source])
        assert result.exit_code == code and message in result.output, (source, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_rerank_reads_csv_by_its_header_and_shows_ids_titles_and_whole_words(tiny_model_dir, tmp_path):
    source = tmp_path / "docs.csv"
    long_text = "sourdough " * 30 + "ending"
    source.write_text(f"id,title,text\nd1,Bread,{long_text}\nd2,Markets,stock prices fell\n")
    result = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "bread", "--backend", "torch",
                                 "--format", "jsonl", str(source)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(row["index"] for row in rows) == [0, 1]  # the header is not a document
    table = runner.invoke(app, ["rerank", "-m", str(tiny_model_dir), "-q", "bread", "--backend", "torch",
                                str(source)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "d1" in table.stdout and "Bread: sourdough" in table.stdout and "…" in table.stdout
    assert "ending" not in table.stdout and "sourdo…" not in table.stdout  # cut between words, with an ellipsis


def test_snippet_cuts_between_words():
    from crossrank.cli.common import snippet

    assert snippet("short  text\nhere", 40) == "short text here"
    assert snippet("alpha beta gamma delta", 14) == "alpha beta…"
    assert snippet("x" * 30, 10) == "x" * 9 + "…"


def test_export_prints_no_library_warnings(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSRANK_CACHE", str(tmp_path / "cache"))  # a first export, with all its library chatter
    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--int8"])
    assert result.exit_code == 0, result.output
    assert "exporting tiny-bert to ONNX once" in result.output
    for noise in ("Warning", "warn", "http", "Loading"):
        assert noise not in result.output, result.output


def test_serve_with_a_bad_model_says_so_in_one_line(tmp_path):
    for model, message in ((tmp_path / "absent", "not found"), (tmp_path, "no config.json")):
        result = runner.invoke(app, ["serve", "--model", str(model), "--port", "1"])
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_serve_says_what_its_index_root_holds_and_refuses_a_file(tmp_path):
    from crossrank.cli.serve import describe_index_root
    from crossrank.store import Index, IndexConfig

    assert "does not exist yet" in describe_index_root(tmp_path / "typo")
    assert describe_index_root(tmp_path) == f"0 indexes under {tmp_path}"
    Index.create(tmp_path / "docs", IndexConfig(dense=False)).close()
    (tmp_path / "notes").mkdir()  # not an index: not counted
    assert describe_index_root(tmp_path) == f"1 index under {tmp_path}: docs"
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["serve", "--index-root", str(tmp_path / "file"), "--port", "1"])
    assert result.exit_code == 2 and "is not a folder" in result.output and "Traceback" not in result.output


def test_serve_says_which_precision_auto_chose_and_when_fp32_leaves_speed_unused(monkeypatch):
    from crossrank.cli.serve import precision_line
    from crossrank.model.backends import cpu_features

    monkeypatch.setattr(cpu_features, "cpu_has_amx", lambda: True)
    assert precision_line("auto", None) == "reranking with torch bf16 (auto: this CPU has AMX tiles)"
    assert "--backend auto serves more than twice" in precision_line("onnx", None)
    assert precision_line("auto", "int8") == "reranking with onnx int8"
    monkeypatch.setattr(cpu_features, "cpu_has_amx", lambda: False)
    assert precision_line("auto", None) == "reranking with onnx fp32 (auto: no AMX tiles here)"
    assert precision_line("torch", None) == "reranking with torch fp32"


def test_json_logs_carry_no_ansi_copy_of_the_message():
    import logging

    from crossrank.server.logs import JsonFormatter

    record = logging.makeLogRecord({"msg": "GET / 200", "color_message": "\x1b[1mGET\x1b[0m / 200", "path": "/"})
    entry = json.loads(JsonFormatter().format(record))
    assert entry["msg"] == "GET / 200" and entry["path"] == "/" and "color_message" not in entry


def test_cli_logging_survives_the_runner_closing_its_stderr(capsys):
    import logging

    runner.invoke(app, ["info", "/nonexistent"])  # installs crossrank's stderr handler; the runner then closes it
    logging.getLogger("crossrank.server").info("request after the command")
    captured = capsys.readouterr()
    assert "Logging error" not in captured.err and "request after the command" in captured.err
