"""`crossrank context` and `POST /v1/context`: cited, budgeted context for an LLM from an index, through the CLI and
the HTTP server, with the tiny random models (mechanics, not quality). Bad input is a clear one-line error or a
4xx, and the index is left exactly as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.cli import context as context_cli
from crossrank.context import (
    DEFAULT_MIN_PROBABILITY,
    GRANULARITIES,
    MAX_BUDGET_TOKENS,
    ORDERS,
    STYLES,
    TokenizerTokens,
    token_counter,
)
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig, parse_context_tokenizers
from crossrank.server.scoring import EncoderScorer
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


def test_packing_counts_each_piece_once_not_once_per_round():
    """Packing recounted every remaining piece in every round: quadratic, 20 s for 500 sentences with a real
    tokenizer. Each piece is now counted once (and once more when it is tried)."""
    from crossrank.context import ContextSelector, EstimatedTokens

    class Counting(EstimatedTokens):
        counted = 0

        def count(self, texts):
            Counting.counted += len(texts)
            return super().count(texts)

    sentences = [f"Sentence {i} is about topic {i % 7} and nothing else." for i in range(200)]
    documents = [" ".join(sentences[i:i + 10]) for i in range(0, 200, 10)]
    selector = ContextSelector(None, abstain_below=0, min_probability=0, duplicate_cosine=None, tokenizer=Counting())
    context = selector.select("topic 3", documents, budget_tokens=60)
    assert context.snippets and context.tokens <= 60
    assert Counting.counted < 10 * len(sentences)  # was about 3 * 200² / 2 = 60,000


# ---- crossrank context ----------------------------------------------------------------------------------------


def test_cli_choices_are_the_librarys():
    assert set(get_args(context_cli.Granularity)) == set(GRANULARITIES)
    assert set(get_args(context_cli.Order)) == set(ORDERS)
    assert set(get_args(context_cli.Style)) == set(STYLES)


def test_cli_text_then_json(index_dir: Path, tiny_model_dir: Path, tmp_path: Path):
    before, generation_before = snapshot(index_dir), generation(index_dir)
    base = ["context", str(index_dir), QUESTION, "--budget", "200", "-m", str(tiny_model_dir), "--abstain-below", "0",
            "--min-probability", "0", "--candidates", "10"]
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
    assert payload["abstained"] is False and payload["reason"] is None
    assert payload["min_probability"] == payload["abstain_below"] == 0
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
    args = ["context", str(index_dir), QUESTION, "--budget", "200", "-m", str(tiny_model_dir), "--abstain-below", "0",
            "--min-probability", "1.0", "--candidates", "10"]
    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output  # abstaining is an answer, not an error
    last = text.stderr.strip().splitlines()[-1]  # after any one-time status line (an ONNX export)
    assert text.stdout == "" and last.startswith("abstained: no passage reached the relevance floor")
    assert last.endswith(f"left out: {len(DOCS)} floor")
    payload = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert payload["abstained"] is True and payload["snippets"] == [] and payload["rendered"] == ""
    assert "relevance floor" in payload["reason"] and {d["reason"] for d in payload["dropped"]} == {"floor"}


def test_cli_abstains_when_the_best_passage_is_below_abstain_below(index_dir: Path, tiny_model_dir: Path):
    args = ["context", str(index_dir), QUESTION, "--budget", "200", "-m", str(tiny_model_dir), "--abstain-below",
            "1.0", "--min-probability", "0", "--candidates", "10", "--format", "json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["abstained"] is True and payload["snippets"] == [] and payload["abstain_below"] == 1.0
    assert "nothing here looks like an answer" in payload["reason"]
    assert {d["reason"] for d in payload["dropped"]} == {"abstain"}


def test_cli_uses_the_indexes_adapted_model(index_dir: Path, tiny_model_dir: Path):
    shutil.copytree(tiny_model_dir, index_dir / "adapted-model")
    result = runner.invoke(app, ["context", str(index_dir), QUESTION, "--budget", "100", "--abstain-below", "0",
                                 "--min-probability", "0", "--candidates", "5"])
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
        (["--budget", "100", "--json", str(tmp_path / "no-dir" / "out.json")], "--json"),
    ]
    before = {path: (snapshot(path), generation(path)) for path in (index_dir, empty)}
    for extra, expected in cases:
        result = runner.invoke(app, ["context", str(index_dir), QUESTION, "-m", str(tiny_model_dir), *extra])
        assert result.exit_code == 2, (extra, result.output)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        last = result.stderr.strip().splitlines()[-1]  # after any one-time status line (an ONNX export)
        assert errors == [last] and expected in last, (extra, result.stderr)
        assert result.stdout == "" and "Traceback" not in result.output, (extra, result.output)
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


# ---- POST /v1/context -------------------------------------------------------------------------------------------

KEY = "context-key"


class CountingScorer(EncoderScorer):
    """The server's scorer, counting the pairs each call receives: proves /v1/context scores through it."""

    def __init__(self, encoder: CrossEncoder) -> None:
        super().__init__(encoder)
        self.calls: list[int] = []

    def __call__(self, queries, texts, token_caps):
        self.calls.append(len(texts))
        return super().__call__(queries, texts, token_caps)


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture
def served(tmp_path: Path, tiny_index_config, tiny_model_dir: Path, encoder: CrossEncoder):
    """A client on an app with two indexes on disk (one empty), the tiny model's tokenizer configured as "bert",
    an API key and small limits; yields (client, scorer, index root)."""
    root = tmp_path / "indexes"
    build_index(root / "docs", tiny_index_config)
    build_index(root / "empty", tiny_index_config, documents=[])
    config = ServerConfig(index_root=root, api_keys=frozenset({KEY}), max_documents=20,
                          max_chars_per_document=500, max_request_tokens=2000,
                          context_tokenizers={"bert": tiny_model_dir})
    scorer = CountingScorer(encoder)
    with TestClient(create_app(config, scorer), headers={"Authorization": f"Bearer {KEY}"}) as client:
        yield client, scorer, root


