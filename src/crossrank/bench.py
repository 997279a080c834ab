"""`crossrank bench`: how fast does this machine rerank, with each backend and precision, and what does the
faster path cost in ranking fidelity? The in-package speed check a user runs before choosing a deployment;
the comparisons with peer libraries live in `benchmarks/` (they need the peers installed).

Every variant reranks the same queries and candidates one query at a time (the serving shape); the speed is the
median over repeats of pairs per second, and latency percentiles are per query over all repeats. Fidelity is the
mean Kendall τ of each variant's per-query order against the first variant's (the reference, by default torch).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from crossrank.model.cross_encoder import CrossEncoder

VARIANTS = {"torch": ("torch", None), "onnx": ("onnx", None), "onnx-int8": ("onnx", "int8"),
            "torch-bf16": ("torch", "bf16")}


@dataclass(frozen=True)
class BenchInput:
    """Queries and, per query, the candidate texts to rerank."""

    queries: list[str]
    candidates: list[list[str]]
    source: str

    def __post_init__(self) -> None:
        if not self.queries:
            raise ValueError("the benchmark needs at least one query")
        if len(self.queries) != len(self.candidates):
            raise ValueError(f"{len(self.queries)} queries but {len(self.candidates)} candidate lists")
        if any(not docs for docs in self.candidates):
            raise ValueError("every query needs at least one candidate")

    @property
    def pairs(self) -> int:
        return sum(map(len, self.candidates))


def synthetic_input(vocabulary: Sequence[str], queries: int = 10, candidates: int = 100, query_words: int = 6,
                    document_words: int = 60, seed: int = 0) -> BenchInput:
    """Deterministic word salad from the model's own vocabulary: speed depends on token counts, not meaning, so
    this needs no dataset. Document lengths vary ±50 % around `document_words`, as real passages do."""
    words = sorted(w for w in vocabulary if w.isalpha() and len(w) >= 3)
    if not words:
        raise ValueError("the vocabulary has no plain words to build synthetic text from")
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(max(1, n)))

    query_texts = [text(query_words) for _ in range(queries)]
    documents = [[text(rng.randint(document_words // 2, document_words * 3 // 2)) for _ in range(candidates)]
                 for _ in range(queries)]
    return BenchInput(query_texts, documents, f"synthetic ({queries} queries × {candidates} candidates, "
                                              f"~{document_words} words each)")


def dataset_input(dataset_spec: str, run: str | None = None, queries: int = 10, candidates: int = 100) -> BenchInput:
    """The first `queries` queries of a BEIR split that have candidates, with their top `candidates` from a
    shipped run (by name; default: the set's first) or a TREC run file."""
    from crossrank.datasets import parse_dataset_spec, ranked, read_run

    dataset = parse_dataset_spec(dataset_spec)
    if run is not None and Path(run).is_file():
        first_stage = read_run(Path(run))
    elif run is not None or dataset.runs:
        first_stage = dataset.run(run or dataset.runs[0])
    else:
        raise ValueError(f"{dataset_spec} ships no runs/*.trec; give a TREC run file with --run")
    qids = [q for q in dataset.queries if first_stage.get(q)][:queries]
    if not qids:
        raise ValueError(f"{dataset_spec}: no query of the split has candidates in the run")
    corpus = dataset.corpus
    texts = [[corpus[doc].content for doc in ranked(first_stage[q]) if doc in corpus][:candidates] for q in qids]
    return BenchInput([dataset.queries[q] for q in qids], texts,
                      f"{dataset_spec} ({len(qids)} queries, top {candidates})")


@dataclass(frozen=True)
class VariantResult:
    variant: str
    pairs_per_second: float  # median over repeats
    p50_ms: float  # per query, over all repeats
    p95_ms: float
    load_seconds: float  # includes the ONNX export (and int8 quantisation) when it is not cached yet
    tau_vs_reference: float  # mean per-query Kendall τ against the first variant (1.0 for the first)
    speedup_vs_reference: float

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


def _time_variant(encoder: CrossEncoder, data: BenchInput, repeats: int,
                 on_query: Callable[[], None] | None) -> tuple[list[float], list[float], list[np.ndarray]]:
    query_seconds: list[float] = []
    rates: list[float] = []
    scores: list[np.ndarray] = []
    encoder.rank(data.queries[0], data.candidates[0][:8], return_documents=False)  # warm-up: sessions, caches
    for repeat in range(repeats):
        total = 0.0
        for query, documents in zip(data.queries, data.candidates, strict=True):
            start = time.perf_counter()
            results = encoder.rank(query, documents, return_documents=False)
            elapsed = time.perf_counter() - start
            total += elapsed
            query_seconds.append(elapsed)
            if repeat == 0:
                by_index = np.empty(len(documents))
                for result in results:
                    by_index[result.index] = result.score
                scores.append(by_index)
            if on_query is not None:
                on_query()
        rates.append(data.pairs / total)
    return rates, query_seconds, scores


def run_bench(data: BenchInput, model: str | None = None, variants: Sequence[str] = ("torch", "onnx", "onnx-int8"),
              repeats: int = 3, threads: int | None = None, batch_tokens: int | None = None,
              on_query: Callable[[], None] | None = None) -> list[VariantResult]:
    """Load each variant in turn, rerank `data` `repeats` times, and compare speed and order with the first."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown variant(s) {unknown or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    options = {"batch_tokens": batch_tokens} if batch_tokens else {}
    results: list[VariantResult] = []
    reference: tuple[float, list[np.ndarray]] | None = None
    for variant in variants:
        backend, quantize = VARIANTS[variant]
        start = time.perf_counter()
        encoder = CrossEncoder.from_pretrained(model, backend=backend, quantize=quantize, threads=threads, **options)
        load_seconds = time.perf_counter() - start
        rates, query_seconds, scores = _time_variant(encoder, data, repeats, on_query)
        rate = statistics.median(rates)
        if reference is None:
            reference = (rate, scores)
        taus = [stats.kendalltau(ref, mine).statistic if len(ref) > 1 else 1.0
                for ref, mine in zip(reference[1], scores, strict=True)]
        milliseconds = np.array(query_seconds) * 1000
        results.append(VariantResult(variant, rate, float(np.percentile(milliseconds, 50)),
                                     float(np.percentile(milliseconds, 95)), load_seconds,
                                     float(np.nanmean(taus)), rate / reference[0]))
        del encoder
    return results
