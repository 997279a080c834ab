"""BM25 over passages with tantivy: a persistent index of (row id, title, body), scored like BEIR's
Elasticsearch baseline (k1=1.2, b=0.75, best field of title/body plus 0.5 × the other).

Queries are analysed with the index's own analyser and built from term queries, so no query syntax can fail
to parse; a query with no searchable terms (only stop words or punctuation) matches nothing.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tantivy

GENERATION_FILE = "generation.json"
TIE_BREAKER = 0.5


def analyzer(stemming: bool) -> tantivy.TextAnalyzer:
    """Lower-cased words, English stop words removed and (optionally) Porter-stemmed, like ES's `english`."""
    builder = (tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).filter(tantivy.Filter.remove_long(40))
               .filter(tantivy.Filter.lowercase()).filter(tantivy.Filter.stopword("english")))
    if stemming:
        builder = builder.filter(tantivy.Filter.stemmer("english"))
    return builder.build()


def query_words(text: str) -> list[str]:
    """The query's words as BM25 matches them, before stemming (lower-cased, English stop words dropped, each
    once): what a UI marks in a passage, so "capital of France" marks "capital" and "france" but never "of"."""
    return list(dict.fromkeys(analyzer(stemming=False).analyze(text)))


class BM25Index:
    """A tantivy index in `path` whose documents are passage rows; `generation` says which commit it holds."""

    def __init__(self, path: Path, *, stemming: bool = True, title_boost: float = 1.0) -> None:
        if title_boost <= 0:
            raise ValueError(f"title_boost must be positive, got {title_boost}")
        path.mkdir(parents=True, exist_ok=True)
        self.path, self.title_boost = path, title_boost
        self.analyzer_name = "crossrank_en_stem" if stemming else "crossrank_en"
        self.analyzer = analyzer(stemming)
        builder = tantivy.SchemaBuilder()
        builder.add_integer_field("row", stored=False, indexed=True, fast=True)
        builder.add_text_field("title", tokenizer_name=self.analyzer_name, index_option="freq")
        builder.add_text_field("body", tokenizer_name=self.analyzer_name, index_option="freq")
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema, path=str(path), reuse=True)
        # Reload only when told (`apply`, `reload`; the store compares generations across processes). tantivy's
        # default reader reloads from a polling thread whose first poll takes the meta lock, recreating its lock
        # file: an index opened just before its folder is deleted could refill the folder mid-delete.
        self.index.config_reader(reload_policy="Manual")
        self.index.register_tokenizer(self.analyzer_name, self.analyzer)

    @property
    def generation(self) -> int:
        file = self.path / GENERATION_FILE
        return int(json.loads(file.read_text())["generation"]) if file.is_file() else 0

    def apply(self, added: Sequence[tuple[int, str, str]], removed: Sequence[int], generation: int) -> None:
        """Remove rows, add (row, title, body) rows, commit, then record the generation (after the commit).

        Removing a row that is absent is harmless and re-adding is preceded by removal, so replaying the same
        change after a crash converges to the same index.
        """
        writer = self._writer()
        for row in [*removed, *(r for r, _, _ in added)]:
            writer.delete_documents_by_term("row", row)
        for row, title, body in added:
            writer.add_document(tantivy.Document(row=row, title=title, body=body))
        writer.commit()
        writer.wait_merging_threads()
        _write_json_atomically(self.path / GENERATION_FILE, {"generation": generation})
        self.index.reload()

    def clear(self) -> None:
        writer = self._writer()
        writer.delete_all_documents()
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()

    def _writer(self) -> tantivy.IndexWriter:
        """A writer that first removes files no commit refers to. A process killed inside `commit` leaves the
        delete file it was writing (named by segment and operation stamp); replaying the same change after the
        crash reaches the same stamp, and tantivy refuses to overwrite the leftover."""
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        writer.garbage_collect_files()
        return writer

    def terms(self, text: str) -> list[str]:
        return [token for token in self.analyzer.analyze(text)]

    def search(self, text: str, limit: int) -> list[tuple[int, float]]:
        """(row, score) best first; empty when the query has no searchable terms."""
        terms = self.terms(text)
        if not terms or limit <= 0:
            return []
        fields = []
        for name, boost in (("body", 1.0), ("title", self.title_boost)):
            clauses = [(tantivy.Occur.Should, tantivy.Query.term_query(self.schema, name, term)) for term in terms]
            query = tantivy.Query.boolean_query(clauses)
            fields.append(query if boost == 1.0 else tantivy.Query.boost_query(query, boost))
        query = tantivy.Query.disjunction_max_query(fields, TIE_BREAKER)
        searcher = self.index.searcher()
        hits = searcher.search(query, limit, count=False).hits
        rows = searcher.fast_field_values("row", [address for _, address in hits])
        return [(int(row), float(score)) for (score, _), row in zip(hits, rows, strict=True)]

    def reload(self) -> None:
        self.index.reload()

    def __len__(self) -> int:
        return int(self.index.searcher().num_docs)


class CorpusBM25:
    """BM25 over texts held in memory (a throwaway BM25Index in a temporary directory): mining negatives, teacher
    and first-stage scores, and a run for judged sets that ship none — with no index directory to manage."""

    def __init__(self, texts: Sequence[str], ids: Sequence[str] | None = None,
                 titles: Sequence[str] | None = None) -> None:
        if not texts:
            raise ValueError("cannot index an empty corpus")
        self.texts = list(texts)
        self.ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
        titles = list(titles) if titles is not None else [""] * len(self.texts)
        self._directory = tempfile.TemporaryDirectory(prefix="crossrank-bm25-")
        self.index = BM25Index(Path(self._directory.name))
        self.index.apply([(row, title, text) for row, (title, text) in enumerate(zip(titles, self.texts, strict=True))],
                         [], generation=1)

    def search(self, queries: Sequence[str], k: int) -> tuple[list[list[int]], list[np.ndarray]]:
        """Per query, the rows and scores of its top k matching texts (fewer when fewer match)."""
        hits = [self.index.search(query, k) for query in queries]
        return [[row for row, _ in h] for h in hits], [np.array([s for _, s in h], dtype=np.float32) for h in hits]

    def score(self, query: str, rows: Sequence[int]) -> np.ndarray:
        """BM25 scores of the given rows (0 for rows the query does not match)."""
        scores = dict(self.index.search(query, len(self.texts)))
        return np.array([scores.get(int(row), 0.0) for row in rows], dtype=np.float32)

    def run(self, queries: Mapping[str, str], k: int) -> dict[str, dict[str, float]]:
        """query id → top-k id → score, ties by id (as `Retrieve` orders them)."""
        return {qid: {self.ids[row]: score for row, score in sorted(self.index.search(text, k),
                                                                       key=lambda hit: (-hit[1], self.ids[hit[0]]))}
                for qid, text in queries.items()}


def _write_json_atomically(file: Path, value: object) -> None:
    temporary = file.with_suffix(".tmp")
    with temporary.open("w") as handle:
        json.dump(value, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, file)
    directory = os.open(file.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
