"""Shared value types: the ground floor every other module imports and none of them extends."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

T = TypeVar("T")


def best_first(items: Iterable[T], score: Callable[[T], float]) -> list[T]:
    """The one ranking order in crossrank: higher score first, ties kept in the order they arrive.

    A tie is decided once, where a ranking starts (a run file's rank column, a retriever's hits by id, the caller's
    list), and every later stage, the evaluation and training inherit that decision. RRF and constant-score runs
    tie often; a second rule anywhere would make `crossrank eval` rerank a different top k than `crossrank search`.
    """
    return sorted(items, key=lambda item: -score(item))


def check_positive(name: str, value: int | None, *, optional: bool = False) -> None:
    """Refuse anything but a positive int (None too when `optional`), naming the argument: `True` and 2.0 are not
    counts, and a k of 0 would silently return nothing."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be 1 or more{' (or None for no limit)' if optional else ''}, got {value!r}")


def json_kind(value: Any) -> str:
    """A value's kind in the words of the JSON a user sent: 'a number', 'a list', 'an object', ..."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Document:
    """A text to rank. `title`, when present, is encoded as "title: text"; `metadata` passes through untouched."""

    text: str
    title: str = ""
    id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> str:
        """The string the models read."""
        return f"{self.title}: {self.text}" if self.title else self.text

    @classmethod
    def coerce(cls, value: Any, index: int) -> Document:
        """Accept a str, a Document or a mapping with `text` (optional `title`, `id`, anything else as metadata).

        `index` is the position in the caller's list, named in the error so the bad item is easy to find.
        The caller's object is never mutated.
        """
        if isinstance(value, Document):
            return value
        if isinstance(value, str):
            return cls(text=value)
        if isinstance(value, Mapping):
            text = value.get("text")
            if text is None:
                raise TypeError(f"document {index} has no 'text' field")
            if not isinstance(text, str):
                raise TypeError(f"document {index}: 'text' must be a string, not {json_kind(text)}")
            title = value.get("title") or ""
            if not isinstance(title, str):
                raise TypeError(f"document {index}: 'title' must be a string, not {json_kind(title)}")
            doc_id = value.get("id")
            metadata = {k: v for k, v in value.items() if k not in ("text", "title", "id")}
            return cls(text=text, title=title, id=None if doc_id is None else str(doc_id), metadata=metadata)
        raise TypeError(f"document {index} must be a string or an object with a 'text' field, not {json_kind(value)}")


@dataclass(frozen=True)
class RankResult:
    """One reranked document: its position in the caller's input, raw logit, probability, and windows used."""

    index: int
    score: float
    probability: float
    windows: int
    document: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "score": self.score,
            "probability": self.probability,
            "windows": self.windows,
        }
        if self.document is not None:
            out["document"] = self.document
        return out


@dataclass(frozen=True)
class Query:
    """A query as the pipeline sees it: text, an id (needed to start from a TREC run) and metadata filters.

    Filters: `{"field": value}` for equality (a list means any of), `{"field": {"gte": a, "lt": b}}` for ranges
    (`gt`/`gte`/`lt`/`lte`; timestamps as ISO-8601 strings or numbers compare as stored).
    """

    text: str
    id: str | None = None
    filters: Mapping[str, Any] | None = None

    @classmethod
    def coerce(cls, value: Any, index: int) -> Query:
        if isinstance(value, Query):
            return value
        if isinstance(value, str):
            return cls(text=value, id=str(index))
        raise TypeError(f"query {index}: expected a string or a Query, got {type(value).__name__}")


@dataclass(frozen=True)
class Candidate:
    """One passage moving through the pipeline, with every stage's score and 1-based rank.

    `scores`/`ranks` are keyed by signal name ("bm25", "dense", "fusion", "rerank", ...): a key is absent when
    that signal never saw the passage (e.g. found by dense only). `score` is the ordering score of the latest
    stage. Stages never mutate a candidate; they return copies via `with_signal`.
    """

    id: str
    doc_id: str
    text: str
    title: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    score: float = 0.0
    scores: Mapping[str, float] = field(default_factory=dict)
    ranks: Mapping[str, int] = field(default_factory=dict)

    @property
    def document(self) -> Document:
        """The passage as the cross-encoder reads it (title + passage text)."""
        return Document(text=self.text, title=self.title, id=self.doc_id, metadata=self.metadata)

    def with_signal(self, name: str, score: float, rank: int | None = None, *, order: bool = True) -> Candidate:
        """A copy with `name`'s score (and rank) recorded; `order=True` also makes it the ordering score."""
        ranks = dict(self.ranks) if rank is None else {**self.ranks, name: rank}
        return replace(self, score=float(score) if order else self.score, scores={**self.scores, name: float(score)},
                       ranks=ranks)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "doc_id": self.doc_id, "title": self.title, "text": self.text,
                "metadata": dict(self.metadata), "score": self.score, "scores": dict(self.scores),
                "ranks": dict(self.ranks)}


@dataclass(frozen=True)
class StageTrace:
    """What one stage did for one query: candidates in and out, and milliseconds (the batch's, shared)."""

    stage: str
    candidates_in: int
    candidates_out: int
    ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "in": self.candidates_in, "out": self.candidates_out, "ms": round(self.ms, 3)}


@dataclass(frozen=True)
class SearchResult:
    """A query's final candidates, best first, and the trace of every stage that produced them."""

    query: Query
    candidates: list[Candidate]
    trace: list[StageTrace]
    first_stage: str | None = None

    def first_stage_rank(self, candidate: Candidate) -> int | None:
        """Where the first stage placed this candidate (None when the pipeline started from given lists)."""
        return None if self.first_stage is None else candidate.ranks.get(self.first_stage)

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": {"id": self.query.id, "text": self.query.text},
            "results": [{**c.to_dict(), "first_stage_rank": self.first_stage_rank(c)} for c in self.candidates],
            "trace": [t.to_dict() for t in self.trace],
        }
