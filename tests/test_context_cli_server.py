"""`crossrank context` and `POST /v1/context`: cited, budgeted context for an LLM from an index, through the CLI and
the HTTP server, with the tiny random models (mechanics, not quality). Bad input is a clear one-line error or a
4xx, and the index is left exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import get_args

import pytest
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.cli import context as context_cli
from crossrank.context import (
    GRANULARITIES,
    MAX_BUDGET_TOKENS,
    ORDERS,
    STYLES,
    TokenizerTokens,
    token_counter,
)
from crossrank.store import Index
from crossrank.types import Document

runner = CliRunner()

DOCS = [
    {"id": "paris", "title": "Paris", "metadata": {"lang": "en"},
     "text": "Paris is the capital of France. The Seine flows through the city. The Eiffel Tower was built in 1889."},
    {"id": "berlin", "title": "Berlin", "metadata": {"lang": "en"},
     "text": "Berlin is the capital of Germany. It is known for its museums."},
    {"id": "madrid", "title": "Madrid", "metadata": {"lang": "es"},
     "text": "Madrid es la capital de España. Tiene muchos parques."},
    {"id": "bread", "title": "Bread", "metadata": {"lang": "en"},
     "text": "Bread is baked from flour, water and yeast. Sourdough rises slowly."},
]
QUESTION = "What is the capital of France?"


def build_index(path: Path, config, documents=DOCS) -> Path:
    """An index (`config`: an IndexConfig) whose bi-encoder is the tiny random BERT, so neither retrieval nor
    deduplication loads MiniLM."""
    with Index.create(path, config) as index:
        if documents:
            index.add([Document(**document) for document in documents])
            index.commit()
    return path


def snapshot(path: Path) -> dict[str, tuple[int, int]]:
    """Every file of an index with its modification time and size: equal snapshots mean nothing was written."""
    return {str(f.relative_to(path)): (f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(path.rglob("*"))
            if f.is_file()}


def generation(path: Path) -> int:
    with Index.open(path) as index:
        return index.info()["generation"]


@pytest.fixture
def index_dir(tmp_path: Path, tiny_index_config) -> Path:
    return build_index(tmp_path / "index", tiny_index_config)


# ---- the token counter ---------------------------------------------------------------------------------------


def test_a_tokenizer_that_pads_or_truncates_is_counted_unpadded(tiny_model_dir: Path):
    """MiniLM's tokenizer.json pads every text to 128 and truncates at 128: counted as it is, every snippet would
    cost 128 tokens and a 600-word one would pass as 128."""
    from tokenizers import Tokenizer

    counter = TokenizerTokens.from_file(tiny_model_dir)
    short, long = counter.count(["Paris is the capital of France.", "word " * 600])
    assert short < 20 and long == 600
    raw = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    assert raw.padding is not None and raw.truncation is not None
    assert token_counter(raw).count(["hello world"]) == [2]
    assert raw.padding is not None and raw.truncation is not None  # the caller's tokenizer is not changed


# ---- crossrank context ----------------------------------------------------------------------------------------


def test_cli_choices_are_the_librarys():
    assert set(get_args(context_cli.Granularity)) == set(GRANULARITIES)
    assert set(get_args(context_cli.Order)) == set(ORDERS)
    assert set(get_args(context_cli.Style)) == set(STYLES)


def test_cli_text_then_json(index_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    before, generation_before = snapshot(index_dir), generation(index_dir)
    base = ["context", str(index_dir), QUESTION, "--budget", "200", "-m", str(tiny_model_dir), "--min-probability",
            "0", "--candidates", "10"]
    text = runner.invoke(app, base)
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("[1] ") and "Traceback" not in text.output
    summary = text.stderr.splitlines()[-2:]  # after any one-time status line (an ONNX export)
    assert "/200 tokens (estimate" in summary[0] and "left out:" in summary[0] and "abstained" not in summary[0]
    assert summary[1].startswith("sources: [1] ")

    saved = tmp_path / "context.json"
    out = runner.invoke(app, [*base, "--format", "json", "--style", "xml", "--order", "document",
                              "--granularity", "passage", "--json", str(saved)])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload == json.loads(saved.read_text(encoding="utf-8"))
    assert payload["abstained"] is False and payload["reason"] is None and payload["min_probability"] == 0
    assert (payload["budget"], payload["granularity"], payload["order"], payload["style"]) == (
        200, "passage", "document", "xml")
    assert 0 < payload["tokens"] <= 200 and payload["rendered"].startswith('<source id="1" doc=')
    texts = {d["id"]: d["text"] for d in DOCS}
    snippets = payload["snippets"]
    assert [s["marker"] for s in snippets] == list(range(1, len(snippets) + 1))
    for s in snippets:
        assert texts[s["doc_id"]][s["start"]:s["end"]] == s["text"]  # the span cites the passage exactly
    assert all(d["reason"] in ("floor", "duplicate", "budget") for d in payload["dropped"])
    assert snapshot(index_dir) == before and generation(index_dir) == generation_before


def test_cli_abstains_below_the_floor(index_dir: Path, tiny_model_dir: Path):
    args = ["context", str(index_dir), QUESTION, "--budget", "200", "-m", str(tiny_model_dir), "--min-probability",
            "1.0", "--candidates", "10"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output  # abstaining is an answer, not an error
    assert text.stdout == "" and text.stderr.startswith("abstained: no passage reached the relevance floor")
    assert f"left out: {len(DOCS)} floor" in text.stderr
    payload = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert payload["abstained"] is True and payload["snippets"] == [] and payload["rendered"] == ""
    assert "relevance floor" in payload["reason"] and {d["reason"] for d in payload["dropped"]} == {"floor"}


def test_cli_uses_the_indexes_adapted_model(index_dir: Path, tiny_model_dir: Path):
    shutil.copytree(tiny_model_dir, index_dir / "adapted-model")
    result = runner.invoke(app, ["context", str(index_dir), QUESTION, "--budget", "100", "--min-probability", "0",
                                 "--candidates", "5"])
    assert result.exit_code == 0, result.output
    assert f"the index's adapted model {index_dir / 'adapted-model'}" in result.stderr


def test_cli_bad_input_is_one_clear_line_and_leaves_the_index_alone(index_dir: Path, tiny_model_dir: Path,
                                                                   tmp_path: Path, tiny_index_config):
    empty = build_index(tmp_path / "empty", tiny_index_config, documents=[])
    cases = [
        (["--budget", "0"], "--budget must be between 1 and"),
        (["--budget", str(MAX_BUDGET_TOKENS + 1)], f"--budget must be between 1 and {MAX_BUDGET_TOKENS:,}"),
        (["--budget", "100", "--tokenizer", str(tmp_path / "no-tokenizer.json")], "tokenizer not found"),
        (["--budget", "100", "-f", "colour=red"], "unknown filter field 'colour'"),
    ]
    before = {path: (snapshot(path), generation(path)) for path in (index_dir, empty)}
    for extra, expected in cases:
        result = runner.invoke(app, ["context", str(index_dir), QUESTION, "-m", str(tiny_model_dir), *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert result.stderr.startswith("error: ") and expected in result.stderr, (extra, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == "", (extra, result.output)
    for args, expected in [((str(index_dir), "   "), "query is empty"),
                           ((str(tmp_path / "missing"), QUESTION), "no such index"),
                           ((str(empty), QUESTION), "holds no documents")]:
        result = runner.invoke(app, ["context", *args, "--budget", "100", "-m", str(tiny_model_dir)])
        assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
        assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
    out_of_range = runner.invoke(app, ["context", str(index_dir), QUESTION, "--budget", "100", "--min-probability",
                                       "1.5"])
    assert out_of_range.exit_code == 2 and "--min-probability" in out_of_range.output
    assert {path: (snapshot(path), generation(path)) for path in (index_dir, empty)} == before
    assert not (tmp_path / "missing").exists()
