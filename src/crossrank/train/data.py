"""Training data: ranking lists (one query, its candidates, optional labels, teacher and first-stage scores).

Every source becomes the same `RankingList`, so one trainer and one loss set serve judged runs (TREC DL),
given candidate lists (WikiQA/TrecQA), BM25-mined hard negatives and self-supervised pseudo-queries. Lists are
saved as one gzip'd JSON-lines file with a shared text table, so a prepared set travels as a single file.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crossrank.datasets import BeirDataset, Qrels, ranked
from crossrank.retrieve.bm25 import CorpusBM25
from crossrank.types import Document


@dataclass
class RankingList:
    """A query and its candidates. `labels` are graded judgments (0 = unjudged/negative), `teacher` a teacher's
    logits, `first_stage` the retriever's scores; any of the three may be absent (None). `signals` holds each
    named teacher's raw scores (the ensemble's inputs, cached so weights can be refitted without rescoring)."""

    query: str
    documents: list[str]
    labels: np.ndarray | None = None
    teacher: np.ndarray | None = None
    first_stage: np.ndarray | None = None
    source: str = ""
    query_id: str = ""
    document_ids: list[str] | None = None
    signals: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.query.strip():
            raise ValueError(f"ranking list {self.query_id!r} from {self.source!r} has an empty query")
        if not self.documents:
            raise ValueError(f"ranking list {self.query_id!r} from {self.source!r} has no documents")
        for name in ("labels", "teacher", "first_stage"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float32)
                if value.shape != (len(self.documents),):
                    raise ValueError(f"{name} has shape {value.shape}, expected ({len(self.documents)},)")
                setattr(self, name, value)
        for name, value in list(self.signals.items()):
            value = np.asarray(value, dtype=np.float32)
            if value.shape != (len(self.documents),):
                raise ValueError(f"signal {name!r} has shape {value.shape}, expected ({len(self.documents)},)")
            self.signals[name] = value


def document_text(document: Document) -> str:
    """The text a cross-encoder reads for a document (title and body, as the engine builds it)."""
    return document.content


def judged_lists(dataset: BeirDataset, run: Mapping[str, Mapping[str, float]] | None = None,
                 depth: int = 100, include_judged: bool = True) -> list[RankingList]:
    """One list per judged query: the run's top-`depth` candidates (plus judged documents outside it when
    `include_judged`), labelled from the qrels (unjudged = 0), with the run's scores as first-stage scores."""
    corpus, queries, qrels = dataset.corpus, dataset.queries, dataset.qrels
    lists = []
    for qid, query in queries.items():
        candidates = ranked(run.get(qid, {}))[:depth] if run is not None else []
        if include_judged or run is None:
            seen = set(candidates)
            candidates += [doc for doc in qrels.get(qid, {}) if doc not in seen]
        candidates = [doc for doc in candidates if doc in corpus]
        if not candidates:
            continue
        scores = np.array([run.get(qid, {}).get(doc, np.nan) for doc in candidates]) if run is not None else None
        if scores is not None and np.isnan(scores).any():
            scores = np.where(np.isnan(scores), np.nanmin(scores) - 1.0 if (~np.isnan(scores)).any() else 0.0, scores)
        lists.append(RankingList(
            query=query, documents=[document_text(corpus[doc]) for doc in candidates],
            labels=np.array([max(qrels.get(qid, {}).get(doc, 0), 0) for doc in candidates], dtype=np.float32),
            first_stage=scores, source=dataset.name, query_id=qid, document_ids=candidates,
        ))
    return lists


def mine_negatives(queries: Mapping[str, str], index: CorpusBM25, qrels: Qrels, *, rank_range: tuple[int, int] = (0, 100),
                   per_query: int = 31, min_positive: int = 1,
                   scorer: Callable[[str, list[str]], np.ndarray] | None = None, margin: float | None = None,
                   seed: int = 0, source: str = "mined") -> list[RankingList]:
    """Lists of the judged positives plus up to `per_query` negatives drawn from the retriever's ranks
    [start, end). A judged document (any grade) is never a negative; with `scorer` and `margin`, negatives scoring
    within `margin` of the weakest positive are dropped as likely unjudged positives."""
    start, end = rank_range
    if not 0 <= start < end:
        raise ValueError(f"rank_range must satisfy 0 <= start < end, got {rank_range}")
    rng = random.Random(seed)
    position = {doc: i for i, doc in enumerate(index.ids)}
    qids = [qid for qid in queries if sum(rel >= min_positive for rel in qrels.get(qid, {}).values()) > 0]
    if not qids:
        return []
    hits, _ = index.search([queries[qid] for qid in qids], end)
    lists = []
    for row, qid in enumerate(qids):
        judged = qrels[qid]
        positives = [doc for doc, rel in judged.items() if rel >= min_positive and doc in position]
        if not positives:
            continue
        pool = [index.ids[i] for i in hits[row][start:end] if index.ids[i] not in judged]
        if scorer is not None and margin is not None and pool:
            teacher = scorer(queries[qid], [index.texts[position[d]] for d in positives + pool])
            floor = teacher[: len(positives)].min() - margin
            pool = [doc for doc, score in zip(pool, teacher[len(positives):], strict=True) if score < floor]
        negatives = rng.sample(pool, min(per_query, len(pool)))
        docs = positives + negatives
        lists.append(RankingList(
            query=queries[qid], documents=[index.texts[position[d]] for d in docs],
            labels=np.array([judged.get(d, 0) for d in docs], dtype=np.float32),
            first_stage=index.score(queries[qid], [position[d] for d in docs]),
            source=source, query_id=qid, document_ids=docs,
        ))
    return lists


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-]*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def pseudo_query(text: str, rng: random.Random, min_words: int = 3, max_words: int = 8) -> str | None:
    """A self-supervised query from a passage: a short span of its words (a keyword query), or, a third of the
    time, one of its sentences (a natural-language query). None when the passage is too short."""
    sentences = [s for s in _SENTENCE.split(text.strip()) if len(_WORD.findall(s)) >= min_words]
    if len(sentences) > 1 and rng.random() < 1 / 3:
        return rng.choice(sentences)
    words = _WORD.findall(text)
    if len(words) < min_words + 2:
        return None
    length = rng.randint(min_words, min(max_words, len(words) - 2))
    begin = rng.randrange(0, len(words) - length + 1)
    return " ".join(words[begin: begin + length]).lower()