def ask(client: TestClient, **fields):
    body = {"index": "docs", "query": QUESTION, "budget_tokens": 200, "candidates": 10, **fields}
    return client.post("/v1/context", json=body)


def test_http_context_scores_through_the_servers_batcher(served):
    client, scorer, root = served
    before = snapshot(root / "docs")
    response = ask(client, abstain_below=0, min_probability=0)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["index"] == "docs" and body["model"] == scorer.name and body["style"] == "numbered"
    assert body["abstained"] is False and 0 < body["tokens"] <= body["budget"] == 200
    assert body["rendered"].startswith("[1] ") and body["tokenizer"].startswith("estimate")
    assert [s["marker"] for s in body["snippets"]] == list(range(1, len(body["snippets"]) + 1))
    assert len(scorer.calls) >= 2  # the passages, then their sentences: both through the server's scorer
    xml = ask(client, abstain_below=0, min_probability=0, style="xml", granularity="passage", order="ends",
              tokenizer="bert").json()
    assert xml["rendered"].startswith('<source id="1"') and xml["order"] == "ends"
    assert xml["tokenizer"] == "bert"  # the configured name, never the server's path
    abstained = ask(client, abstain_below=0, min_probability=1.0).json()
    assert abstained["abstained"] is True and abstained["snippets"] == [] and abstained["rendered"] == ""
    assert "relevance floor" in abstained["reason"]
    nothing = ask(client, abstain_below=1.0, min_probability=0).json()
    assert nothing["abstained"] is True and nothing["abstain_below"] == 1.0
    assert "nothing here looks like an answer" in nothing["reason"]
    assert nothing["dropped"] and {d["reason"] for d in nothing["dropped"]} == {"abstain"}
    filtered = ask(client, abstain_below=0, min_probability=0, filters={"lang": "es"}).json()
    assert {s["doc_id"] for s in filtered["snippets"]} == {"madrid"}
    client.app.state.indexes.close()
    assert snapshot(root / "docs") == before


