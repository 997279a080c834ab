"""How good is the context an LLM gets? Evidence recall, context precision, tokens and abstention per token budget,
for `select_context` and two baselines, with paired significance tests.

Systems (every one packs with the same code and budget; they differ in what they rank by and offer):
- `first-stage`: the first stage's top passages in its own order until the budget is full — what a RAG stack does
  without a reranker;
- `ce-passages`: the same passages ordered by the cross-encoder, whole passages only, no floor, no deduplication;
- `context`: `ContextSelector` as configured (by default: sentence spans, relevance floor, deduplication).

Per query and budget, over the judged-relevant documents R (grade ≥ the relevance threshold) of the split:
- **evidence recall**: |documents of R with at least one snippet in the context| / |R|;
- **context precision**: share of the context's tokens (its snippets' blocks) that quote documents of R
  (averaged over the queries that got a non-empty context);
- **tokens**: the rendered context's size.

**Abstention** (budget-independent): `answered` is the share of queries whose candidates hold a relevant document
that get a non-empty context; `abstained` is the share of the same queries, with every relevant candidate removed
(no-answer queries built from the judged ones), for which the selector returns an empty context.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from crossrank.context import Context, ContextSelector
from crossrank.datasets import BeirDataset
from crossrank.evaluate.metrics import relevance_threshold
from crossrank.evaluate.significance import PairedTest, compare, holm
from crossrank.evaluate.systems import FIRST_STAGES
from crossrank.model.cross_encoder import PairScores
from crossrank.types import Candidate, Document, Query

SYSTEMS = ("first-stage", "ce-passages", "context")
MEASURES = ("recall", "precision", "tokens")


class MemoScorer:
    """A scorer that scores each distinct (query, document) once: every system and budget reads the same
    cross-encoder scores, so the evaluation pays for each pair once."""

    def __init__(self, model: Any) -> None:
        self.model, self.name = model, model.name
        self._memo: dict[tuple[str, str], tuple[float, float, int]] = {}

    def score(self, queries: Sequence[str], documents: Sequence[Document], **_: Any) -> PairScores:
        keys = [(q, d.content) for q, d in zip(queries, documents, strict=True)]
        missing = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if missing:
            fresh = self.model.score([q for q, _ in missing], [Document(text=c) for _, c in missing])
            for n, key in enumerate(missing):
                self._memo[key] = (float(fresh.logits[n]), float(fresh.probabilities[n]), int(fresh.windows[n]))
        rows = [self._memo[k] for k in keys]
        return PairScores(np.array([r[0] for r in rows], dtype=np.float32),
                          np.array([r[1] for r in rows], dtype=np.float32), np.array([r[2] for r in rows]))

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return self.model.probabilities(logits)


class MemoEncoder:
    """The bi-encoder, embedding each distinct text once across systems and budgets."""

    def __init__(self, encoder: Any) -> None:
        self.encoder, self._memo = encoder, {}

    def encode(self, texts: Sequence[str], **_: Any) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            for text, vector in zip(missing, self.encoder.encode(missing), strict=True):
                self._memo[text] = vector
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 1), dtype=np.float32)


JUDGED_ORDER_SHARE = 0.95  # TrecQA's shipped runs: 1.0; WikiQA's (article order): 0.39-0.48; DL20's BM25: 0.08
JUDGED_ORDER_MIN_QUERIES = 10


@dataclass(frozen=True)
class ContextEvalConfig:
    budgets: tuple[int, ...] = (128, 256, 512, 1024)
    depth: int = 50  # first-stage candidates per query each system selects from
    rel: int = 1  # binary relevance threshold
    permutations: int = 10_000
    abstention: bool = True

    def __post_init__(self) -> None:
        if not self.budgets or any(b < 1 for b in self.budgets):
            raise ValueError(f"budgets must be positive token counts, got {self.budgets}")
        if self.depth < 1:
            raise ValueError(f"depth must be ≥ 1, got {self.depth}")


@dataclass
class BudgetResult:
    budget: int
    means: dict[str, dict[str, float]]  # system → measure → mean
    per_query: dict[str, dict[str, dict[str, float]]] = field(repr=False)  # system → measure → qid → value
    tests: dict[str, PairedTest]  # "context vs <baseline>" → recall test (Holm over every budget and baseline)


@dataclass
class ContextEvalResult:
    dataset: str
    split: str
    queries: int
    config: ContextEvalConfig
    selector: str
    budgets: list[BudgetResult]
    answered: float | None = None  # share of answerable queries given context
    abstained: float | None = None  # share of no-answer queries abstained on
    no_answer_queries: int = 0
    ms_per_query: dict[str, float] = field(default_factory=dict)  # system → median ms of one selection
    first_stage: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "queries": self.queries, "first_stage": self.first_stage,
                "config": asdict(self.config),
                "selector": self.selector, "answered": self.answered, "abstained": self.abstained,
                "no_answer_queries": self.no_answer_queries, "ms_per_query": self.ms_per_query, "notes": self.notes,
                "budgets": [{"budget": b.budget, "means": b.means, "per_query": b.per_query,
                             "tests": {name: t.to_dict() for name, t in b.tests.items()}} for b in self.budgets]}


def judged_order_note(lists: Mapping[str, list[Candidate]], relevant: Mapping[str, set[str]]) -> list[str]:
    """A first stage that ranks every relevant candidate above every other on (nearly) all queries was ordered by
    the judgments, not retrieved (TrecQA's shipped candidate runs are): no selector can beat it, so say so."""
    mixed = [[c.doc_id in relevant[q] for c in found] for q, found in lists.items()
             if any(c.doc_id in relevant[q] for c in found) and not all(c.doc_id in relevant[q] for c in found)]
    perfect = sum(not any(flags[flags.index(False):]) for flags in mixed)
    if len(mixed) < JUDGED_ORDER_MIN_QUERIES or perfect < JUDGED_ORDER_SHARE * len(mixed):
        return []
    return [f"the first stage ranks every relevant candidate first on {perfect} of {len(mixed)} queries: it looks "
            "ordered by the judgments, not retrieved, so it is no baseline (try --first bm25)"]


def measure(context: Context, relevant: set[str]) -> dict[str, float]:
    """Evidence recall, context precision (NaN for an empty context) and tokens of one context."""
    covered = {s.doc_id for s in context.snippets} & relevant
    quoted = sum(s.tokens for s in context.snippets)
    relevant_tokens = sum(s.tokens for s in context.snippets if s.doc_id in relevant)
    return {"recall": len(covered) / len(relevant) if relevant else 0.0,
            "precision": relevant_tokens / quoted if quoted else float("nan"),
            "tokens": float(context.tokens)}


def _mean(values: Mapping[str, float]) -> float:
    finite = [v for v in values.values() if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class ContextEvaluation:
    """Evaluate `selector` (scoring through a memo) against the baselines on queries' first-stage candidates."""

    def __init__(self, selector: ContextSelector, config: ContextEvalConfig | None = None,
                 progress: bool = True) -> None:
        if selector.model is None:
            raise ValueError("the evaluated selector needs a cross-encoder")
        self.config, self.progress = config or ContextEvalConfig(), progress
        self.scorer = MemoScorer(selector.model)
        encoder = MemoEncoder(selector.encoder) if selector.duplicate_cosine is not None or selector.mmr_lambda < 1 \
            else None
        passages_only = {"granularity": "passage", "abstain_below": 0, "min_probability": 0, "duplicate_cosine": None,
                         "mmr_lambda": 1}
        self.systems: dict[str, ContextSelector] = {
            "first-stage": selector.with_settings(model=None, **passages_only),
            "ce-passages": selector.with_settings(model=self.scorer, **passages_only),
            "context": selector.with_settings(model=self.scorer, encoder=encoder),
        }
        self.timed = {"ce-passages (rerank only)": selector.with_settings(**passages_only), "context": selector}
        self.description = repr(selector)

    def run(self, dataset: str, split: str, queries: Mapping[str, str], candidates: Mapping[str, list[Candidate]],
            qrels: Mapping[str, Mapping[str, int]], timing_queries: int = 10) -> ContextEvalResult:
        config = self.config
        relevant = {qid: {d for d, g in qrels.get(qid, {}).items() if g >= config.rel} for qid in queries}
        qids = [qid for qid in queries if relevant[qid]]
        if not qids:
            raise ValueError(f"{dataset}:{split} has no query with a relevant document (grade ≥ {config.rel})")
        lists = {qid: list(candidates.get(qid, []))[: config.depth] for qid in qids}
        if not any(lists.values()):  # e.g. an empty or broken first-stage index: a table of zeros would hide it
            raise ValueError(f"{dataset}:{split}: the first stage returned no candidates for any of its {len(qids)} "
                             "judged queries")
        per_query: dict[int, dict[str, dict[str, dict[str, float]]]] = {
            b: {s: {m: {} for m in MEASURES} for s in self.systems} for b in config.budgets}
        answered: dict[str, bool] = {}
        for qid in tqdm(qids, desc=f"context {dataset}:{split}", unit="query", disable=not self.progress):
            for budget in config.budgets:
                for name, selector in self.systems.items():
                    context = selector.select(queries[qid], lists[qid], budget)
                    for key, value in measure(context, relevant[qid]).items():
                        per_query[budget][name][key][qid] = value
                    if name == "context":
                        answered.setdefault(qid, not context.abstained)
        budgets = self._tests(per_query)
        result = ContextEvalResult(dataset, split, len(qids), config, self.description, budgets,
                                   notes=judged_order_note(lists, relevant))
        if config.abstention:
            self._abstention(result, queries, lists, relevant, answered)
        result.ms_per_query = self._latency(queries, lists, qids[:timing_queries], max(config.budgets))
        return result

    def _tests(self, per_query: dict[int, dict[str, dict[str, dict[str, float]]]]) -> list[BudgetResult]:
        """`context` against each baseline on recall at every budget, Holm-corrected over all of them."""
        raw = {(b, base): compare(per_query[b]["context"]["recall"], per_query[b][base]["recall"],
                                  self.config.permutations)
               for b in self.config.budgets for base in ("first-stage", "ce-passages")}
        keys = list(raw)
        t_holm, r_holm = holm([raw[k].t_p for k in keys]), holm([raw[k].randomisation_p for k in keys])
        adjusted = {k: PairedTest(**{**asdict(raw[k]), "t_p_holm": t_holm[i], "randomisation_p_holm": r_holm[i]})
                    for i, k in enumerate(keys)}
        return [BudgetResult(b, {s: {m: _mean(v) for m, v in per_query[b][s].items()} for s in self.systems},
                             per_query[b], {f"context vs {base}": adjusted[(b, base)]
                                            for base in ("first-stage", "ce-passages")})
                for b in self.config.budgets]

    def _abstention(self, result: ContextEvalResult, queries: Mapping[str, str],
                    lists: Mapping[str, list[Candidate]], relevant: Mapping[str, set[str]],
                    answered: Mapping[str, bool]) -> None:
        selector, budget = self.systems["context"], min(self.config.budgets)
        answerable = [q for q in answered if any(c.doc_id in relevant[q] for c in lists[q])]
        stripped = {q: [c for c in lists[q] if c.doc_id not in relevant[q]] for q in answerable}
        stripped = {q: cands for q, cands in stripped.items() if cands}
        abstained = [selector.select(queries[q], cands, budget).abstained
                     for q, cands in tqdm(stripped.items(), desc="no-answer queries", unit="query",
                                          disable=not self.progress)]
        result.answered = float(np.mean([answered[q] for q in answerable])) if answerable else None
        result.abstained = float(np.mean(abstained)) if abstained else None
        result.no_answer_queries = len(abstained)

    def _latency(self, queries: Mapping[str, str], lists: Mapping[str, list[Candidate]], sample: Sequence[str],
                 budget: int) -> dict[str, float]:
        """Median ms of one fresh selection (no memo) per system: what a user's call costs."""
        out = {}
        for name, selector in self.timed.items():
            selector.select(queries[sample[0]], lists[sample[0]], budget)  # warm-up
            times = []
            for qid in sample:
                times.append(_timed(lambda s=selector, q=qid: s.select(queries[q], lists[q], budget)))
            out[name] = statistics.median(times)
        return out


def _timed(call: Callable[[], object]) -> float:
    import time

    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def first_stage_candidates(dataset: BeirDataset, first: str = "auto", run_name: str | None = None,
                           depth: int = 50, max_queries: int | None = None, progress: bool = True,
                           say: Callable[[str], None] = print) -> tuple[str, dict[str, str], dict[str, list[Candidate]]]:
    """(first-stage name, queries, candidates per query) for a judged split.

    "auto": the split's shipped run (`runs/candidates-<split>.trec`, or the set's only run), else `hybrid`
    retrieval over the corpus index; "run" needs such a run (or `run_name`); "bm25" / "hybrid" retrieve."""
    from crossrank.evaluate.runner import first_stages
    from crossrank.pipeline import Pipeline

    qids = sorted(dataset.qrels)[:max_queries]
    queries = {qid: dataset.all_queries[qid] for qid in qids if qid in dataset.all_queries}
    if not queries:
        raise ValueError(f"{dataset.name}:{dataset.split} has no judged queries with text")
    if run_name is None:
        own = f"candidates-{dataset.split}"
        run_name = own if own in dataset.runs else (dataset.runs[0] if len(dataset.runs) == 1 else None)
    if first == "auto":
        first = "run" if run_name is not None else "hybrid"
    if first not in FIRST_STAGES:
        raise ValueError(f"first stage must be one of {('auto', *FIRST_STAGES)}, got {first!r}")
    if first == "run" and run_name is None:
        raise ValueError(f"{dataset.name} ships no run for split {dataset.split!r} (it has {dataset.runs}); "
                         "use --first bm25 or hybrid")
    run_path = dataset.path / "runs" / f"{run_name}.trec" if first == "run" else None
    stage = first_stages(dataset, {first}, run_path, depth, say)[first]
    pipeline = stage if isinstance(stage, Pipeline) else Pipeline([stage])
    ordered = [Query(text, qid) for qid, text in queries.items()]
    candidates: dict[str, list[Candidate]] = {}
    for start in tqdm(range(0, len(ordered), 64), desc=f"first stage {first}", unit="batch", disable=not progress):
        for result in pipeline.run(ordered[start:start + 64]):
            candidates[result.query.id or ""] = result.candidates[:depth]
    return (f"run {run_name}" if first == "run" else first), queries, candidates


def evaluate_context(dataset: BeirDataset, selector: ContextSelector, config: ContextEvalConfig | None = None, *,
                     first: str = "auto", run_name: str | None = None, max_queries: int | None = None,
                     progress: bool = True, say: Callable[[str], None] = print) -> ContextEvalResult:
    """`crossrank eval-context`: the three systems on a judged split's first-stage candidates."""
    config = config or ContextEvalConfig(rel=relevance_threshold(dataset.qrels))
    evaluation = ContextEvaluation(selector, config, progress)
    first_name, queries, candidates = first_stage_candidates(dataset, first, run_name, config.depth, max_queries,
                                                             progress, say)
    result = evaluation.run(dataset.name, dataset.split, queries, candidates, dataset.qrels)
    result.first_stage = first_name
    return result
