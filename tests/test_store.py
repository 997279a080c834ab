"""The on-disk index: loaders, chunking, add/update/delete/commit, reopen, filters, bad input, readers vs writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crossrank.model.checkpoint import bi_encoder_path
from crossrank.model.tokenization import load_tokenizer
from crossrank.store import FieldMapping, Index, IndexConfig
from crossrank.store.chunking import Chunker
from crossrank.store.index import IndexLockedError, NotAnIndexError
from crossrank.store.loaders import LoadReport, load_documents
from crossrank.types import Document, Query


def make_pdf(text: str) -> bytes:
    """A one-page PDF with a Helvetica text line, written by hand so the test needs no PDF writer."""
    stream = b"BT /F1 12 Tf 72 720 Td (" + text.encode() + b") Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(bi_encoder_path())[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("Tantivy is a full-text search engine library written in Rust.")
    (root / "guide.md").write_text("# Install guide\n\nRun pip install crossrank to get started.")
    (root / "sub" / "page.html").write_text(
        "<html><head><title>Espresso</title><link rel='canonical' href='https://example.org/espresso'>"
        "<script>var hidden = 'javascript secret';</script><style>p {color: red}</style></head>"
        "<body><nav>Home | About</nav><h1>Espresso</h1><p>Espresso is brewed by forcing hot water "
        "through finely ground coffee.</p><ul><li>Ristretto is shorter.</li></ul></body></html>")
    (root / "paper.pdf").write_bytes(make_pdf("Photosynthesis converts light into chemical energy"))
    (root / "records.jsonl").write_text(
        json.dumps({"id": "r1", "title": "Volcano", "text": "Lava flows from an erupting volcano.", "lang": "en",
                    "year": 2021}) + "\n" + "{not json\n"
        + json.dumps({"id": "r2", "text": "Der Vulkan bricht aus.", "lang": "de", "year": 2024}) + "\n")
    (root / "table.csv").write_text("doc_id,body,lang\nc1,Glaciers carve valleys over millennia.,en\n")
    (root / "latin1.txt").write_bytes("Café crème brûlée naïve".encode("cp1252"))
    (root / "empty.txt").write_bytes(b"")
    (root / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.txt").write_text("never indexed")
    return root


def test_loaders_extract_real_text_and_report_skips(folder: Path):
    report = LoadReport()
    docs = {d.id: d for d in load_documents([folder], FieldMapping(), report=report)}
    assert docs["notes.txt"].text.startswith("Tantivy") and docs["notes.txt"].title == "notes"
    assert docs["guide.md"].title == "Install guide"
    page = docs["sub/page.html"]
    assert page.title == "Espresso" and page.metadata["url"] == "https://example.org/espresso"
    assert "forcing hot water" in page.text and "Ristretto" in page.text
    assert "javascript" not in page.text and "color" not in page.text and "About" not in page.text
    assert "Photosynthesis" in docs["paper.pdf"].text
    assert docs["r1"].metadata == {"lang": "en", "year": 2021} and docs["r1"].title == "Volcano"
    assert docs["latin1.txt"].text == "Café crème brûlée naïve"
    assert docs["notes.txt"].metadata["timestamp"].endswith("+00:00")
    reasons = dict(report.skipped)
    assert reasons[str(folder / "empty.txt")] == "empty file"
    assert reasons[str(folder / "blob.txt")] == "binary content"
    assert "unsupported" in reasons[str(folder / "image.png")]
    assert reasons[f"{folder / 'records.jsonl'}:2"].startswith("invalid JSON")
    assert "c1" not in docs  # the CSV's text is in "body", not the default "text" field
    assert reasons[f"{folder / 'table.csv'}:2"] == "no string field 'text'"
    assert not any(".hidden" in d for d in docs)
    mapped = {d.id: d for d in load_documents([folder / "table.csv"], FieldMapping(id=("doc_id",), text="body"))}
    assert mapped["c1"].text.startswith("Glaciers") and mapped["c1"].metadata == {"lang": "en"}


def test_missing_paths_huge_and_unreadable_files(tmp_path: Path, folder: Path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nope"):
        list(load_documents([folder, tmp_path / "nope"]))
    report = LoadReport()
    docs = list(load_documents([folder / "notes.txt"], max_file_bytes=10, report=report))
    assert docs == [] and "too large" in report.skipped[0][1]
    locked = folder / "locked.txt"
    locked.write_text("secret")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the read fail as it would for a user
        def denied(self: Path) -> bytes:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "read_bytes", denied)
    report = LoadReport()
    assert list(load_documents([locked], report=report)) == []
    assert report.skipped[0] == (str(locked), "unreadable (Permission denied)")


def test_chunker_respects_size_overlap_and_boundaries(tokenizer):
    chunker = Chunker(tokenizer, max_tokens=24, overlap=8)
    sentences = [f"Sentence number {i} talks about topic {i}." for i in range(12)]
    text = " ".join(sentences[:6]) + "\n\n" + " ".join(sentences[6:])
    passages = chunker.split([text])[0]
    assert len(passages) > 2
    for passage in passages:
        assert passage in text  # exact substrings
        assert len(tokenizer.encode(passage, add_special_tokens=False).ids) <= 24
        assert passage.endswith(".") and passage[0].isupper()  # cut on sentence boundaries
    assert any(a.split(". ")[-1] in b for a, b in zip(passages, passages[1:], strict=False))  # overlap carried
    assert all(any(s in p for p in passages) for s in sentences)  # nothing lost
    long_word_run = "word " * 100
    pieces = chunker.split([long_word_run, "", "Short text."])
    assert len(pieces[0]) >= 4 and pieces[1] == [] and pieces[2] == ["Short text."]
    with pytest.raises(ValueError, match="overlap"):
        Chunker(tokenizer, 32, 16)
    with pytest.raises(ValueError, match="at least 16"):
        Chunker(tokenizer, 8, 0)


def test_add_update_delete_commit_and_reopen(tmp_path: Path, tiny_index_config: IndexConfig):
    path = tmp_path / "index"
    with Index.create(path, tiny_index_config) as index:
        index.add([Document("Rust is a systems language.", title="Rust", id="a", metadata={"lang": "en"}),
                   {"id": "b", "text": "Python is a dynamic language.", "lang": "en"}])
        assert index.count()["passages"] == 0  # nothing visible before commit
        assert index.commit() == 1
        index.add([Document("Haskell is a lazy functional language.", id="a")])  # same id replaces
        assert index.delete(["b", "missing"]) == ["missing"]
        assert index.commit() == 2
        assert index.commit() == 2  # nothing staged: no new generation
        assert index.count() == {"documents": 1, "passages": 1}
    with Index.open(path) as reader:
        assert [c.text for c in reader.passages("a")] == ["Haskell is a lazy functional language."]
        assert reader.passages("b") == []
        [hits] = reader.retrieve("bm25", [Query("haskell")], 10)
        assert [h.doc_id for h in hits] == ["a"] and hits[0].ranks == {"bm25": 1}
        assert reader.retrieve("bm25", [Query("python")], 10) == [[]]
        assert len(reader.retrieve("dense", [Query("language")], 10)[0]) == 1
        info = reader.info()
        assert info["generation"] == 2 and info["bm25"] == {"generation": 2, "passages": 1}
        assert info["dense"]["vectors"] == 1
        with pytest.raises(PermissionError, match="read-only"):
            reader.add([Document("x", id="x")])


def test_long_documents_become_passages_that_keep_doc_fields(tmp_path: Path, tiny_index_config: IndexConfig):
    text = " ".join(f"Paragraph sentence {i} mentions the keyword zebra{i}." for i in range(40))
    with Index.create(tmp_path / "index", tiny_index_config) as index:
        index.add([Document(text, title="Long", id="long", metadata={"url": "https://x.org"})])
        index.commit()
        passages = index.passages("long")
        assert len(passages) > 3
        assert [p.id for p in passages] == [f"long#{i}" for i in range(len(passages))]
        assert all(p.title == "Long" and p.metadata == {"url": "https://x.org"} for p in passages)
        [hits] = index.retrieve("bm25", [Query("zebra39")], 5)
        assert hits[0].id == passages[-1].id


def test_filters_equality_lists_ranges_and_unknown_fields(tmp_path: Path, tiny_index_config: IndexConfig):
    docs = [Document(f"report about rivers number {i}", id=f"d{i}",
                     metadata={"lang": "en" if i % 2 else "de", "timestamp": f"2024-0{i + 1}-01T00:00:00+00:00",
                               "year": 2020 + i}) for i in range(5)]
    with Index.create(tmp_path / "index", tiny_index_config) as index:
        index.add(docs)
        index.commit()

        def ids(filters, retriever="bm25"):
            return sorted(c.doc_id for c in index.retrieve(retriever, [Query("rivers", filters=filters)], 10)[0])

        assert ids({"lang": "en"}) == ["d1", "d3"]
        assert ids({"lang": ["en", "de"], "year": {"gte": 2023}}) == ["d3", "d4"]
        assert ids({"timestamp": {"gte": "2024-02-01", "lt": "2024-04-01"}}) == ["d1", "d2"]
        assert ids({"timestamp": {"gte": "2024-02-01", "lt": "2024-04-01"}}, "dense") == ["d1", "d2"]
        assert ids({"doc_id": "d0"}) == ["d0"]
        with pytest.raises(ValueError, match="unknown filter field 'colour'.*lang"):
            ids({"colour": "red"})
        with pytest.raises(ValueError, match="unknown operator"):
            ids({"year": {"between": [1, 2]}})
        with pytest.raises(ValueError, match="empty list"):
            ids({"lang": []})
        with pytest.raises(ValueError, match="strings, numbers or booleans"):
            ids({"lang": [["en"]]})


def test_bad_queries_and_ids(tmp_path: Path, tiny_index_config: IndexConfig):
    with Index.create(tmp_path / "index", tiny_index_config) as index:
        index.add([Document("The cat and the hat.", id="a")])
        index.commit()
        assert index.retrieve("bm25", [Query("the and of")], 5) == [[]]  # only stop words
        assert index.retrieve("bm25", [Query("?!... ---")], 5) == [[]]  # only punctuation
        assert len(index.retrieve("dense", [Query("?!")], 5)[0]) == 1
        with pytest.raises(ValueError, match="unknown retriever 'splade'"):
            index.retrieve("splade", [Query("cat")], 5)
        with pytest.raises(ValueError, match="non-empty id"):
            index.add([Document("no id")])
        with pytest.raises(TypeError, match="document 0"):
            index.add([42])  # type: ignore[list-item]


def test_opening_errors_and_the_writer_lock(tmp_path: Path, tiny_index_config: IndexConfig):
    with pytest.raises(NotAnIndexError, match="no such index"):
        Index.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    with pytest.raises(NotAnIndexError, match="no crossrank index"):
        Index.open(tmp_path / "plain")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        Index.create(tmp_path / "plain", tiny_index_config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]  # no staging folder left behind
    with pytest.raises(ValueError, match="overlap"):
        Index.create(tmp_path / "bad", IndexConfig(passage_tokens=64, overlap=40))
    with pytest.raises(ValueError, match="title_boost"):
        Index.create(tmp_path / "bad", IndexConfig(title_boost=0))
    assert not (tmp_path / "bad").exists()  # a rejected config leaves nothing behind
    (tmp_path / "interrupted").mkdir()
    (tmp_path / "interrupted" / "passages.sqlite").write_bytes(b"")  # killed before its first commit
    with pytest.raises(NotAnIndexError, match="not a usable crossrank index"):
        Index.open(tmp_path / "interrupted")
    (tmp_path / "interrupted" / "passages.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(NotAnIndexError, match="not a usable crossrank index"):
        Index.open(tmp_path / "interrupted", writable=True)
    writer = Index.create(tmp_path / "index", tiny_index_config)
    with pytest.raises(IndexLockedError, match="another process"):
        Index.open(tmp_path / "index", writable=True)
    writer.close()
    Index.open(tmp_path / "index", writable=True).close()  # released on close
    with pytest.raises(FileExistsError, match="already holds an index; open it"):
        Index.create(tmp_path / "index", tiny_index_config)


def test_readers_see_a_writers_commits(tmp_path: Path, tiny_index_config: IndexConfig):
    writer = Index.create(tmp_path / "index", tiny_index_config)
    reader = Index.open(tmp_path / "index")
    writer.add([Document("first committed text about owls", id="1")])
    writer.commit()
    writer.add([Document("owls staged but not committed", id="2")])
    assert [c.doc_id for c in reader.retrieve("bm25", [Query("owls")], 10)[0]] == ["1"]
    assert [c.doc_id for c in reader.retrieve("dense", [Query("owls")], 10)[0]] == ["1"]
    writer.delete(["1"])
    writer.commit()
    assert [c.doc_id for c in reader.retrieve("bm25", [Query("owls")], 10)[0]] == ["2"]
    assert [c.doc_id for c in reader.retrieve("dense", [Query("owls")], 10)[0]] == ["2"]
    writer.close()
    reader.close()


def test_ingest_reports_and_indexes_a_folder(tmp_path: Path, folder: Path, tiny_index_config: IndexConfig):
    with Index.create(tmp_path / "index", tiny_index_config) as index:
        report = index.ingest([folder], commit_every=2)
        assert report.documents == 7 and report.commits == 4 and report.passages == 7
        assert len(report.skipped) == 5
        [hits] = index.retrieve("bm25", [Query("espresso coffee")], 3)
        assert hits[0].doc_id == "sub/page.html"
        generation = index.generation
        again = index.ingest([folder])  # re-ingesting replaces, never duplicates; unchanged files are not re-embedded
        assert index.count() == {"documents": 7, "passages": 7} and again.documents == 7
        assert (again.unchanged, again.passages, again.commits, index.generation) == (7, 0, 0, generation)
        assert set(index.fields()) >= {"lang", "year", "source", "timestamp", "url"}


def test_reindexing_an_edited_file_rewrites_only_that_file(tmp_path: Path, tiny_index_config: IndexConfig):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("owls hunt at night")
    (docs / "b.txt").write_text("bees make honey")
    with Index.create(tmp_path / "index", tiny_index_config) as index:
        index.ingest([docs])
        (docs / "b.txt").write_text("bees make honey and wax")
        edited = index.ingest([docs])
        assert (edited.documents, edited.unchanged, edited.passages, edited.commits) == (2, 1, 1, 1)
        assert index.last_commit.written == 1 and index.last_commit.unchanged == 1
        assert [p.text for p in index.passages("b.txt")] == ["bees make honey and wax"]
        index.add([Document("owls hunt at night", id="a.txt", metadata={"source": "elsewhere"})])
        index.commit()  # same text, new metadata: rewritten, since the stored fields must follow
        assert index.last_commit.written == 1 and index.passages("a.txt")[0].metadata["source"] == "elsewhere"


def test_threads_search_while_another_thread_commits(tmp_path: Path, tiny_index_config: IndexConfig):
    import threading

    index = Index.create(tmp_path / "index", tiny_index_config)
    index.add([Document(f"owls number {i}", id=f"base{i}") for i in range(10)])
    index.commit()
    stop, errors, seen = threading.Event(), [], []

    def search() -> None:
        try:
            while not stop.is_set():
                for retriever in ("bm25", "dense"):
                    found = len(index.retrieve(retriever, [Query("owls")], 100)[0])
                    assert found >= 10 and found % 10 == 0, found  # whole batches only
                    seen.append(found)
        except Exception as exc:  # noqa: BLE001  (reported to the main thread)
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for thread in threads:
        thread.start()
    for batch in range(5):
        index.add([Document(f"owls batch {batch} item {i}", id=f"b{batch}-{i}") for i in range(10)])
        index.commit()
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert seen and max(seen) <= 60 and index.count()["passages"] == 60
    index.close()


def test_files_named_directly_keep_their_path_as_id(tmp_path, monkeypatch):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.md").write_text(f"# {folder}\n\nabout {folder}\n")
    monkeypatch.chdir(tmp_path)
    ids = [d.id for d in load_documents(["a/README.md", "b/README.md", tmp_path / "a" / "README.md"])]
    assert ids[:2] == ["a/README.md", "b/README.md"]
    assert ids[2] == (tmp_path / "a" / "README.md").as_posix().lstrip("/")
