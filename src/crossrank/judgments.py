"""Relevance judgments recorded against an index: people grade search results (the relevance workbench), and the
grades become qrels that `crossrank eval`, `train` and `ltr` read like any judged BEIR split.

Layout: INDEX_DIR/judgments/JUDGE.jsonl, one append-only JSON line per judgment. Each line is appended with one
`os.write` on an O_APPEND descriptor and fsynced before `record` returns: writers in several processes never
interleave, and a crash can only leave a torn last line, which readers skip (with a warning) and the next write
terminates (checked under an flock, so a writer never mistakes another's append in progress for a torn line). Nothing is rewritten, so a judge's history stays auditable; the latest line for a (judge, query,
document) is the one that counts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import statistics
import tempfile
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from crossrank.datasets import JUDGMENTS, BeirDataset, Qrels, write_qrels
from crossrank.store.index import DATABASE, Index

GRADES = {"not": 0, "partly": 1, "relevant": 2}
JUDGE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_QUERY_CHARS = 10_000


def query_id(text: str) -> str:
    """A stable id for a query text, so the same question judged twice (or by two judges) is one qrels query:
    whitespace is collapsed and stripped, case kept."""
    return "q-" + hashlib.sha1(" ".join(text.split()).encode("utf-8")).hexdigest()[:12]


def is_index(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / DATABASE).is_file()


@dataclass(frozen=True)
class Judgment:
    judge: str
    query: str
    query_id: str
    doc_id: str
    grade: int  # GRADES: 0 not, 1 partly, 2 relevant
    time: str  # ISO-8601 UTC, seconds
    passage_id: str | None = None  # the passage the judge saw; qrels are per document

    def to_dict(self) -> dict[str, str | int | None]:
        return asdict(self)


FIELDS = [f.name for f in fields(Judgment)]


def _validate(judge: object, query: object, doc_id: object, grade: object, passage_id: object) -> None:
    if not isinstance(judge, str) or not JUDGE_NAME.fullmatch(judge):
        raise ValueError(f"judge name must be 1-64 letters, digits, '_', '.' or '-', got {judge!r}")
    if not isinstance(query, str) or not query.strip():
        raise ValueError("query must be a non-blank string")
    if len(query) > MAX_QUERY_CHARS:
        raise ValueError(f"query is {len(query)} characters; at most {MAX_QUERY_CHARS} are accepted")
    if not isinstance(doc_id, str) or doc_id.split() != [doc_id]:
        raise ValueError(f"doc_id must be a non-blank string without whitespace (TREC qrels cannot hold it), "
                         f"got {doc_id!r}")
    if isinstance(grade, bool) or not isinstance(grade, int) or grade not in GRADES.values():
        raise ValueError(f"grade must be an integer {min(GRADES.values())}-{max(GRADES.values())} "
                         f"({', '.join(f'{v} {k}' for k, v in GRADES.items())}), got {grade!r}")
    if passage_id is not None and not isinstance(passage_id, str):
        raise ValueError(f"passage_id must be a string or None, got {passage_id!r}")


def _parse(line: str) -> Judgment:
    """One stored line; raises ValueError (or AttributeError: not a JSON object) for anything that is not one."""
    row = json.loads(line)
    judgment = Judgment(**{name: row.get(name) for name in FIELDS})
    _validate(judgment.judge, judgment.query, judgment.doc_id, judgment.grade, judgment.passage_id)
    if judgment.query_id != query_id(judgment.query) or not isinstance(judgment.time, str):
        raise ValueError("inconsistent judgment")
    return judgment


class JudgmentStore:
    """The judgments of the index at `index_path` (INDEX_DIR/judgments/JUDGE.jsonl)."""

    def __init__(self, index_path: str | os.PathLike[str]) -> None:
        self.index_path = Path(index_path)
        self.directory = self.index_path / JUDGMENTS

    def path(self, judge: str) -> Path:
        return self.directory / f"{judge}.jsonl"

    def record(self, judge: str, query: str, doc_id: str, grade: int, passage_id: str | None = None) -> Judgment:
        """Validate, append durably, return the judgment (the query stored whitespace-collapsed)."""
        _validate(judge, query, doc_id, grade, passage_id)
        if not is_index(self.index_path):
            raise FileNotFoundError(f"no crossrank index at {self.index_path}: judgments are recorded in an index")
        text = " ".join(query.split())
        judgment = Judgment(judge, text, query_id(text), doc_id, grade,
                            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), passage_id)
        line = (json.dumps(judgment.to_dict(), ensure_ascii=False) + "\n").encode("utf-8")
        path = self.path(judge)
        new = not path.exists()
        self.directory.mkdir(exist_ok=True)
        fd = os.open(path, os.O_APPEND | os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # else a writer could see another's append half done and think it torn
            if _torn(path, os.fstat(fd).st_size):
                line = b"\n" + line  # end the line a crash cut short, so this one stays readable
            if os.write(fd, line) != len(line):
                raise OSError(f"{path}: short write (disk full?); the judgment was not recorded")
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:  # a new file's name (and folder) must survive a crash as well as its content
            for folder in (self.directory, self.index_path):
                _fsync(folder)
        return judgment

    def judges(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.jsonl") if JUDGE_NAME.fullmatch(p.stem))

    def _read(self, path: Path) -> list[Judgment]:
        """Every readable line of one judge's file; unreadable ones (a torn last line) skipped with one warning."""
        judgments, bad = [], []
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        judgments.append(_parse(line))
                    except (ValueError, AttributeError):
                        bad.append(number)
        if bad:
            warnings.warn(f"{path}: skipped unreadable line(s) {', '.join(map(str, bad))} (a write cut short by a "
                          "crash?); the other judgments are intact", stacklevel=3)
        return judgments

    def judgments(self, judge: str | None = None, query: str | None = None) -> list[Judgment]:
        """The latest judgment per (judge, query, document), oldest first; optionally one judge's, one query's."""
        judges = [judge] if judge is not None else self.judges()
        latest: dict[tuple[str, str, str], Judgment] = {}
        for name in judges:
            path = self.path(name)
            for judgment in self._read(path) if JUDGE_NAME.fullmatch(name) and path.is_file() else []:
                key = (judgment.judge, judgment.query_id, judgment.doc_id)
                latest.pop(key, None)  # re-inserted: the order is that of each pair's latest judgment
                latest[key] = judgment
        wanted = None if query is None else query_id(query)
        return [j for j in latest.values() if wanted is None or j.query_id == wanted]

    def qrels(self, judge: str | None = None) -> tuple[dict[str, str], Qrels]:
        """(query id → text, query id → doc id → grade). Several judges on one pair combine by the low median of
        their latest grades: a grade counts only if at least half the judges gave it or more, so one generous
        judge cannot make a document relevant, and a tie (2 vs 0) resolves to the lower grade."""
        texts: dict[str, str] = {}
        grades: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for judgment in self.judgments(judge):
            texts[judgment.query_id] = judgment.query
            grades[judgment.query_id][judgment.doc_id].append(judgment.grade)
        return texts, {qid: {doc: statistics.median_low(g) for doc, g in docs.items()} for qid, docs in grades.items()}

    def trec_text(self, judge: str | None = None) -> str:
        """The qrels as TREC qrels lines (`qid 0 docid grade`), sorted."""
        _, qrels = self.qrels(judge)
        return "".join(f"{qid} 0 {doc} {grade}\n" for qid in sorted(qrels) for doc, grade in sorted(qrels[qid].items()))

    def write_trec(self, path: str | os.PathLike[str], judge: str | None = None) -> None:
        Path(path).write_text(self.trec_text(judge), encoding="utf-8")


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torn(path: Path, size: int) -> bool:
    """Whether the file's first `size` bytes end mid-line (a crash during a write)."""
    if size == 0:
        return False
    with path.open("rb") as handle:
        handle.seek(size - 1)
        return handle.read(1) != b"\n"