def test_http_context_needs_the_key(served):
    client, _, _ = served
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        response = client.post("/v1/context", json={"index": "docs", "query": QUESTION, "budget_tokens": 100},
                               headers=headers)
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("fields, status, fragment", [
    ({"budget_tokens": 0}, 422, "budget_tokens"),
    ({"budget_tokens": MAX_BUDGET_TOKENS + 1}, 422, "budget_tokens"),
    ({"budget_tokens": "100"}, 422, "budget_tokens"),
    ({"query": "  "}, 422, "query is empty"),
    ({"query": "q" * 501}, 413, "max_chars_per_document"),
    ({"index": "nowhere"}, 404, "no index named 'nowhere'"),
    ({"index": "empty"}, 409, "holds no documents"),
    ({"tokenizer": "llama3"}, 404, "no tokenizer named 'llama3' on this server; configured: bert"),
    ({"tokenizer": "../../etc/passwd"}, 422, "tokenizer"),
    ({"granularity": "paragraph"}, 422, "granularity"),
    ({"min_probability": 1.5}, 422, "min_probability"),
    ({"abstain_below": -0.1}, 422, "abstain_below"),
    ({"candidates": 21}, 413, "max_documents=20"),
    ({"candidates": 20}, 413, "max_request_tokens=2000"),
    ({"filters": {"colour": "red"}}, 409, "unknown filter field 'colour'"),
    ({"budget": 100}, 422, "budget"),
])
def test_http_context_errors_are_clear(served, fields, status, fragment):
    client, _, root = served
    before = {name: snapshot(root / name) for name in ("docs", "empty")}
    response = ask(client, **fields)
    assert response.status_code == status, response.text
    assert fragment in response.json()["message"] and str(root) not in response.json()["message"]
    client.app.state.indexes.close()
    assert {name: snapshot(root / name) for name in ("docs", "empty")} == before
    assert not (root / "nowhere").exists()


def test_openapi_documents_v1_context(served):
    client, _, _ = served
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/context"]["post"]
    assert operation["security"] == [{"HTTPBearer": []}]
    assert {"401", "404", "409", "413", "422", "503"} <= set(operation["responses"])
    request = spec["components"]["schemas"]["ContextRequest"]
    assert request["required"] == ["index", "query", "budget_tokens"] and request["examples"]
    fields = request["properties"]
    assert fields["budget_tokens"]["maximum"] == MAX_BUDGET_TOKENS
    assert fields["min_probability"]["default"] == DEFAULT_MIN_PROBABILITY  # the library's, not a copy
    assert "--context-tokenizer" in fields["tokenizer"]["description"]
    assert all(field.get("description") for name, field in fields.items() if name != "query")
    response = spec["components"]["schemas"]["ContextResponse"]["properties"]
    assert {"rendered", "snippets", "dropped", "abstained", "reason", "tokens", "budget"} <= set(response)


def test_context_tokenizer_flag_is_checked_before_serving(tmp_path: Path, tiny_model_dir: Path):
    assert parse_context_tokenizers([f"bert={tiny_model_dir}", "x=/t.json"]) == {"bert": tiny_model_dir,
                                                                                 "x": Path("/t.json")}
    for spec in ("no-equals", "=path", "name="):
        with pytest.raises(ValueError, match="NAME=PATH"):
            parse_context_tokenizers([spec])
    with pytest.raises(ValueError, match="given twice"):
        parse_context_tokenizers(["a=x", "a=y"])
    with pytest.raises(ValueError, match="context tokenizer name"):
        ServerConfig(context_tokenizers={"../up": tiny_model_dir})
    for spec, expected in [("nonsense", "NAME=PATH"), (f"bert={tmp_path / 'missing'}", "tokenizer not found")]:
        result = runner.invoke(app, ["serve", "--context-tokenizer", spec])
        assert result.exit_code == 2 and expected in result.stderr and "Traceback" not in result.output, result.output
