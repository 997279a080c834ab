"""The on-disk index: one directory holding passages, their vectors, and a BM25 index, kept consistent.

Layout of DIR:

    passages.sqlite   passages (text, title, doc id, position, metadata JSON, vector BLOB) in WAL mode,
                      each row stamped with the generation that added it and the one that deleted it
    bm25/             tantivy index of the live rows, plus generation.json: the generation it reflects
    writer.lock       held (flock) by the one process allowed to write
    segments/         optional: a factorised cross-encoder's vectors of every passage's windows, one folder per
                      model and generation (`crossrank.model.segment_store`), so a search encodes only its query

Commit protocol. A commit is ONE SQLite transaction that inserts the new passages and their vectors, marks
replaced/deleted ones, and bumps `generation`: when it returns, the content survives kill -9, and a crash
before it leaves nothing of that batch (vectors live in the same row, so there are no orphan vectors). The
BM25 index is derived: after the SQLite commit it is brought up to date from the rows changed since its own
generation, and a writer that opens the index after a crash replays whatever it missed. Readers (any number
of processes) search while a writer ingests: every hit is looked up in SQLite, so they see the last committed
generation and never a deleted or half-written passage.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

import numpy as np
from tqdm.auto import tqdm

from crossrank.model.segment_store import META as SEGMENT_META
from crossrank.model.segment_store import SegmentStore, SegmentStoreError, readable_in_place, write_segment_store
from crossrank.retrieve.bm25 import BM25Index
from crossrank.retrieve.dense import DEFAULT_EXACT_THRESHOLD, DenseIndex
from crossrank.store.chunking import Chunker, stitch
from crossrank.store.filters import filter_sql
from crossrank.store.loaders import (
    DEFAULT_MAX_FILE_BYTES,
    FieldMapping,
    LoadReport,
    load_documents,
)
from crossrank.types import Candidate, Document, Query

log = logging.getLogger(__name__)
FORMAT = 1
DATABASE = "passages.sqlite"
ADAPTED_MODEL = "adapted-model"
SEGMENTS = "segments"
SEGMENT_CHUNK = 2048  # passages tokenised and encoded per step while a segment store is written
RETRIEVERS = ("bm25", "dense")
ROW_CACHE_SIZE = 200_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS passages (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    pid TEXT NOT NULL, doc_id TEXT NOT NULL, position INTEGER NOT NULL,
    title TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT NOT NULL, vector BLOB,
    added INTEGER NOT NULL, deleted INTEGER
);
CREATE INDEX IF NOT EXISTS passages_live_doc ON passages (doc_id) WHERE deleted IS NULL;
CREATE INDEX IF NOT EXISTS passages_added ON passages (added);
CREATE INDEX IF NOT EXISTS passages_deleted ON passages (deleted);
CREATE TABLE IF NOT EXISTS fields (name TEXT PRIMARY KEY);
"""


def adapted_model(path: str | os.PathLike[str]) -> Path | None:
    """The cross-encoder `crossrank adapt` fitted to the index at `path`, if it has one: `search` reranks with it
    unless told otherwise. It is installed whole (by rename), so a config.json means a complete model."""
    model = Path(path) / ADAPTED_MODEL
    return model if (model / "config.json").is_file() else None


def _written_under(folder: Path) -> str:
    """The fingerprint a segment store folder (`<fingerprint>.g<generation>`) was written under."""
    return folder.name.rsplit(".g", 1)[0]


def _factorised(model: Any) -> Any:
    """The factorised cross-encoder behind `model` (itself, or the one a scorer names as its `encoder`), else None."""
    model = getattr(model, "encoder", None) or model
    return model if getattr(model, "factorised", None) is not None else None


class IndexLockedError(RuntimeError):
    """Another process holds the index's writer lock."""


class NotAnIndexError(FileNotFoundError):
    """The path does not hold a crossrank index."""


