"""From command-line choices to an experiment: which first stages and rerankers exist, which pipelines run by
default, loading the models and the cached corpus index only when a pipeline needs them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from crossrank.datasets import BeirDataset, read_run
from crossrank.evaluate.experiment import Experiment, ExperimentConfig, ExperimentResult
from crossrank.evaluate.systems import (
    CosineScorer,
    SystemSpec,
    interpolated,
    parse_pipelines,
    scorer_of,
    shipped_interpolation,
)
from crossrank.model.checkpoint import CheckpointError
from crossrank.pipeline import FromRun, Fuse, PairScorer, Pipeline, Retrieve, Stage

if TYPE_CHECKING:
    from crossrank.store.index import Index

FIRST_STAGE_K = 1000
RETRIEVERS = ("bm25", "dense")  # what the cached index of a BEIR corpus offers
# Segment vectors a factorised model keeps during an evaluation (~1.7 kB each, ~110 MB at most): a judged set's
# queries share many candidates (SciFact's 300 queries × top 100 cover ≤ 5,183 abstracts), and the experiment
# scores them a batch of queries at a time, so each is encoded once, not once per batch it appears in.
EVAL_SEGMENT_CACHE = 65536


class EvaluationError(RuntimeError):
    """The requested evaluation cannot run as asked (a missing model or run); the message says what to pass."""


def load_cross_encoders(models: Sequence[str], backend: str, say: Callable[[str], None],
                        quantize: str | None = None) -> dict[str, PairScorer]:
    """"ce" for one model, "ce:NAME" (directory name) for several; the bundled default when none is given."""
    from crossrank.model.cross_encoder import CrossEncoder

    if not models:
        try:
            return {"ce": CrossEncoder.from_pretrained(None, backend=backend, quantize=quantize,  # type: ignore[arg-type]
                                                       segment_cache_entries=EVAL_SEGMENT_CACHE)}
        except CheckpointError as exc:
            say(f"note: no cross-encoder evaluated — {exc}. Pass --model DIR to add one.")
            return {}
    encoders = {Path(path).name: CrossEncoder.from_pretrained(path, backend=backend,  # type: ignore[arg-type]
                                                              quantize=quantize,
                                                              segment_cache_entries=EVAL_SEGMENT_CACHE)
                for path in models}
    if len(encoders) != len(models):
        raise EvaluationError(f"two --model directories share a name: {list(models)}")
    if len(encoders) == 1:
        return {"ce": next(iter(encoders.values()))}
    return {f"ce:{name}": encoder for name, encoder in encoders.items()}


def default_pipelines(rerank_mode: bool, cross_encoders: Mapping[str, PairScorer],
                      retrievers: Sequence[str] = RETRIEVERS) -> list[SystemSpec]:
    """The first stages, then each cross-encoder over the best of them, with its `ce+` row next to it when the
    model ships a first-stage weight. `retrievers`: what the index searched offers (a user's index may be BM25
    only)."""
    if rerank_mode:
        first, base = "run", ["run", "run>>bi"]
    elif "dense" in retrievers:
        first, base = "hybrid", ["bm25", "dense", "hybrid"]
    else:
        first, base = "bm25", ["bm25"]
    rerankers = [reranker for name, scorer in sorted(cross_encoders.items()) for reranker in (
        [name] if getattr(scorer, "interpolation", None) is None else [name, interpolated(name)])]
    return parse_pipelines(base + [f"{first}>>{reranker}" for reranker in rerankers])


def first_stages(dataset: BeirDataset, needed: set[str], run_path: Path | None, k: int,
                 say: Callable[[str], None], index: Index | None = None) -> dict[str, Stage | Pipeline]:
    """The first stages `needed`, retrieving from `index` (the user's own, for judgments recorded in it) or from
    the cached index of the dataset's corpus."""
    stages: dict[str, Stage | Pipeline] = {}
    if "run" in needed:
        assert run_path is not None  # checked by run_evaluation before any model is loaded
        stages["run"] = FromRun(read_run(run_path), dataset.corpus)
    if needed & {"bm25", "dense", "hybrid"}:
        dense = bool(needed & {"dense", "hybrid"})  # a BM25-only index skips embedding the corpus
        if index is None:
            from crossrank.evaluate.corpus_index import corpus_index
            from crossrank.store.index import IndexConfig

            say(f"opening (or building, once) the {'BM25 + dense' if dense else 'BM25'} index of {dataset.name}'s "
                "corpus ...")
            index = corpus_index(dataset, IndexConfig(dense=dense))
        elif dense and "dense" not in index.retrievers:
            raise EvaluationError(f"dense and hybrid pipelines need dense vectors, and the index at {index.path} "
                                  "has none; evaluate bm25 pipelines (--pipelines bm25,bm25>>ce)")
        stages["bm25"] = Retrieve(index, ["bm25"], k=k, name="bm25")
        if dense:
            stages["dense"] = Retrieve(index, ["dense"], k=k, name="dense")
            stages["hybrid"] = Pipeline([Retrieve(index, ["bm25", "dense"], k=k), Fuse("rrf")])
    return stages


def run_evaluation(dataset: BeirDataset, config: ExperimentConfig, *, run: Path | None = None,
                   pipelines: str | Sequence[str] | None = None, models: Sequence[str] = (),
                   backend: str = "auto", quantize: str | None = None, max_queries: int | None = None,
                   say: Callable[[str], None] = print, progress: bool = True) -> ExperimentResult:
    if run is not None and not run.is_file():
        raise FileNotFoundError(f"no such run file: {run}")
    requested = parse_pipelines(pipelines) if pipelines else None
    if run is None and any(s.first == "run" for s in requested or ()):
        raise EvaluationError("pipeline 'run' needs --run FILE (a TREC run to rerank)")
    wants_ce = requested is None or any((s.reranker or "").startswith("ce") for s in requested)
    index = None
    if dataset.source_index is not None:  # judgments recorded in an index: retrieve from that index itself
        from crossrank.store.index import Index

        index = Index.open(dataset.source_index)
    scorers: dict[str, PairScorer] = load_cross_encoders(models, backend, say, quantize) if wants_ce else {}
    specs = requested or default_pipelines(run is not None, scorers, index.retrievers if index else RETRIEVERS)
    cross = [s.reranker for s in specs if s.reranker and s.reranker.startswith("ce")]
    missing = sorted({scorer_of(reranker) for reranker in cross} - set(scorers))
    if missing:
        raise EvaluationError(f"pipelines use {missing} but the cross-encoders loaded are {sorted(scorers) or 'none'}"
                              " (pass --model DIR; with several models name them ce:DIRNAME)")
    for reranker in cross:  # before any index is built: ce+ needs the model's fusion.json
        shipped_interpolation(reranker, scorers[scorer_of(reranker)])
    if any(s.reranker == "bi" for s in specs):
        from crossrank.model.embedding import BiEncoder

        scorers["bi"] = CosineScorer(BiEncoder.from_pretrained(backend=backend), name="all-MiniLM-L6-v2 (cosine)")
    k = max(FIRST_STAGE_K, config.depth, *config.depths)
    stages = first_stages(dataset, {s.first for s in specs}, run, k, say, index)
    say(f"evaluating {', '.join(s.name for s in specs)} on {dataset.name}:{dataset.split}")
    experiment = Experiment(dataset, stages, scorers, config, progress=progress, max_queries=max_queries)
    result = experiment.run(specs)
    for name, scorer in scorers.items():
        segments = getattr(scorer, "segment_cache", None)
        if segments is not None:
            stats = segments.stats()
            say(f"{name}: {stats.misses:,} segments encoded, {stats.hits:,} recurring ones read from memory")
    return result
