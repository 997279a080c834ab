"""`crossrank index | search | delete | info` end to end, and their errors (clear messages, no tracebacks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossrank.cli import app

runner = CliRunner()


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "owls.md").write_text("# Owls\n\nOwls hunt at night and fly silently.")
    (docs / "bees.txt").write_text("Bees make honey and pollinate flowers.")
    (docs / "empty.txt").write_text("")
    (docs / "data.bin").write_bytes(b"\x00\x01")
    (docs / "items.jsonl").write_text(json.dumps({"id": "n1", "text": "Night herons also hunt at night.",
                                                  "year": 2024}) + "\n")
    result = runner.invoke(app, ["index", str(tmp_path / "index"), "--from", str(docs), "--no-dense"])
    assert result.exit_code == 0, result.output
    assert "indexed 3 documents from 3 files" in result.output
    assert "skipped 2" in result.output and "empty file" in result.output
    return tmp_path / "index"


def test_search_explain_delete_info(indexed: Path, tiny_model_dir: Path):
    result = runner.invoke(app, ["search", str(indexed), "hunting at night", "--retrievers", "bm25",
                                 "--model", str(tiny_model_dir), "--top-k", "2", "--explain"])
    assert result.exit_code == 0, result.output
    assert "owls.md#0" in result.output and "n1#0" in result.output
    assert "first stage (retrieve) #" in result.output and "rerank=" in result.output and "bm25=" in result.output
    assert "score = rerank: the cross-encoder's logit" in result.output  # the tiny model ships no fusion.json
    assert "trace:" in result.output and "rerank" in result.output
    plain = runner.invoke(app, ["search", str(indexed), "honey", "--retrievers", "bm25", "--no-rerank", "--format", "json"])
    payload = json.loads(plain.output)
    assert payload["results"][0]["doc_id"] == "bees.txt" and payload["trace"][0]["stage"] == "retrieve"
    filtered = runner.invoke(app, ["search", str(indexed), "night", "--retrievers", "bm25", "--no-rerank",
                                   "--format", "json", "--filter", "year>=2024"])
    assert [r["doc_id"] for r in json.loads(filtered.output)["results"]] == ["n1"]
    deleted = runner.invoke(app, ["delete", str(indexed), "owls.md", "nope"])
    assert deleted.exit_code == 1 and "deleted 1 document;" in deleted.output and "nope" in deleted.output
    info = json.loads(runner.invoke(app, ["info", str(indexed)]).output)
    assert info["documents"] == 2 and info["generation"] == 2 and info["dense"] is None


def test_clear_errors(indexed: Path, tmp_path: Path, monkeypatch):
    import crossrank.model.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "BUNDLED_MODELS_DIR", tmp_path / "no-models")
    cases = {
        "default model": ["search", str(indexed), "owls", "--retrievers", "bm25"],
        "no such index": ["search", str(tmp_path / "missing"), "owls"],
        "built without dense vectors": ["search", str(indexed), "owls", "--no-rerank"],
        "unknown filter field 'lang'": ["search", str(indexed), "owls", "--retrievers", "bm25", "--no-rerank",
                                        "-f", "lang=en"],
        "empty": ["search", str(indexed), "   ", "--retrievers", "bm25", "--no-rerank"],
        "no such file or directory": ["index", str(indexed), "--from", str(tmp_path / "nothing-here")],
    }
    for expected, args in cases.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and "Traceback" not in result.output, result.output
    assert "--no-rerank" in runner.invoke(app, cases["default model"]).output
    typo = runner.invoke(app, ["index", str(tmp_path / "new-index"), "--from", str(tmp_path / "nothing-here")])
    assert typo.exit_code == 2 and not (tmp_path / "new-index").exists()  # a typo leaves no empty index behind
    bad_filter = runner.invoke(app, ["search", str(indexed), "owls", "--no-rerank", "-f", "year"])
    assert bad_filter.exit_code == 2 and "FIELD=VALUE" in bad_filter.output


def test_search_first_stage_weight(indexed: Path, tiny_model_with_fusion_dir: Path):
    base = ["search", str(indexed), "hunting at night", "--retrievers", "bm25", "--model",
            str(tiny_model_with_fusion_dir), "--explain"]
    shipped = runner.invoke(app, base)
    assert shipped.exit_code == 0, shipped.output
    assert "rerank_interpolated=" in shipped.output and "rerank=" in shipped.output
    alone = runner.invoke(app, [*base, "--first-stage-weight", "0"])
    assert alone.exit_code == 0 and "rerank=" in alone.output and "rerank_interpolated" not in alone.output
    for bad in ("1", "-0.5"):
        result = runner.invoke(app, [*base, "--first-stage-weight", bad])
        assert result.exit_code == 2 and "[0, 1)" in result.output and "Traceback" not in result.output