def retrieved_lists(queries: Sequence[str], index: CorpusBM25, depth: int = 32, source: str = "retrieved",
                    query_ids: Sequence[str] | None = None) -> list[RankingList]:
    """Unjudged lists for distillation: each query with its BM25 top-`depth` over the index (a teacher scores
    them; labels stay None)."""
    if not queries:
        return []
    hits, scores = index.search(queries, depth)
    ids = list(query_ids) if query_ids is not None else [""] * len(queries)
    return [RankingList(query=q, documents=[index.texts[i] for i in hits[row]], first_stage=scores[row],
                        source=source, query_id=ids[row], document_ids=[index.ids[i] for i in hits[row]])
            for row, q in enumerate(queries) if hits[row]]  # a query matching nothing has no list


def pseudo_query_lists(texts: Sequence[str], index: CorpusBM25, per_document: int, depth: int = 32, seed: int = 0,
                       source: str = "pseudo") -> list[RankingList]:
    """Self-supervised distillation lists: `per_document` pseudo-queries from every passage of `texts`, each
    with its BM25 top-`depth` over the index (which should hold the passages, so the source is usually in it)."""
    rng = random.Random(seed)
    queries = [q for text in texts for _ in range(per_document) if (q := pseudo_query(text, rng)) is not None]
    return retrieved_lists(queries, index, depth, source)


def save_lists(lists: Iterable[RankingList], path: Path) -> Path:
    """Write lists to one gzip'd JSON-lines file: a text table first, then one line per list of text indices."""
    lists = list(lists)
    table: dict[str, int] = {}
    for item in lists:
        for text in (item.query, *item.documents):
            table.setdefault(text, len(table))
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"texts": list(table)}) + "\n")
        for item in lists:
            row = {"q": table[item.query], "d": [table[t] for t in item.documents], "s": item.source,
                   "qid": item.query_id, "ids": item.document_ids}
            for name in ("labels", "teacher", "first_stage"):
                value = getattr(item, name)
                if value is not None:
                    row[name] = [round(float(v), 4) for v in value]
            if item.signals:
                row["signals"] = {name: [round(float(v), 5) for v in value] for name, value in item.signals.items()}
            handle.write(json.dumps(row) + "\n")
    return path


def load_lists(path: Path) -> list[RankingList]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no training lists at {path}")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        texts = json.loads(handle.readline())["texts"]
        return [RankingList(query=texts[row["q"]], documents=[texts[i] for i in row["d"]],
                            labels=row.get("labels"), teacher=row.get("teacher"),
                            first_stage=row.get("first_stage"), source=row.get("s", ""),
                            query_id=row.get("qid", ""), document_ids=row.get("ids"),
                            signals=row.get("signals", {}))
                for row in map(json.loads, handle)]


def lists_from_dataset(dataset: BeirDataset, depth: int = 100, negatives: int = 31, seed: int = 0) -> list[RankingList]:
    """Training lists for one judged split: its own candidate run (`candidates-<split>`, WikiQA/TrecQA style)
    or BM25 top-`depth` run when the folder ships one, else BM25-mined negatives over the corpus."""
    for name in (f"candidates-{dataset.split}", "bm25-top100"):
        if name in dataset.runs:
            return judged_lists(dataset, dataset.run(name), depth=depth)
    corpus = dataset.corpus
    index = CorpusBM25([doc.content for doc in corpus.values()], list(corpus))
    return mine_negatives(dataset.queries, index, dataset.qrels, rank_range=(0, depth), per_query=negatives,
                          seed=seed, source=dataset.name)


def candidate_lists(dataset: BeirDataset, depth: int = 100) -> list[RankingList]:
    """Dev candidates to rerank: the split's own candidate run, a shipped BM25 top-100, else BM25 top-`depth`
    over the corpus (unjudged candidates keep label 0; the qrels score them)."""
    for name in (f"candidates-{dataset.split}", "bm25-top100"):
        if name in dataset.runs:
            return judged_lists(dataset, dataset.run(name), depth=depth, include_judged=False)
    corpus = dataset.corpus
    index = CorpusBM25([doc.content for doc in corpus.values()], list(corpus))
    qids = list(dataset.queries)
    lists = retrieved_lists([dataset.queries[q] for q in qids], index, depth, dataset.name, qids)
    for item in lists:
        judged = dataset.qrels.get(item.query_id, {})
        item.labels = np.array([max(judged.get(d, 0), 0) for d in item.document_ids or []], dtype=np.float32)
    return lists
