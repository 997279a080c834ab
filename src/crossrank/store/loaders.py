"""Turn files into Documents: plain text and Markdown, HTML (selectolax's parser), PDF (pypdf), JSON lines and
CSV with a field mapping, BEIR corpus.jsonl. Bad files are skipped with a reason, never fatal to an ingest.

A file found under a given folder has its path relative to that folder as document id; a file given by name
keeps the path as given (two `README.md`s named on one command line stay two documents). Metadata carries
`source`, `timestamp` (modification time, ISO-8601 UTC) and, for HTML, `url` when the page declares one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crossrank.model.library_output import library_output_as_debug
from crossrank.types import Document

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm")
RECORD_SUFFIXES = (".jsonl", ".csv")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + (".pdf",) + RECORD_SUFFIXES
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
BLOCK_TAGS = frozenset({"p", "div", "section", "article", "main", "header", "footer", "aside", "h1", "h2", "h3", "h4",
                        "h5", "h6", "li", "ul", "ol", "pre", "blockquote", "table", "tr", "td", "th", "dl", "dt",
                        "dd", "figure", "figcaption", "br", "hr"})
LEGACY_ENCODINGS = ("cp1252", "latin-1")  # for files with no UTF-8 in them; latin-1 decodes any byte string
UTF8_MULTIBYTE = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


class SkipFile(Exception):
    """A file (or record) that cannot become a document; the message is the reason shown to the user."""


@dataclass(frozen=True)
class FieldMapping:
    """Which record fields hold the id, title and text; `metadata` None keeps every other field."""

    id: Sequence[str] = ("id", "_id", "docid", "doc_id")
    title: str = "title"
    text: str = "text"
    metadata: Sequence[str] | None = None

    def document(self, record: Mapping[str, Any], fallback_id: str) -> Document:
        text = record.get(self.text)
        if not isinstance(text, str):
            raise SkipFile(f"no string field {self.text!r}")
        title = record.get(self.title) or ""
        doc_id = next((str(record[name]) for name in self.id if record.get(name) not in (None, "")), fallback_id)
        used = {*self.id, self.title, self.text}
        if self.metadata is None:
            metadata = {k: v for k, v in record.items() if k not in used and k != "metadata"}
            if isinstance(record.get("metadata"), Mapping):  # BEIR nests extra fields under "metadata"
                metadata = {**record["metadata"], **metadata}
        else:
            metadata = {k: record[k] for k in self.metadata if k in record}
        return Document(text=text, title=str(title), id=doc_id, metadata=metadata)


@dataclass
class LoadReport:
    """What an ingest read: documents per file, every skipped file or record with its reason, and warnings about
    files that were read but guessed at (e.g. their text encoding)."""

    files: int = 0
    documents: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def warn(self, where: str, message: str) -> None:
        self.warnings.append((where, message))


def iter_files(paths: Sequence[str | Path], report: LoadReport) -> list[tuple[Path, Path]]:
    """(file, root) for every file under the given paths, sorted. Found up front, so that a missing path, or two
    files that would get the same id (the same relative path under two folders), stop the ingest before it
    writes anything."""
    resolved = [Path(p).expanduser() for p in paths]
    missing = [str(p) for p in resolved if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no such file or directory: {', '.join(missing)}")
    found: list[tuple[Path, Path]] = []
    for path in resolved:
        if path.is_file():
            found.append((path, Path(path.anchor) if path.is_absolute() else Path(".")))
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(path).parts):
                continue  # .git, .venv, editor files
            if file.suffix.lower() not in SUPPORTED_SUFFIXES:
                report.skip(str(file), f"unsupported file type {file.suffix or '(none)'!r}")
                continue
            found.append((file, path))
    owners: dict[str, Path] = {}
    for file, root in found:
        doc_id = file.relative_to(root).as_posix()
        if doc_id in owners and owners[doc_id].resolve() != file.resolve():
            raise ValueError(f"{owners[doc_id]} and {file} would both get the id {doc_id!r} (the same path under "
                             "two --from folders); ingest them into separate indexes or in separate runs")
        owners[doc_id] = file
    return list(dict.fromkeys(found))


def load_documents(paths: Sequence[str | Path], mapping: FieldMapping | None = None,
                   max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                   report: LoadReport | None = None) -> Iterator[Document]:
    """Documents from files and folders (recursively). Skips are recorded in `report`."""
    report = report if report is not None else LoadReport()
    mapping = mapping or FieldMapping()
    for file, root in iter_files(paths, report):
        try:
            size = file.stat().st_size
            if size > max_file_bytes:
                raise SkipFile(f"too large ({size / 2**20:.1f} MiB > {max_file_bytes / 2**20:.1f} MiB limit)")
            if size == 0:
                raise SkipFile("empty file")
            documents = list(load_file(file, root, mapping, report))
        except SkipFile as exc:
            report.skip(str(file), str(exc))
            continue
        except OSError as exc:
            report.skip(str(file), f"unreadable ({exc.strerror or exc})")
            continue
        report.files += 1
        report.documents += len(documents)
        yield from documents


def load_file(file: Path, root: Path, mapping: FieldMapping, report: LoadReport) -> Iterator[Document]:
    suffix = file.suffix.lower()
    doc_id = file.relative_to(root).as_posix()
    metadata = {"source": str(file), "timestamp": _mtime(file)}
    if suffix in RECORD_SUFFIXES:
        yield from _records(file, doc_id, mapping, report)
        return
    if suffix == ".pdf":
        title, text = _pdf(file)
    else:
        raw = file.read_bytes()
        if looks_binary(raw):
            raise SkipFile("binary content")
        text = decode(raw, str(file), report)
        if suffix in HTML_SUFFIXES:
            title, text, url = _html(text)
            if url:
                metadata["url"] = url
        else:
            title = _markdown_title(text) if suffix in (".md", ".markdown") else ""
    if not text.strip():
        raise SkipFile("no text")
    yield Document(text=text, title=title or file.stem, id=doc_id, metadata=metadata)


def decode(raw: bytes, where: str, report: LoadReport) -> str:
    """UTF-8 (with or without BOM). A file with no UTF-8 sequence at all is a legacy 8-bit file: read as cp1252
    with a warning. A file that mixes UTF-8 with invalid bytes is damaged: refused with the byte offset, since any
    single decoding would turn part of it into mojibake."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if UTF8_MULTIBYTE.search(raw):
            raise SkipFile(f"invalid UTF-8 at byte {exc.start} (the rest of the file is UTF-8); fix or "
                           "re-encode the file") from exc
    for encoding in LEGACY_ENCODINGS:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        report.warn(where, f"not UTF-8; read as {encoding}")
        return text
    raise AssertionError("latin-1 decodes every byte string")


