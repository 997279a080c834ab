"""Experiments: several pipelines on one judged split, side by side, with paired significance against a
baseline, a rerank depth curve, failure analysis, and every run written in TREC format.

The pipeline's own stages do all ranking: first stages (FromRun / Retrieve / Fuse) run once each and are
shared by every reranker on top; a model (the pipeline's Rerank stage) scores each query's top D candidates
once, D being the deepest point any table or curve needs — a pair's score does not depend on how many other
candidates it is ranked with, so depth k keeps the first stage's top k ordered by those scores. A `ce+` row
reuses its model's `ce` pass and interpolates it with the first stage's scores over each depth's top k, exactly
as the Rerank stage does with the model's shipped weight.

Cost is measured, not derived: a first stage's ms/query is its batch pass divided by the number of queries;
a reranker's is the median latency of single-query calls (the serving case) on `timing_queries` queries at
each depth, after one warm-up call, with the model's caches bypassed (the quality pass keeps a factorised model's
segment vectors across its batches of queries, so a document many queries retrieve is encoded once; timing must
not read them).
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from crossrank.datasets import BeirDataset, Run, ranked, write_run
from crossrank.evaluate.depth import DEFAULT_DEPTHS, DepthPoint, depth_curve, rerank_at_depth, usable_depths
from crossrank.evaluate.failures import FailureReport, analyse
from crossrank.evaluate.metrics import DEFAULT_MEASURES, aggregate, parse_measures, per_query, relevance_threshold
from crossrank.evaluate.significance import PairedTest, compare_all, confidence_interval
from crossrank.evaluate.systems import SystemSpec, scorer_of, shipped_interpolation
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.pipeline import Collapse, PairScorer, Pipeline, Rerank, Stage, ordering_signal
from crossrank.types import Candidate, Query


@dataclass(frozen=True)
class ExperimentConfig:
    measures: tuple[str, ...] = DEFAULT_MEASURES  # the first is the primary measure (curve, failures, plots)
    depth: int = 100  # rerank depth of the table's systems
    depths: tuple[int, ...] = DEFAULT_DEPTHS  # depth curve points (capped at what the first stage supplies)
    baseline: str | None = None  # a pipeline name; default: the first pipeline
    permutations: int = 10_000
    timing_queries: int = 10
    rel: int | None = None  # binary relevance threshold; None: the set's convention
    worst: int = 5  # hurt queries listed per reranker
    curve: bool = True
    query_batch: int = 16  # queries per reranking call (pairs are batched across them; progress per call)

    def __post_init__(self) -> None:
        if not self.measures:
            raise ValueError("at least one measure is needed")
        parse_measures(self.measures, 1)  # unknown names fail here, before any first stage runs
        for name, value in (("depth", self.depth), ("timing_queries", self.timing_queries),
                            ("query_batch", self.query_batch), ("permutations", self.permutations)):
            if value < 1:
                raise ValueError(f"{name} must be ≥ 1, got {value}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be ≥ 1, got {self.depths}")

    @property
    def primary(self) -> str:
        return self.measures[0]


@dataclass
class SystemResult:
    name: str
    pipeline: str  # the stages, as the pipeline prints them
    run: Run = field(repr=False)
    per_query: dict[str, dict[str, float]] = field(repr=False)
    means: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ms_per_query: float | None
    first_stage: str | None = None  # the system this one reranks

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "pipeline": self.pipeline, "means": self.means, "ci95": self.ci,
                "ms_per_query": self.ms_per_query, "first_stage": self.first_stage, "per_query": self.per_query}


@dataclass
class ExperimentResult:
    dataset: str
    split: str
    queries: int
    rel: int
    config: ExperimentConfig
    baseline: str
    systems: list[SystemResult]
    tests: dict[str, dict[str, PairedTest]]  # measure → system → test against the baseline
    curve_system: str | None = None
    curve: list[DepthPoint] = field(default_factory=list)
    failures: list[FailureReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    query_text: dict[str, str] = field(default_factory=dict)  # query id → text, for the evaluated queries

    def system(self, name: str) -> SystemResult:
        for system in self.systems:
            if system.name == name:
                return system
        raise KeyError(f"no system {name!r}; systems are {[s.name for s in self.systems]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "split": self.split, "queries": self.queries, "rel": self.rel,
            "config": asdict(self.config), "baseline": self.baseline,
            "systems": [system.summary() for system in self.systems],
            "tests": {m: {s: t.to_dict() for s, t in by.items()} for m, by in self.tests.items()},
            "depth_curve": {"system": self.curve_system, "points": [p.to_dict() for p in self.curve]},
            "failures": [report.to_dict() for report in self.failures],
            "notes": self.notes,
            "query_text": self.query_text,
        }

    def write(self, directory: Path) -> dict[str, Path]:
        """runs/<system>.trec for every system and results.json; returns what was written."""
        written = {}
        for system in self.systems:
            path = directory / "runs" / f"{safe_name(system.name)}.trec"
            write_run(system.run, path, tag=safe_name(system.name))
            written[system.name] = path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "results.json").write_text(json.dumps(self.to_dict(), indent=2, default=float), "utf-8")
        written["results.json"] = directory / "results.json"
        return written


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name.replace(">>", "__")).strip("_")  # "+": ce and ce+ differ


@dataclass
class FirstStageOutput:
    candidates: dict[str, list[Candidate]]  # query id → candidates, first-stage order
    run: Run  # candidate id → score, in that order (so `ranked` keeps its ties)
    ms_per_query: float


def _doc_run(run: Run, candidates: Mapping[str, Sequence[Candidate]]) -> Run:
    """Passage-level run → document-level run through the Collapse stage: a document scores as its best passage."""
    out: Run = {}
    for qid, scores in run.items():
        by_id = {c.id: c for c in candidates.get(qid, ())}
        passages = [by_id[cid].with_signal("run", scores[cid]) for cid in ranked(scores)]
        out[qid] = {c.doc_id: c.score for c in Collapse()("", passages)}
    return out


class Experiment:
    """Run pipeline specs over one split: `Experiment(dataset, first_stages, scorers, config).run(specs)`.

    `first_stages` maps a first-stage name ("run", "bm25", ...) to the Stage/Pipeline that produces it;
    `scorers` maps a reranker name ("ce", "ce:NAME", "bi") to what the Rerank stage scores with; `ce+` and
    `ce+:NAME` rows use the scorer of `ce` and `ce:NAME`.
    """

    def __init__(self, dataset: BeirDataset, first_stages: Mapping[str, Stage | Pipeline],
                 scorers: Mapping[str, PairScorer], config: ExperimentConfig | None = None,
                 progress: bool = True, max_queries: int | None = None) -> None:
        if max_queries is not None and max_queries < 1:
            raise ValueError(f"max_queries must be ≥ 1, got {max_queries}")
        self.dataset, self.config, self.progress = dataset, config or ExperimentConfig(), progress
        self.first_stages = {k: v if isinstance(v, Pipeline) else Pipeline([v]) for k, v in first_stages.items()}
        self.scorers = dict(scorers)
        self.qrels = {qid: dataset.qrels[qid] for qid in sorted(dataset.qrels)[:max_queries]}
        self.queries = [Query(dataset.all_queries[qid], qid) for qid in self.qrels if qid in dataset.all_queries]
        if not self.queries:
            raise ValueError(f"{dataset.name}:{dataset.split} has no judged queries with text")
        self._first: dict[str, FirstStageOutput] = {}
        self._scores: dict[tuple[str, str], tuple[int, Run]] = {}  # (scorer, first stage) → (depth, scores)
        self._timings: dict[tuple[str, str, int], float] = {}

    def first_stage(self, name: str) -> FirstStageOutput:
        if name not in self._first:
            if name not in self.first_stages:
                raise ValueError(f"first stage {name!r} is not available; have {sorted(self.first_stages)}")
            results, seconds, step = [], 0.0, self.config.query_batch * 4
            for start in tqdm(range(0, len(self.queries), step), desc=f"first stage {name}", unit="batch",
                              disable=not self.progress):
                begin = time.perf_counter()
                results += self.first_stages[name].run(self.queries[start:start + step])
                seconds += time.perf_counter() - begin
            ms = seconds * 1000 / len(self.queries)
            candidates = {r.query.id: r.candidates for r in results}
            run = {qid: {c.id: c.score for c in cands} for qid, cands in candidates.items()}
            self._first[name] = FirstStageOutput(candidates, run, ms)
        return self._first[name]

    def rerank_stage(self, reranker: str, depth: int) -> Rerank:
        """The Rerank stage a reranker name stands for: `ce+` with the weight its model ships, the others by
        their own score alone."""
        scorer = self.scorers[scorer_of(reranker)]
        interpolated = shipped_interpolation(reranker, scorer) is not None
        return Rerank(scorer, k=depth, name=reranker, first_stage_weight="model" if interpolated else None)

    def interpolation(self, reranker: str, first_name: str) -> FirstStageInterpolation | None:
        """The weight `reranker` mixes in after first stage `first_name`, as its Rerank stage would pick it."""
        shipped = shipped_interpolation(reranker, self.scorers[scorer_of(reranker)])
        first = self.first_stage(first_name).candidates
        return shipped and shipped.for_first_stage(ordering_signal(next((c for c in first.values() if c), [])))

    def score(self, scorer: str, first_name: str, depth: int) -> Run:
        """The scorer's own score for each query's top `depth` first-stage candidates: one Rerank pass, kept, so
        a model's `ce` and `ce+` rows (and shallower asks) share it."""
        cached = self._scores.get((scorer, first_name))
        if cached is not None and cached[0] >= depth:
            return cached[1]
        first = self.first_stage(first_name)
        stage = Rerank(self.scorers[scorer], k=depth, name=scorer, first_stage_weight=None)
        queries = self.queries
        lists = [first.candidates.get(query.id, [])[:depth] for query in queries]  # the first stage's own order
        scores: Run = {}
        step = self.config.query_batch
        with tqdm(total=sum(map(len, lists)), unit="pair", desc=f"rerank {scorer}@{depth}",
                  disable=not self.progress) as bar:
            for start in range(0, len(queries), step):
                results = Pipeline([stage]).run(queries[start:start + step], lists[start:start + step])
                for result in results:
                    scores[result.query.id] = {c.id: c.scores[scorer] for c in result.candidates}
                bar.update(sum(map(len, lists[start:start + step])))
        self._scores[(scorer, first_name)] = (depth, scores)
        return scores

    def latency(self, spec: SystemSpec, depth: int) -> float:
        """ms/query of a reranking pipeline at `depth`: first stage (batch pass) + single-query rerank."""
        assert spec.reranker is not None
        return self.first_stage(spec.first).ms_per_query + self.time_rerank(spec.reranker, spec.first, depth)

    def time_rerank(self, reranker: str, first_name: str, depth: int) -> float:
        """Median milliseconds of a single-query rerank at `depth` over the timing queries (measured once)."""
        key = (reranker, first_name, depth)
        if key not in self._timings:
            self._timings[key] = self._measure_rerank(reranker, self.first_stage(first_name), depth)
        return self._timings[key]

    def _measure_rerank(self, reranker: str, first: FirstStageOutput, depth: int) -> float:
        stage = self.rerank_stage(reranker, depth)
        sample = self.queries[: self.config.timing_queries]
        lists = [[c for c in first.candidates.get(q.id, [])][:depth] for q in sample]
        with _uncached(self.scorers[scorer_of(reranker)]):
            Pipeline([stage]).run(sample[:1], lists[:1])  # warm-up: first call pays session set-up
            times = []
            for query, candidates in tqdm(list(zip(sample, lists, strict=True)), desc=f"latency {reranker}@{depth}",
                                          unit="query", disable=not self.progress):
                start = time.perf_counter()
                Pipeline([stage]).run([query], [candidates])
                times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    def run(self, specs: Sequence[SystemSpec]) -> ExperimentResult:
        config, qrels = self.config, self.qrels
        rel = relevance_threshold(qrels) if config.rel is None else config.rel
        baseline = config.baseline or specs[0].name
        if baseline not in [spec.name for spec in specs]:
            raise ValueError(f"baseline {baseline!r} is not among the pipelines {[s.name for s in specs]}")
        for spec in specs:
            if spec.reranker is None:
                continue
            if scorer_of(spec.reranker) not in self.scorers:
                raise ValueError(f"pipeline {spec.name}: no reranker {scorer_of(spec.reranker)!r}; have "
                                 f"{sorted(self.scorers)}")
            shipped_interpolation(spec.reranker, self.scorers[scorer_of(spec.reranker)])  # ce+ needs fusion.json
        curve_spec = self._curve_spec(specs)
        notes: list[str] = []
        systems: list[SystemResult] = []
        first_values: dict[str, dict[str, float]] = {}
        curve: list[DepthPoint] = []
        failures: list[FailureReport] = []
        for spec in specs:
            first = self.first_stage(spec.first)
            first_doc_run = _doc_run(first.run, first.candidates)
            if spec.first not in first_values:
                first_values[spec.first] = per_query(qrels, first_doc_run, (config.primary,), rel)[config.primary]
                empty = sum(not first.run.get(query.id) for query in self.queries)
                if empty:  # an empty or stale index scores 0 everywhere, which would read as a measurement
                    notes.append(f"first stage {spec.first!r} returned no candidates for {empty} of "
                                 f"{len(self.queries)} queries")
            if spec.reranker is None:
                systems.append(self._system(spec, first_doc_run, first.ms_per_query, rel))
                continue
            depths = usable_depths(first.run, config.depths) if spec == curve_spec and config.curve else []
            score_depth = max([config.depth, *depths])
            scores = self.score(scorer_of(spec.reranker), spec.first, score_depth)
            interpolation = self.interpolation(spec.reranker, spec.first)
            run = _doc_run(rerank_at_depth(first.run, scores, config.depth, interpolation), first.candidates)
            system = self._system(spec, run, self.latency(spec, config.depth), rel)
            systems.append(system)
            if depths:
                curve = depth_curve(qrels, first.run, scores, depths, config.primary, rel,
                                    lambda k, s=spec: self.latency(s, k),
                                    lambda r, f=first: _doc_run(r, f.candidates), interpolation)
            failures.append(analyse(
                qrels, self.dataset.all_queries, self.dataset.corpus, first_doc_run, run, first_values[spec.first],
                system.per_query[config.primary], system=spec.name, baseline=spec.first, measure=config.primary,
                worst=config.worst, rel=rel))
        if any(spec.first == "run" for spec in specs):
            notes.append("first stage 'run' is a precomputed run: its ms/query is reading it, not retrieving")
        tests = {m: compare_all({s.name: s.per_query[m] for s in systems}, baseline, config.permutations)
                 for m in tqdm(config.measures, desc="paired tests", unit="measure", disable=not self.progress)}
        return ExperimentResult(self.dataset.name, self.dataset.split, len(qrels), rel, config, baseline,
                                systems, tests, curve_spec.name if curve_spec and curve else None, curve,
                                failures, notes, {query.id: query.text for query in self.queries})

    @staticmethod
    def _curve_spec(specs: Sequence[SystemSpec]) -> SystemSpec | None:
        """The depth curve follows the first cross-encoder pipeline, else the first reranking one."""
        reranking = [spec for spec in specs if spec.reranker is not None]
        cross = [spec for spec in reranking if spec.reranker.startswith("ce")]  # type: ignore[union-attr]
        return (cross or reranking or [None])[0]

    def _system(self, spec: SystemSpec, run: Run, ms: float, rel: int) -> SystemResult:
        values = per_query(self.qrels, run, self.config.measures, rel)
        description = repr(self.first_stages[spec.first])
        if spec.reranker is not None:
            description += f" >> {self.rerank_stage(spec.reranker, self.config.depth)!r}"
        return SystemResult(spec.name, description, run, values, aggregate(values),
                            {m: confidence_interval(list(v.values())) for m, v in values.items()}, ms,
                            spec.first if spec.reranker else None)


def _uncached(scorer: PairScorer) -> AbstractContextManager[object]:
    """A scorer's cache bypass (`CrossEncoder.uncached`), or nothing for scorers that keep no cache."""
    uncached = getattr(scorer, "uncached", None)
    return uncached() if uncached is not None else nullcontext()
