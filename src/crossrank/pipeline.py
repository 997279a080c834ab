"""Multi-stage ranking as a list of stages: retrieve → fuse → rerank → cut, with a trace of what each did.

Every stage maps many queries' candidate lists at once (`run_many`), so a cross-encoder stage scores all
queries' pairs in one batched pass; `stage(query, candidates)` is the one-query form. A `Pipeline` runs its
stages in order and returns one `SearchResult` per query: final candidates (each carrying every stage's score
and rank in `scores` / `ranks`) and a trace (candidates in/out and milliseconds per stage).

    index = Index.open("my-index")
    pipeline = Pipeline([Retrieve(index, ["bm25", "dense"], k=1000), Fuse("rrf"),
                         Rerank(CrossEncoder.from_pretrained(), k=100), Cut(10)])
    result = pipeline.search("what is bm25?", filters={"lang": "en"})
    result.candidates[0].scores   # {"bm25": 12.3, "dense": 0.61, "fusion": 0.032, "rerank": 4.2, ...}
    result.first_stage_rank(result.candidates[0])

Starting from given candidates (e.g. a TREC run to rerank): either pass them,
`Pipeline([Rerank(model, k=100)]).run(queries, candidate_lists)`, or start with `FromRun(run, corpus)`,
which needs `Query.id`s matching the run's query ids. `candidates_from_documents` builds candidate lists.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crossrank.datasets import ranked
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.retrieve.fusion import NORMALIZATIONS, RRF_K, reciprocal_rank_fusion, weighted_fusion
from crossrank.types import Candidate, Document, Query, SearchResult, StageTrace, best_first, check_positive

if TYPE_CHECKING:
    from crossrank.model.cross_encoder import PairScores


def ordering_signal(candidates: Sequence[Candidate]) -> str | None:
    """The signal that ordered a candidate list: each ordering stage records its signal last (`ordered`)."""
    return next(reversed(candidates[0].ranks), None) if candidates else None


def ordered(candidates: Sequence[Candidate], signal: str) -> list[Candidate]:
    """Sort by `score` (best first, ties in list order: `best_first`) and record 1-based ranks under `signal`."""
    return [c.with_signal(signal, c.score, rank)
            for rank, c in enumerate(best_first(candidates, lambda c: c.score), start=1)]


class Stage(ABC):
    """One step over many queries: (queries, candidate lists) → candidate lists, aligned with the queries."""

    name: str

    @abstractmethod
    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        ...

    def __call__(self, query: str | Query, candidates: Sequence[Candidate] = ()) -> list[Candidate]:
        return self.run_many([Query.coerce(query, 0)], [list(candidates)])[0]

    def __rshift__(self, other: Stage | Pipeline) -> Pipeline:
        return Pipeline([self]) >> other


class PairScorer(Protocol):
    """What `Rerank` scores with: a CrossEncoder, the bi-encoder's CosineScorer, the server's batched model."""

    name: str

    def score(self, queries: Sequence[str], documents: Sequence[Document]) -> PairScores: ...


class Retriever(Protocol):
    """What `Retrieve` needs from an index: top-k candidates per query for a named retriever."""

    def retrieve(self, retriever: str, queries: Sequence[Query], k: int) -> list[list[Candidate]]:
        ...


class Retrieve(Stage):
    """First stage: top-k from each named retriever of an index ("bm25", "dense"), united by passage id.

    Each candidate keeps each retriever's score and rank (absent where that retriever missed it). With one
    retriever the output is its ranking; with several it is ordered by best rank across them (rank recorded as
    "retrieve") — follow it with `Fuse` for a real combination. Candidates passed in are kept in the union.
    """

    def __init__(self, index: Retriever, retrievers: Sequence[str] | str = ("bm25", "dense"), k: int = 1000,
                 name: str = "retrieve") -> None:
        retrievers = [retrievers] if isinstance(retrievers, str) else list(retrievers)
        if not retrievers:
            raise ValueError("Retrieve needs at least one retriever name")
        check_positive("k", k)
        self.index, self.retrievers, self.k, self.name = index, retrievers, k, name

    def __repr__(self) -> str:
        return f"Retrieve({self.retrievers}, k={self.k})"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        per_retriever = [self.index.retrieve(name, queries, self.k) for name in self.retrievers]
        out = []
        for i, given in enumerate(candidate_lists):
            union: dict[str, Candidate] = {c.id: c for c in given}
            for hits in per_retriever:
                for hit in hits[i]:
                    known = union.get(hit.id)
                    union[hit.id] = hit if known is None else replace(
                        known, scores={**known.scores, **hit.scores}, ranks={**known.ranks, **hit.ranks})
            if len(self.retrievers) == 1 and not given:  # ties by passage id, as with several retrievers
                out.append(ordered(sorted(union.values(), key=lambda c: c.id), self.name))
                continue
            best = {cid: min(c.ranks.get(r, 1 << 30) for r in self.retrievers) for cid, c in union.items()}
            ranked = sorted(union.values(), key=lambda c: (best[c.id], c.id))
            out.append([c.with_signal(self.name, 1.0 / best[c.id], rank) for rank, c in enumerate(ranked, 1)])
        return out


class FromRun(Stage):
    """First stage from a fixed run (query id → doc id → score) over a corpus: rerank published candidates.

    Score ties keep the run's order (a file's rank column, see `read_run`)."""

    def __init__(self, run: Mapping[str, Mapping[str, float]], corpus: Mapping[str, Document], k: int | None = None,
                 name: str = "run") -> None:
        check_positive("k", k, optional=True)
        self.run, self.corpus, self.k, self.name = run, corpus, k, name

    def __repr__(self) -> str:
        return f"FromRun({len(self.run)} queries, k={self.k})"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        out = []
        for query, given in zip(queries, candidate_lists, strict=True):
            if query.id is None:
                raise ValueError(f"FromRun needs query ids; query {query.text!r} has none")
            scores = self.run.get(query.id, {})
            candidates = list(given)
            for doc_id in ranked(scores)[: self.k]:
                document = self.corpus.get(doc_id)
                if document is None:
                    raise KeyError(f"run for query {query.id} names document {doc_id!r}, which is not in the corpus")
                candidates.append(Candidate(id=doc_id, doc_id=doc_id, text=document.text, title=document.title,
                                            metadata=document.metadata, score=float(scores[doc_id])))
            out.append(ordered(candidates, self.name))
        return out


def candidates_from_documents(documents: Sequence[Any]) -> list[Candidate]:
    """Candidates from strings, Documents or mappings, in the given order (rank 1 first, id = position if none)."""
    out = []
    for i, value in enumerate(documents):
        document = Document.coerce(value, i)
        doc_id = document.id if document.id is not None else str(i)
        out.append(Candidate(id=doc_id, doc_id=doc_id, text=document.text, title=document.title,
                             metadata=document.metadata, score=float(len(documents) - i)))
    return out


class Fuse(Stage):
    """Combine retrievers' signals per query: "rrf" (ranks, k=60) or "weighted" (normalised scores)."""

    METHODS = ("rrf", "weighted")

    def __init__(self, method: str = "rrf", sources: Sequence[str] = ("bm25", "dense"),
                 weights: Mapping[str, float] | None = None, k: int = RRF_K, normalization: str = "minmax",
                 name: str = "fusion") -> None:
        if method not in self.METHODS:
            raise ValueError(f"fusion method must be one of {self.METHODS}, got {method!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if weights is not None and set(weights) - set(sources):
            raise ValueError(f"weights name unknown sources {sorted(set(weights) - set(sources))}")
        self.method, self.sources, self.weights, self.k = method, list(sources), weights, k
        self.normalization, self.name = normalization, name

    def __repr__(self) -> str:
        return f"Fuse({self.method!r}, sources={self.sources})"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        out = []
        for candidates in candidate_lists:
            if self.method == "rrf":
                signals = {s: {c.id: c.ranks[s] for c in candidates if s in c.ranks} for s in self.sources}
                fused = reciprocal_rank_fusion(signals, self.k, self.weights)
            else:
                signals = {s: {c.id: c.scores[s] for c in candidates if s in c.scores} for s in self.sources}
                fused = weighted_fusion(signals, self.weights, self.normalization)
            scored = [c.with_signal(self.name, fused.get(c.id, 0.0)) for c in candidates]
            out.append(ordered(scored, self.name))
        return out


class Rerank(Stage):
    """A pair scorer (a cross-encoder) over the top k of each list; all queries' pairs go through it in one call.

    Records the logit as "rerank" (with the cross-encoder's own rank) and the calibrated probability as
    "rerank_probability". With a first-stage weight w the list is ordered by (1 − w)·z(logit) + w·z(incoming
    score), both z-scored over the query's top k (see `crossrank.model.interpolation`) and recorded as
    "rerank_interpolated"; otherwise by the logit. `first_stage_weight`: "model" (default) is the weight the
    model ships in fusion.json for the first stage at hand (by the signal that ordered the incoming list), if it
    ships one; None or 0 is the cross-encoder alone; a number in [0, 1) is that weight. Candidates below k are
    dropped.
    """

    def __init__(self, model: PairScorer, k: int = 100, name: str = "rerank",
                 first_stage_weight: float | Literal["model"] | None = "model") -> None:
        check_positive("k", k)
        self.model, self.k, self.name = model, k, name
        if first_stage_weight == "model":
            interpolation = getattr(model, "interpolation", None)  # scorers such as the bi-encoder ship none
        else:
            interpolation = None if first_stage_weight is None else FirstStageInterpolation(first_stage_weight)
        self.interpolation = interpolation if interpolation is not None and max(interpolation.weights) > 0 else None

    def __repr__(self) -> str:
        weight = ""
        if (shipped := self.interpolation) is not None:
            weight = ", first_stage_weight=" + ", ".join(
                [*(f"{w} after {name}" for name, w in shipped.by_first_stage.items()),
                 f"{shipped.weight}" + (" otherwise" if shipped.by_first_stage else "")])
        return f"Rerank({self.model.name!r}, k={self.k}{weight})"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        heads = [list(candidates[: self.k]) for candidates in candidate_lists]
        flat_queries = [query.text for query, head in zip(queries, heads, strict=True) for _ in head]
        scores = self.model.score(flat_queries, [c.document for head in heads for c in head])
        interpolated = f"{self.name}_interpolated"
        out, offset = [], 0
        for head in heads:
            span = slice(offset, offset + len(head))
            logits, probabilities = scores.logits[span], scores.probabilities[span]
            scored = [
                c.with_signal(self.name, logit).with_signal(f"{self.name}_probability", probability, order=False)
                for c, logit, probability in zip(head, logits, probabilities, strict=True)
            ]
            offset += len(head)
            interpolation = self.interpolation and self.interpolation.for_first_stage(ordering_signal(head))
            if interpolation is None or interpolation.weight == 0:
                out.append(ordered(scored, self.name))
                continue
            # An incoming score is the first stage's. Ranking by the logit first keeps the cross-encoder's own rank
            # as a signal; the interpolated score then orders the list.
            final = interpolation.combine(logits, [c.score for c in head])
            by_logit = ordered([c.with_signal(interpolated, value, order=False)
                                for c, value in zip(scored, final, strict=True)], self.name)
            out.append(ordered([c.with_signal(interpolated, c.scores[interpolated]) for c in by_logit], interpolated))
        return out


class Cut(Stage):
    """Keep the first k candidates of each list."""

    def __init__(self, k: int, name: str = "cut") -> None:
        check_positive("k", k)
        self.k, self.name = k, name

    def __repr__(self) -> str:
        return f"Cut({self.k})"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        return [list(candidates[: self.k]) for candidates in candidate_lists]


class Collapse(Stage):
    """Keep each document's best passage (first in list order): passage rankings → document rankings."""

    def __init__(self, name: str = "collapse") -> None:
        self.name = name

    def __repr__(self) -> str:
        return "Collapse()"

    def run_many(self, queries: Sequence[Query], candidate_lists: Sequence[list[Candidate]]) -> list[list[Candidate]]:
        out = []
        for candidates in candidate_lists:
            seen: set[str] = set()
            out.append([c for c in candidates if not (c.doc_id in seen or seen.add(c.doc_id))])
        return out


class Pipeline:
    """Stages run in order over many queries at once; `search` is the one-query form."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        stages = list(stages)
        if not stages:
            raise ValueError("a Pipeline needs at least one stage")
        for i, stage in enumerate(stages):
            if not isinstance(stage, Stage):
                raise TypeError(f"stage {i}: expected a Stage, got {type(stage).__name__}")
        self.stages = stages

    def __repr__(self) -> str:
        return " >> ".join(repr(stage) for stage in self.stages)

    def __rshift__(self, other: Stage | Pipeline) -> Pipeline:
        return Pipeline(self.stages + (other.stages if isinstance(other, Pipeline) else [other]))

    def run(self, queries: Sequence[str | Query], candidate_lists: Sequence[Sequence[Candidate]] | None = None,
            *, filters: Mapping[str, Any] | None = None) -> list[SearchResult]:
        """Run every stage over all queries. `filters` applies to queries that carry none of their own."""
        parsed = [Query.coerce(q, i) for i, q in enumerate(queries)]
        for i, query in enumerate(parsed):
            if not isinstance(query.text, str) or not query.text.strip():
                raise ValueError(f"query {i} is empty or only whitespace")
        if filters is not None:
            parsed = [q if q.filters is not None else Query(q.text, q.id, filters) for q in parsed]
        if candidate_lists is None:
            lists: list[list[Candidate]] = [[] for _ in parsed]
        else:
            if len(candidate_lists) != len(parsed):
                raise ValueError(f"{len(parsed)} queries but {len(candidate_lists)} candidate lists")
            lists = [list(c) for c in candidate_lists]
        traces: list[list[StageTrace]] = [[] for _ in parsed]
        for stage in self.stages:
            start = time.perf_counter()
            new_lists = stage.run_many(parsed, lists)
            ms = (time.perf_counter() - start) * 1000
            for trace, before, after in zip(traces, lists, new_lists, strict=True):
                trace.append(StageTrace(stage.name, len(before), len(after), ms))
            lists = new_lists
        first = None if candidate_lists is not None else self.first_stage_name()
        return [SearchResult(q, c, t, first) for q, c, t in zip(parsed, lists, traces, strict=True)]

    def first_stage_name(self) -> str:
        """The signal whose ranking the later stages start from: the last of the leading candidate-generating
        stages (the fused list in a hybrid pipeline, not the union `Retrieve` hands to `Fuse`)."""
        name = self.stages[0].name
        for stage in self.stages[1:]:
            if not isinstance(stage, (Retrieve, Fuse, FromRun)):
                break
            name = stage.name
        return name

    def search(self, query: str | Query, filters: Mapping[str, Any] | None = None) -> SearchResult:
        return self.run([query], filters=filters)[0]


def search_pipeline(index: Retriever, retrievers: Sequence[str] = ("bm25", "dense"), *, first_k: int = 1000,
                    fusion: str = "rrf", reranker: PairScorer | None = None, rerank_k: int = 100,
                    first_stage_weight: float | Literal["model"] | None = "model", k: int = 10,
                    learned: Stage | None = None) -> Pipeline:
    """The pipeline `crossrank search` and the server's /search run: retrieve from each named retriever, fuse
    them when there are several, rerank the top `rerank_k` (unless `reranker` is None), apply `learned` (a
    `crossrank.ltr.LTR` stage over the signals so far) if given, keep the top `k`. A reranker that can read the
    index's stored passage vectors (`Index.store_segments`) is told to, so it encodes only the query."""
    lend_segments = getattr(index, "lend_segments", None)
    if reranker is not None and lend_segments is not None:
        lend_segments(reranker)
    stages: list[Stage] = [Retrieve(index, retrievers, k=first_k)]
    if len(retrievers) > 1:
        stages.append(Fuse(fusion, sources=retrievers))
    if reranker is not None:
        stages.append(Rerank(reranker, k=rerank_k, first_stage_weight=first_stage_weight))
    if learned is not None:
        stages.append(learned)
    return Pipeline([*stages, Cut(k)])