def _mtime(file: Path) -> str:
    return datetime.fromtimestamp(file.stat().st_mtime, UTC).isoformat(timespec="seconds")


def _markdown_title(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _html(markup: str) -> tuple[str, str, str]:
    """Title, visible text via the lexbor HTML5 parser (scripts, styles and navigation dropped, blocks as paragraphs) and canonical URL."""
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(markup)
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node else ""
    url = ""
    for selector, attribute in (('link[rel="canonical"]', "href"), ('meta[property="og:url"]', "content")):
        node = tree.css_first(selector)
        if node and node.attributes.get(attribute):
            url = node.attributes[attribute] or ""
            break
    tree.strip_tags(["script", "style", "noscript", "template", "nav", "head", "svg"])
    blocks: list[str] = []
    current: list[str] = []

    def flush() -> None:
        text = " ".join(" ".join(current).split())
        if text:
            blocks.append(text)
        current.clear()

    def walk(node: Any) -> None:
        for child in node.iter(include_text=True):
            if child.tag == "-text":
                current.append(child.text(deep=False))
            elif child.tag in BLOCK_TAGS:
                flush()
                walk(child)
                flush()
            else:
                walk(child)

    walk(tree.body or tree.root)
    flush()
    return title, "\n\n".join(blocks), url


def _pdf(file: Path) -> tuple[str, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        with library_output_as_debug("pypdf"):  # its parser errors would print before our one-line reason
            reader = PdfReader(file)
            pages = [page.extract_text() or "" for page in reader.pages]
            title = (reader.metadata.title if reader.metadata else None) or ""
    except (PdfReadError, ValueError, KeyError) as exc:
        raise SkipFile(f"unreadable PDF ({exc})") from exc
    return str(title), "\n\n".join(page.strip() for page in pages if page.strip())


def looks_binary(raw: bytes) -> bool:
    """A NUL byte near the start: no text encoding we read produces one."""
    return b"\x00" in raw[:8192]


def documents_to_rerank(raw: bytes, name: str, suffix: str, report: LoadReport) -> list[Any]:
    """The candidates of one rerank input, in order. `.jsonl`: one JSON object per line; `.csv`: rows under a
    header; anything else (and stdin): one document per line, where a line that is a JSON object is read as one.
    Objects keep their fields (the result echoes them); a CSV row becomes one with id/title/text named as
    `index` reads them. Anything that cannot be a
    candidate raises ValueError naming its line: a reranked list must not silently lose or invent candidates."""
    if suffix in (".pdf", *HTML_SUFFIXES):
        raise ValueError(f"{name}: rerank reads JSON lines, CSV or plain text (one document per line); index "
                         f"{suffix} files with `crossrank index` and use `crossrank search`")
    if looks_binary(raw):
        raise ValueError(f"{name} is not text (it holds NUL bytes)")
    try:
        text = decode(raw, name, report)
    except SkipFile as exc:
        raise ValueError(f"{name}: {exc}") from exc
    mapping = FieldMapping()
    if suffix == ".csv":
        rows: Iterator[tuple[int, Any]] = _csv_rows(text)
    elif suffix == ".jsonl":
        rows = _json_lines(text)
    else:
        rows = _text_lines(text)
    documents: list[Any] = []
    for number, row in rows:
        try:
            if isinstance(row, SkipFile):
                raise row
            if isinstance(row, str):
                documents.append(row)
                continue
            if not isinstance(row, Mapping):
                raise SkipFile("not a JSON object")
            document = mapping.document(row, str(len(documents)))
            if not document.text.strip():
                raise SkipFile("empty text")
        except SkipFile as exc:
            raise ValueError(f"{name}, line {number}: {exc}") from exc
        documents.append({**document.metadata, "id": document.id, "title": document.title, "text": document.text}
                         if suffix == ".csv" else row)
    return documents


def _records(file: Path, base_id: str, mapping: FieldMapping, report: LoadReport) -> Iterator[Document]:
    text = decode(file.read_bytes(), str(file), report)
    if file.suffix.lower() == ".csv":
        rows: Iterator[tuple[int, Any]] = _csv_rows(text)
    else:
        rows = _json_lines(text)
    for number, record in rows:
        where = f"{file}:{number}"
        try:
            if isinstance(record, SkipFile):
                raise record
            if not isinstance(record, Mapping):
                raise SkipFile("not an object")
            document = mapping.document(record, f"{base_id}:{number}")
            if not document.text.strip():
                raise SkipFile("empty text")
        except SkipFile as exc:
            report.skip(where, str(exc))
            continue
        yield document


def _csv_rows(text: str) -> Iterator[tuple[int, Any]]:
    """(line number, row) from a CSV with a header. An unterminated quote would silently swallow every row
    after it into one field; strict parsing turns that into a skip naming the line where the quote opened."""
    reader = csv.DictReader(io.StringIO(text), strict=True)
    try:
        _ = reader.fieldnames  # reads the header, so line numbers below are the data rows'
    except csv.Error as exc:
        yield 1, SkipFile(f"malformed CSV header ({exc})")
        return
    while True:
        start = reader.reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, SkipFile(f"malformed CSV ({exc}): a quote opened here is never closed, so this row and "
                                  "everything after it were not read")
            return
        yield start, row


def _text_lines(text: str) -> Iterator[tuple[int, Any]]:
    """Non-blank lines, except that a line holding a JSON object is read as one (JSON lines work on stdin)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("{"):
            for _, record in _json_lines(line):
                yield number, record
        elif line.strip():
            yield number, line


def _json_lines(text: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, SkipFile(f"invalid JSON ({exc.msg})")
