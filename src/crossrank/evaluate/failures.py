"""Failure analysis: where a reranker hurts (which documents it promoted and demoted, with snippets) and which
judged-relevant documents the first stage never handed it (a loss no reranker can repair)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from crossrank.datasets import Qrels, Run, ranked
from crossrank.evaluate.metrics import relevance_threshold
from crossrank.types import Document

SNIPPET_CHARS = 160


@dataclass(frozen=True)
class Move:
    """A document whose place in the top `cutoff` changed: rank before (first stage) and after (reranker)."""

    doc_id: str
    grade: int | None  # None: unjudged
    rank_before: int | None
    rank_after: int | None
    snippet: str


@dataclass(frozen=True)
class HurtQuery:
    qid: str
    query: str
    before: float
    after: float
    promoted: list[Move]  # entered the top `cutoff`, not relevant (or unjudged)
    demoted: list[Move]  # relevant, left the top `cutoff`


@dataclass
class FailureReport:
    system: str
    baseline: str
    measure: str
    cutoff: int
    hurt: list[HurtQuery] = field(default_factory=list)
    relevant_total: int = 0
    relevant_unretrieved: int = 0  # judged relevant, absent from the first stage's candidates
    queries_with_unretrieved: int = 0
    unretrieved_examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snippet(document: Document | None, chars: int = SNIPPET_CHARS) -> str:
    if document is None:
        return "(not in corpus)"
    text = " ".join(document.content.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _ranks(run_for_query: Mapping[str, float]) -> dict[str, int]:
    return {doc: rank for rank, doc in enumerate(ranked(run_for_query), start=1)}


def analyse(qrels: Qrels, queries: Mapping[str, str], corpus: Mapping[str, Document], first_stage: Run,
            system_run: Run, before: Mapping[str, float], after: Mapping[str, float], *, system: str,
            baseline: str, measure: str = "nDCG@10", worst: int = 5, cutoff: int = 10,
            rel: int | None = None) -> FailureReport:
    """`before`/`after`: per-query values of `measure` for the first stage and the system (same query ids)."""
    rel = relevance_threshold(qrels) if rel is None else rel
    report = FailureReport(system=system, baseline=baseline, measure=measure, cutoff=cutoff)
    deltas = sorted(((after[q] - before[q], q) for q in before if q in after), key=lambda item: (item[0], item[1]))
    for delta, qid in deltas[:worst]:
        if delta >= 0:
            break
        grades = qrels.get(qid, {})
        old, new = _ranks(first_stage.get(qid, {})), _ranks(system_run.get(qid, {}))

        def move(doc: str, grades: Mapping[str, int] = grades, old: dict = old, new: dict = new) -> Move:
            return Move(doc, grades.get(doc), old.get(doc), new.get(doc), snippet(corpus.get(doc)))

        promoted = [move(d) for d, r in sorted(new.items(), key=lambda x: x[1])
                    if r <= cutoff and old.get(d, cutoff + 1) > cutoff and grades.get(d, 0) < rel]
        demoted = [move(d) for d, r in sorted(old.items(), key=lambda x: x[1])
                   if r <= cutoff and new.get(d, cutoff + 1) > cutoff and grades.get(d, 0) >= rel]
        report.hurt.append(HurtQuery(qid, queries.get(qid, ""), before[qid], after[qid], promoted, demoted))
    for qid, grades in sorted(qrels.items()):
        relevant = [doc for doc, grade in grades.items() if grade >= rel]
        missing = [doc for doc in relevant if doc not in first_stage.get(qid, {})]
        report.relevant_total += len(relevant)
        report.relevant_unretrieved += len(missing)
        report.queries_with_unretrieved += bool(missing)
        if missing and len(report.unretrieved_examples) < worst:
            doc = missing[0]
            report.unretrieved_examples.append({"qid": qid, "query": queries.get(qid, ""), "doc_id": doc,
                                                "grade": grades[doc], "snippet": snippet(corpus.get(doc))})
    return report