class IndexExistsError(FileExistsError):
    """`Index.create` found something already at the path (possibly an index another process just created)."""


@dataclass(frozen=True)
class IndexConfig:
    """Fixed when the index is created. `dense_model` None means the bundled all-MiniLM-L6-v2."""

    passage_tokens: int = 256
    overlap: int = 32
    stemming: bool = True
    title_boost: float = 1.0
    dense: bool = True
    dense_model: str | None = None
    exact_threshold: int = DEFAULT_EXACT_THRESHOLD

    def validate(self) -> None:
        Chunker.validate(self.passage_tokens, self.overlap)
        if not self.title_boost > 0:
            raise ValueError(f"title_boost must be positive, got {self.title_boost}")
        if self.exact_threshold < 0:
            raise ValueError(f"exact_threshold must be non-negative, got {self.exact_threshold}")
        if self.dense_model is not None and not Path(self.dense_model).is_dir():
            raise ValueError(f"dense_model must be a checkpoint directory, got {self.dense_model!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> IndexConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class SegmentsSummary:
    """What `Index.store_segments` wrote: distinct window segments stored, of which `encoded` ran the model
    (the rest were read from the previous store)."""

    path: Path
    passages: int
    segments: int
    encoded: int


@dataclass(frozen=True)
class CommitSummary:
    """What one commit wrote: documents (re)indexed and their passages, documents deleted, and documents left as
    they were because the staged version equals the indexed one."""

    written: int = 0
    passages: int = 0
    deleted: int = 0
    unchanged: int = 0


@dataclass
class IngestReport:
    """Counts for one ingest: `documents` read, of which `unchanged` were already indexed exactly so (kept, not
    re-embedded); `passages` written; `skipped` lists (file or file:line, reason), `warnings` (file, what was
    guessed)."""

    files: int = 0
    documents: int = 0
    unchanged: int = 0
    passages: int = 0
    commits: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


class Index:
    """An index directory opened for reading (any number of processes) or writing (one, via a lock)."""

    def __init__(self, path: Path, writable: bool) -> None:
        database = path / DATABASE
        if not database.is_file():
            raise NotAnIndexError(f"no crossrank index at {path} (create one with `crossrank index {path} --from ...`)")
        self.path, self.writable = path, writable
        self._lock = threading.RLock()  # guards in-memory state: staged changes, the dense index, BM25 sync
        self._commit_lock = threading.Lock()  # one commit at a time
        self._lock_file = None
        if writable:
            self._lock_file = (path / "writer.lock").open("a")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self._lock_file.close()
                raise IndexLockedError(f"another process is writing to {path}") from exc
        self._database = database
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        try:
            meta = dict(self.db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as exc:  # not SQLite, or a creation killed before its first commit
            self.close()
            raise NotAnIndexError(f"{path}: not a usable crossrank index ({exc}); delete it and index again") from exc
        if int(meta.get("format", -1)) != FORMAT:
            self.close()
            raise NotAnIndexError(f"{path}: unsupported index format {meta.get('format')!r} (expected {FORMAT})")
        self.config = IndexConfig.from_dict(json.loads(meta["config"]))
        self.bm25 = BM25Index(path / "bm25", stemming=self.config.stemming, title_boost=self.config.title_boost)
        self._encoder: Any = None
        self._chunker: Chunker | None = None
        self.dense: DenseIndex | None = None
        self.generation = 0  # what this handle has loaded
        self._pending: dict[str, Document | None] = {}  # id -> latest staged state (None: delete)
        self.last_commit = CommitSummary()
        self._in_flight: dict[str, Document | None] = {}  # what the running commit is writing
        self._row_cache: dict[int, tuple[Any, ...]] = {}
        self._segment_stores: dict[str, SegmentStore] = {}  # by the fingerprint it was written under, its newest
        if writable:
            self._sync_bm25()
        elif self.bm25.generation < self._committed_generation():
            self._repair_bm25()
        self._bm25_behind = self.bm25.generation < self._committed_generation()  # `refresh` looks again while so
        self._load_dense()

    # ---- opening -------------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], config: IndexConfig | None = None) -> Index:
        """A new, empty index at `path` (which must not exist or be an empty directory), opened for writing.

        Built in a hidden sibling folder and renamed into place, so the path never holds half an index."""
        path = Path(path)
        config = config or IndexConfig()
        config.validate()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            what = "an index" if (path / DATABASE).exists() else "something that is not an empty directory"
            raise IndexExistsError(f"{path} already holds {what}; open it, or choose another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.creating-", dir=path.parent))
        try:
            db = _connect(staging / DATABASE)
            try:
                db.execute("BEGIN IMMEDIATE")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", str(FORMAT)), ("generation", "0"),
                                                                  ("config", json.dumps(asdict(config)))])
                db.execute("COMMIT")
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the renamed folder must not depend on the WAL
            finally:
                db.close()
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # an empty directory the caller made for us
            os.rename(staging, path)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise IndexExistsError(f"another process created an index at {path} at the same moment; "
                                       "open that one (it is valid)") from exc
            raise
        return cls(path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False) -> Index:
        path = Path(path)
        if not path.exists():
            raise NotAnIndexError(f"no such index directory: {path}")
        return cls(path, writable)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], config: IndexConfig | None = None) -> Index:
        """Open for writing if it exists (its stored config wins), else create it with `config`."""
        path = Path(path)
        if not (path / DATABASE).is_file():
            try:
                return cls.create(path, config)
            except IndexExistsError:
                if not (path / DATABASE).is_file():
                    raise
        return cls(path, writable=True)

    @property
    def db(self) -> sqlite3.Connection:
        """This thread's connection: WAL lets readers in many threads run beside the writer's transaction."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = _connect(self._database)
            with self._lock:
                self._connections.append(connection)
        return connection

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
            self._local = threading.local()
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- models, loaded on first use -----------------------------------------------------------------------

    @property
    def encoder(self) -> Any:
        if not self.config.dense:
            raise ValueError(f"the index at {self.path} was built without dense vectors")
        with self._lock:
            if self._encoder is None:
                from crossrank.model.embedding import BiEncoder

                self._encoder = BiEncoder.from_pretrained(self.config.dense_model)
            return self._encoder

    @property
    def chunker(self) -> Chunker:
        with self._lock:
            if self._chunker is None:
                from crossrank.model.checkpoint import bi_encoder_path
                from crossrank.model.tokenization import load_tokenizer

                tokenizer, _ = load_tokenizer(Path(self.config.dense_model or bi_encoder_path()))
                self._chunker = Chunker(tokenizer, self.config.passage_tokens, self.config.overlap)
            return self._chunker

    # ---- writing --------------------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.path} is open read-only; use Index.open(path, writable=True)")

    def add(self, documents: Iterable[Document | Mapping[str, Any]]) -> int:
        """Stage documents for the next commit; a document id already indexed (or staged) is replaced.

        A document without text is refused: it would index nothing and silently replace what the id held."""
        self._require_writable()
        staged = []
        for i, value in enumerate(documents):
            document = Document.coerce(value, i)
            if document.id is None or not str(document.id).strip():
                raise ValueError(f"document {i}: an indexed document needs a non-empty id")
            if not document.text.strip():
                raise ValueError(f"document {document.id!r} has no text; delete the id instead of emptying it")
            staged.append(document)
        with self._lock:
            self._pending.update((d.id, d) for d in staged)
        return len(staged)

    def delete(self, doc_ids: Iterable[str]) -> list[str]:
        """Stage deletions for the next commit; returns the ids that are neither indexed nor staged (nothing to
        delete). A delete is ordered after every add acknowledged before it, including one being committed."""
        self._require_writable()
        unknown = []
        for doc_id in doc_ids:
            with self._lock:
                if doc_id in self._pending:
                    present = self._pending[doc_id] is not None
                elif doc_id in self._in_flight:
                    present = self._in_flight[doc_id] is not None
                else:
                    present = self.db.execute("SELECT 1 FROM passages WHERE doc_id = ? AND deleted IS NULL LIMIT 1",
                                              (doc_id,)).fetchone() is not None
                if present:
                    self._pending[doc_id] = None
                else:
                    unknown.append(doc_id)
        return unknown

    @property
    def staged(self) -> int:
        """Adds and deletes waiting for the next commit."""
        return len(self._pending)

    def commit(self, *, show_progress: bool = False) -> int:
        """Make staged changes durable and searchable; returns the new generation (unchanged if nothing staged).

        Chunking and embedding run outside the lock, so searches in other threads go on meanwhile; changes
        staged during that time wait for the next commit. If the commit fails, its changes stay staged (under
        any newer ones) and nothing of it is written.
        """
        self._require_writable()
        with self._commit_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
                self._in_flight = batch
            if not batch:
                self.last_commit = CommitSummary()
                return self.generation
            try:
                documents = [document for document in batch.values() if document is not None]
                rows, unchanged = [], set()
                for document, passages in zip(documents, self.chunker.split([d.text for d in documents]),
                                              strict=True):
                    metadata = json.dumps(dict(document.metadata), ensure_ascii=False, default=str)
                    new = [(f"{document.id}#{p}", document.id, p, document.title, text, metadata)
                           for p, text in enumerate(passages)]
                    if self._indexed_rows(document.id) == new:
                        unchanged.add(document.id)  # same passages: re-embedding would only cost time
                    else:
                        rows += new
                vectors: list[bytes | None] = [None] * len(rows)
                if self.config.dense and rows:
                    contents = [Document(text=r[4], title=r[3]).content for r in rows]
                    vectors = [v.tobytes() for v in self.encoder.encode(contents, show_progress_bar=show_progress)]
                replaced = set(batch) - unchanged
                self.last_commit = CommitSummary(len(documents) - len(unchanged), len(rows),
                                                 len(batch) - len(documents), len(unchanged))
                generation = self.generation if not replaced else self._write(
                    rows, vectors, replaced, {k for d in documents for k in d.metadata})
            except BaseException:
                with self._lock:
                    self._pending = {**batch, **self._pending}
                    self._in_flight = {}
                raise
            with self._lock:
                self._in_flight = {}
                self._sync_bm25()
                self._catch_up()
            return generation

    def _indexed_rows(self, doc_id: str) -> list[tuple[Any, ...]]:
        """The live passages of `doc_id` as commit builds them (pid, doc_id, position, title, text, metadata)."""
        return [tuple(r) for r in self.db.execute(
            "SELECT pid, doc_id, position, title, text, metadata FROM passages WHERE doc_id = ? AND deleted IS NULL "
            "ORDER BY position", (doc_id,))]

    def _write(self, rows: list[tuple[Any, ...]], vectors: list[bytes | None], replaced: set[str],
               names: set[str]) -> int:
        """The commit point: one SQLite transaction for new passages, their vectors, deletions and generation."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            generation = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]) + 1
            db.executemany("UPDATE passages SET deleted = ?, text = '', vector = NULL "
                           "WHERE doc_id = ? AND deleted IS NULL", [(generation, d) for d in replaced])
            db.executemany("INSERT INTO passages (pid, doc_id, position, title, text, metadata, vector, added) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*row, vector, generation) for row, vector in zip(rows, vectors, strict=True)])
            db.executemany("INSERT OR IGNORE INTO fields VALUES (?)", [(n,) for n in names])
            db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(generation),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return generation

    def ingest(self, paths: Sequence[str | os.PathLike[str]], *, mapping: FieldMapping | None = None,
               commit_every: int = 1000, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               show_progress: bool = False) -> IngestReport:
        """Load files and folders, index them, committing every `commit_every` documents and at the end."""
        self._require_writable()
        if commit_every <= 0:
            raise ValueError(f"commit_every must be positive, got {commit_every}")
        loaded = LoadReport()
        report = IngestReport()

        def commit() -> None:
            before = self.generation
            self.commit(show_progress=show_progress)
            report.commits += self.generation != before
            report.unchanged += self.last_commit.unchanged
            report.passages += self.last_commit.passages

        with tqdm(desc="ingest", unit="doc", disable=not show_progress) as progress:
            for document in load_documents(paths, mapping, max_file_bytes, report=loaded):
                self.add([document])
                progress.update(1)
                if self.staged >= commit_every:
                    commit()
        if self.staged:
            commit()
        report.files, report.documents = loaded.files, loaded.documents
        report.skipped, report.warnings = loaded.skipped, loaded.warnings
        return report

    # ---- keeping derived structures in step -----------------------------------------------------------------

    def _committed_generation(self) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def _changes_since(self, generation: int, columns: str) -> Iterator[tuple[Any, ...]]:
        """Rows added or deleted after `generation`, read in one snapshot (deleted ones first)."""
        return iter(self.db.execute(
            f"SELECT {columns} FROM passages WHERE added > ? OR deleted > ? ORDER BY deleted IS NULL, row",
            (generation, generation)).fetchall())

    def _sync_bm25(self) -> None:
        """Replay committed changes the BM25 index has not seen (after a commit, or a crash between the two)."""
        since = self.bm25.generation
        target = self._committed_generation()
        if since == target:
            return
        if since > target:  # the database is the source of truth; a newer BM25 index cannot be trusted
            self.bm25.clear()
            since = 0
        added, removed = [], []
        for row, title, text, deleted in self._changes_since(since, "row, title, text, deleted"):
            if deleted is None:
                added.append((row, title, text))
            else:
                removed.append(row)
        self.bm25.apply(added, removed, target)

    def _repair_bm25(self) -> None:
        """A reader found BM25 behind the database: the writer died between its commit and its BM25 update. If
        no writer is alive (the lock is free), replay the missed changes under the lock; a live writer is about
        to do it itself, and `refresh` looks again on the next search."""
        with (self.path / "writer.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            try:
                self.bm25.reload()
                self._sync_bm25()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _load_dense(self) -> None:
        self.generation = self._committed_generation()
        if not self.config.dense:
            return
        rows, blobs = [], []
        for row, blob in self.db.execute("SELECT row, vector FROM passages WHERE deleted IS NULL ORDER BY row"):
            rows.append(row)
            blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32)
        dimension = len(vectors) // len(rows) if rows else None
        self.dense = DenseIndex(dimension or self._dimension(), exact_threshold=self.config.exact_threshold)
        if rows:
            self.dense.add(np.array(rows), vectors.reshape(len(rows), -1))

    def _dimension(self) -> int:
        from crossrank.model.checkpoint import Checkpoint, bi_encoder_path

        return int(Checkpoint.open(self.config.dense_model or bi_encoder_path()).config["hidden_size"])

    def _catch_up(self) -> None:
        """Bring the dense index and the row cache to the committed generation, from the rows changed since."""
        target = self._committed_generation()
        if self.dense is not None and target != self.generation:
            added, removed, vectors = [], [], []
            for row, blob, deleted in self._changes_since(self.generation, "row, vector, deleted"):
                if deleted is None:
                    added.append(row)
                    vectors.append(np.frombuffer(blob, dtype=np.float32))
                else:
                    removed.append(row)
            self.dense.remove(np.array(removed + added, dtype=np.int64))
            if added:
                self.dense.add(np.array(added), np.stack(vectors))
        if target != self.generation:
            self._row_cache = {}
        self.generation = target

    def refresh(self) -> None:
        """Catch up with commits made by a writer in another process (cheap when there are none)."""
        with self._lock:
            committed = self._committed_generation()
            if committed != self.generation or self._bm25_behind:
                self.bm25.reload()
                if not self.writable and self.bm25.generation < committed:
                    self._repair_bm25()
                self._bm25_behind = self.bm25.generation < committed
                self._catch_up()

    # ---- a factorised cross-encoder's segment vectors -------------------------------------------------------

    def _segment_folders(self, fingerprint: str) -> list[Path]:
        """Complete stores of `fingerprint`'s vectors ("*": any model's), oldest generation first; a writer's
        unfinished `.`-folder is not one."""
        found = [(int(path.name.rsplit(".g", 1)[1]), path) for path in (self.path / SEGMENTS).glob(f"{fingerprint}.g*")
                 if not path.name.startswith(".") and (path / SEGMENT_META).is_file()
                 and path.name.rsplit(".g", 1)[1].isdigit()]
        return [path for _, path in sorted(found)]

    def keeps_segments(self) -> bool:
        """True when the index stores some reranker's passage vectors (`crossrank index --segments`)."""
        return bool(self._segment_folders("*"))

    def _readable_segment_folders(self, fingerprint: str) -> list[Path]:
        """The stores a model of `fingerprint` reads: its own if the index has them, else the same weights' at the
        other faithful precision (`readable_in_place`), oldest generation first."""
        return self._segment_folders(fingerprint) or [
            path for path in self._segment_folders("*") if readable_in_place(_written_under(path), fingerprint)]

    def segment_store(self, fingerprint: str, *, own: bool = False) -> SegmentStore | None:
        """The newest store of passage vectors the model `fingerprint` reads (`CrossEncoder.fingerprint`; `own`:
        only those written at its own backend and precision), if one was written. Passages committed since are not
        in it; the model encodes those at query time."""
        folders = self._segment_folders(fingerprint) if own else self._readable_segment_folders(fingerprint)
        if not folders:
            return None
        newest, written_under = folders[-1], _written_under(folders[-1])
        with self._lock:
            store = self._segment_stores.get(written_under)
            if store is None or store.path != newest:
                try:
                    store = self._segment_stores[written_under] = SegmentStore(newest)
                except SegmentStoreError as exc:  # replaced by a writer as we opened it, or damaged: encode instead
                    log.warning("segment store not read: %s", exc)
                    return None
            return store

    def lend_segments(self, model: Any) -> bool:
        """Have `model` read this index's stored vectors of its passages when it reranks them: True if it now does
        (a factorised `CrossEncoder` that `store_segments` ran for, or a scorer whose pairs reach one, named by its
        `encoder`). Any other scorer is left as it is."""
        model = _factorised(model)
        if model is None or not hasattr(model, "use_segment_store"):
            return False
        store = self.segment_store(model.fingerprint)
        model.use_segment_store(str(self.path.resolve()), store)
        return store is not None

    def lacks_segments(self, model: Any) -> bool:
        """True when the index stores some reranker's passage vectors but not `model`'s (as `lend_segments` reads
        it; e.g. a model trained since the index was built): searches reranking with it encode every candidate."""
        model = _factorised(model)
        return model is not None and self.keeps_segments() and not self._readable_segment_folders(model.fingerprint)

    def store_segments(self, model: Any, *, show_progress: bool = False) -> SegmentsSummary:
        """Store `model`'s vector of every live passage's document windows (a factorised `CrossEncoder`), so a
        search reranking with it encodes only its query. Vectors the previous store holds are reused, so after an
        ingest only new passages run the model; the new store replaces the old one whole."""
        self._require_writable()
        fingerprint = model.fingerprint
        with self._commit_lock:  # the passages read below are one generation's
            generation = self._committed_generation()
            previous = self.segment_store(fingerprint, own=True)  # a store holds one precision's vectors
            target = self.path / SEGMENTS / f"{fingerprint}.g{generation}"
            passages = self.count()["passages"]
            if previous is not None and previous.path == target:
                return SegmentsSummary(target, passages, len(previous), 0)
            for unfinished in (self.path / SEGMENTS).glob(f".{fingerprint}.g*"):  # a writer killed mid-way
                shutil.rmtree(unfinished, ignore_errors=True)
            with tqdm(total=passages, desc="segments", unit="passage", disable=not show_progress) as progress:
                cursor = self.db.execute("SELECT title, text FROM passages WHERE deleted IS NULL ORDER BY row")
                batches = ([Document(text=text, title=title).content for title, text in batch]
                           for batch in iter(lambda: cursor.fetchmany(SEGMENT_CHUNK), []))
                store, encoded = write_segment_store(model, batches, target, previous, progress,
                                                     generation=generation, passages=passages)
            for folder in self._segment_folders(fingerprint):
                if folder != target:  # readers that opened it keep their memory map (the inode lives on)
                    shutil.rmtree(folder, ignore_errors=True)
            return SegmentsSummary(target, passages, len(store), encoded)

    # ---- reading --------------------------------------------------------------------------------------------

    def fields(self) -> list[str]:
        return [name for (name,) in self.db.execute("SELECT name FROM fields ORDER BY name")]

    def _allowed(self, filters: Mapping[str, Any] | None) -> np.ndarray | None:
        if filters is None:
            return None
        where, params = filter_sql(filters, set(self.fields()))
        rows = self.db.execute(f"SELECT row FROM passages WHERE deleted IS NULL AND {where}", params).fetchall()
        return np.array([r for (r,) in rows], dtype=np.int64)

    def retrieve(self, retriever: str, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        """Top-k passages per query from "bm25" or "dense", with the score and rank recorded under that name."""
        if retriever not in RETRIEVERS:
            raise ValueError(f"unknown retriever {retriever!r}; this index has {', '.join(self.retrievers)}")
        self.refresh()
        allowed = [self._allowed(q.filters) for q in queries]
        if retriever == "bm25":
            hits = [self._bm25(q.text, k, a) for q, a in zip(queries, allowed, strict=True)]
        else:
            vectors = self.encoder.encode([q.text for q in queries])  # raises for an index without vectors
            with self._lock:
                hits = self._dense(vectors, k, allowed)
        return [self._candidates(h, retriever) for h in hits]

    @property
    def retrievers(self) -> list[str]:
        return list(RETRIEVERS) if self.config.dense else ["bm25"]

    def _bm25(self, text: str, k: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        if allowed is None:
            return self.bm25.search(text, k)
        allowed_set = set(allowed.tolist())
        limit = k * 4
        while True:
            hits = self.bm25.search(text, limit)
            kept = [h for h in hits if h[0] in allowed_set]
            if len(kept) >= k or len(hits) < limit:
                return kept[:k]
            limit *= 4

    def _dense(self, vectors: np.ndarray, k: int, allowed: list[np.ndarray | None]) -> list[list[tuple[int, float]]]:
        assert self.dense is not None
        out: list[list[tuple[int, float]]] = [[] for _ in vectors]
        unfiltered = [i for i, a in enumerate(allowed) if a is None]
        if unfiltered:
            for i, hits in zip(unfiltered, self.dense.search(vectors[unfiltered], k), strict=True):
                out[i] = hits
        for i, a in enumerate(allowed):
            if a is not None:
                out[i] = self.dense.search_exact(vectors[i], k, a)
        return out

    def _candidates(self, hits: list[tuple[int, float]], name: str) -> list[Candidate]:
        rows = self._rows([row for row, _ in hits])
        out = []
        for row, score in hits:
            if row in rows:  # a reader whose BM25 view is older than the database skips rows deleted since
                pid, doc_id, title, text, metadata = rows[row]
                out.append(Candidate(id=pid, doc_id=doc_id, text=text, title=title, metadata=metadata, score=score,
                                     scores={name: score}, ranks={name: len(out) + 1}))
        return out

    def _rows(self, rows: list[int]) -> dict[int, tuple[Any, ...]]:
        """Live passages by row, through a cache that every new generation empties (rows never change within one)."""
        cache = self._row_cache
        missing = [row for row in rows if row not in cache]
        if missing:
            if len(cache) + len(missing) > ROW_CACHE_SIZE:
                cache.clear()
            parsed: dict[str, Mapping[str, Any]] = {}
            for row, pid, doc_id, title, text, metadata in self.db.execute(
                    "SELECT row, pid, doc_id, title, text, metadata FROM passages "
                    "WHERE row IN (SELECT value FROM json_each(?)) AND deleted IS NULL", (json.dumps(missing),)):
                if metadata not in parsed:
                    parsed[metadata] = json.loads(metadata)
                cache[row] = (pid, doc_id, title, text, parsed[metadata])
        return {row: cache[row] for row in rows if row in cache}

    def passages(self, doc_id: str) -> list[Candidate]:
        """A document's live passages in order (empty if the id is unknown)."""
        rows = self.db.execute("SELECT pid, doc_id, title, text, metadata FROM passages "
                               "WHERE doc_id = ? AND deleted IS NULL ORDER BY position", (doc_id,)).fetchall()
        return [Candidate(id=pid, doc_id=d, text=text, title=title, metadata=json.loads(m))
                for pid, d, title, text, m in rows]

    def documents(self) -> Iterator[Document]:
        """The live documents, rebuilt from their passages (`chunking.stitch`): id, title, metadata and text, the
        text equal to what was indexed up to whitespace where passages were cut."""
        rows = self.db.execute("SELECT doc_id, title, text, metadata FROM passages WHERE deleted IS NULL "
                               "ORDER BY doc_id, position")
        for doc_id, group in itertools.groupby(rows, key=lambda row: row[0]):
            passages = list(group)
            _, title, _, metadata = passages[0]
            yield Document(stitch([text for _, _, text, _ in passages]), title=title, id=doc_id,
                           metadata=json.loads(metadata))

    def sample_passages(self, n: int, seed: int = 0) -> list[Candidate]:
        """Up to n live passages drawn uniformly without replacement, in draw order: the same seed over the same
        generation draws the same passages (pseudo-queries for `crossrank adapt`)."""
        rows = np.fromiter((row for (row,) in self.db.execute(
            "SELECT row FROM passages WHERE deleted IS NULL ORDER BY row")), dtype=np.int64)
        chosen = rows[np.random.default_rng(seed).choice(len(rows), min(n, len(rows)), replace=False)].tolist()
        found = self._rows(chosen)
        return [Candidate(id=pid, doc_id=doc_id, text=text, title=title, metadata=metadata)
                for pid, doc_id, title, text, metadata in (found[row] for row in chosen if row in found)]

    def count(self) -> dict[str, int]:
        documents, passages = self.db.execute(
            "SELECT COUNT(DISTINCT doc_id), COUNT(*) FROM passages WHERE deleted IS NULL").fetchone()
        return {"documents": int(documents), "passages": int(passages)}

    def info(self) -> dict[str, Any]:
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "path": str(self.path), "generation": self._committed_generation(), **self.count(),
            "bm25": {"generation": self.bm25.generation, "passages": len(self.bm25)},
            "dense": None if self.dense is None else {"vectors": len(self.dense), "search": self.dense.kind,
                                                      "dimension": self.dense.dimension},
            "metadata_fields": self.fields(), "config": asdict(self.config), "bytes": size,
            "segment_stores": [{"path": str(folder.relative_to(self.path)),
                                **json.loads((folder / SEGMENT_META).read_text(encoding="utf-8"))}
                               for folder in sorted((self.path / SEGMENTS).glob("*.g*"))
                               if (folder / SEGMENT_META).is_file()],
        }
