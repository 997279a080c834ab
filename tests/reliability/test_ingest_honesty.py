"""Item 8: no silent data changes. Empty text is refused (it would replace a document with nothing), text
encodings are never guessed silently, a broken CSV names the row where it broke, an ingest that indexes nothing
fails, and two files that would share an id stop the ingest before it writes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from crossrank.cli import app
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer
from crossrank.store import Index
from crossrank.store.loaders import LoadReport, load_documents
from crossrank.types import Document

pytestmark = pytest.mark.reliability  # tests/reliability: each reproduces an operator-found defect

runner = CliRunner()


def test_empty_text_is_refused_and_the_document_kept(tmp_path, tiny_index_config, tiny_model_dir):
    index = Index.create(tmp_path / "index", replace(tiny_index_config, dense=False))
    index.add([Document("the original text", id="keep")])
    index.commit()
    for empty in ("", "   \n"):
        with pytest.raises(ValueError, match="'keep' has no text"):
            index.add([Document(empty, id="keep")])
    index.close()
    scorer = EncoderScorer(CrossEncoder.from_pretrained(tiny_model_dir))
    with TestClient(create_app(ServerConfig(index_root=tmp_path), scorer)) as client:
        for text in ("", "  "):
            response = client.post("/indexes/index/documents", json={"documents": [{"id": "keep", "text": text}]})
            assert response.status_code == 422, response.text
            assert client.put("/indexes/index/documents/keep", json={"text": text}).status_code == 422
    with Index.open(tmp_path / "index") as reopened:
        assert reopened.passages("keep")[0].text == "the original text"


def test_encodings_are_decoded_right_or_refused_with_the_offset(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "utf8.txt").write_bytes("café au lait".encode())
    (folder / "legacy.txt").write_bytes("café crème".encode("cp1252"))  # no UTF-8 at all: an 8-bit file
    damaged = "café ".encode() + b"\xff" + " thé".encode()
    (folder / "damaged.txt").write_bytes(damaged)  # UTF-8 with one bad byte: cp1252 would make mojibake of it
    bad_byte = damaged.index(b"\xff")
    report = LoadReport()
    documents = {d.id: d.text for d in load_documents([folder], report=report)}
    assert documents == {"utf8.txt": "café au lait", "legacy.txt": "café crème"}
    assert report.warnings == [(str(folder / "legacy.txt"), "not UTF-8; read as cp1252")]
    assert report.skipped == [(str(folder / "damaged.txt"),
                               f"invalid UTF-8 at byte {bad_byte} (the rest of the file is UTF-8); "
                               "fix or re-encode the file")]


def test_an_unterminated_csv_quote_names_its_row(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text('id,text\n1,first row\n2,"an opened quote\n3,third row\n4,fourth row\n')
    report = LoadReport()
    documents = {d.id: d.text for d in load_documents([table], report=report)}
    assert documents == {"1": "first row"}  # rows 3 and 4 are not hidden inside row 2's text
    [(where, reason)] = report.skipped
    assert where == f"{table}:3" and "never closed" in reason


def test_cli_ingest_that_indexes_nothing_fails_with_the_reasons(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "image.png").write_bytes(b"\x89PNG")
    (folder / "empty.txt").write_text("")
    result = runner.invoke(app, ["index", str(tmp_path / "index"), "--from", str(folder), "--no-dense"])
    assert result.exit_code == 1
    assert "nothing was indexed" in result.output and "empty file" in result.output


def test_the_same_relative_path_under_two_folders_is_refused_before_writing(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name / "guide").mkdir(parents=True)
        (tmp_path / name / "guide" / "intro.md").write_text(f"# Intro {name}\n\nText from folder {name}.")
    result = runner.invoke(app, ["index", str(tmp_path / "index"), "--from", str(tmp_path / "a"),
                                 "--from", str(tmp_path / "b"), "--no-dense"])
    assert result.exit_code == 2
    assert "would both get the id 'guide/intro.md'" in result.output
    with Index.open(tmp_path / "index") as index:
        assert index.count()["documents"] == 0


def test_warnings_reach_the_cli_user(tmp_path: Path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "legacy.txt").write_bytes("naïve café".encode("cp1252"))
    result = runner.invoke(app, ["index", str(tmp_path / "index"), "--from", str(folder), "--no-dense"])
    assert result.exit_code == 0, result.output
    assert "legacy.txt: not UTF-8; read as cp1252" in result.output