def judged_dataset(index_path: str | os.PathLike[str], judge: str | None = None) -> BeirDataset:
    """The index's judgments as a BEIR folder (split "judgments"), so everything that reads judged data reads them.

    The corpus is the index's live documents (`Index.documents`); judgments of documents deleted since are left
    out. The folder is cached under the cache dir, keyed by the index, its generation, the judge and the judgment
    files' bytes: it is rebuilt only when one of them changed, in a temporary folder renamed into place."""
    from crossrank.model.checkpoint import cache_dir

    path = Path(index_path)
    store = JudgmentStore(path)
    with Index.open(path) as index:
        digest = hashlib.sha256(f"{path.resolve()}\n{index.generation}\n{judge}\n".encode())
        for file in sorted(store.directory.glob("*.jsonl")):  # hashed before reading: a judgment added between
            digest.update(file.name.encode() + b"\n" + file.read_bytes())  # leaves the key stale, never the folder
        folder = cache_dir() / "judged" / f"{path.name}-{digest.hexdigest()[:16]}"
        if not folder.is_dir():
            texts, qrels = store.qrels(judge)
            if not qrels:
                raise ValueError(f"the index at {path} has no judgments{f' by {judge!r}' if judge else ''}; record "
                                 "some in the UI at /ui of `crossrank serve`, or with the HTTP API "
                                 f"POST /indexes/{path.name}/judgments")
            _materialise(index, texts, qrels, folder)
    return BeirDataset(folder, JUDGMENTS, source_index=path)


def _materialise(index: Index, texts: dict[str, str], qrels: Qrels, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        live = set()
        with (staging / "corpus.jsonl").open("w", encoding="utf-8") as handle:
            for document in index.documents():
                live.add(document.id)
                handle.write(json.dumps({"_id": document.id, "title": document.title, "text": document.text,
                                         "metadata": dict(document.metadata)}, ensure_ascii=False) + "\n")
        qrels = {qid: kept for qid, docs in qrels.items() if (kept := {d: g for d, g in docs.items() if d in live})}
        if not qrels:
            raise ValueError(f"every document judged in {index.path} has been deleted from it since")
        with (staging / "queries.jsonl").open("w", encoding="utf-8") as handle:
            for qid in sorted(qrels):
                handle.write(json.dumps({"_id": qid, "text": texts[qid]}, ensure_ascii=False) + "\n")
        (staging / "qrels").mkdir()
        write_qrels(qrels, staging / "qrels" / f"{JUDGMENTS}.tsv")
        try:
            os.rename(staging, folder)
        except OSError:
            if not folder.is_dir():  # else another process built the same folder first: use that one
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
