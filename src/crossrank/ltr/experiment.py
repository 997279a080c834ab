"""The LTR loop on judged data, end to end: log features for a split through the pipeline's own stages,
train LambdaMART from judgments or from (simulated) clicks, and score every signal and model on a test split
through the evaluation module's metrics. The feature log is the cache: the cross-encoder runs once per split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from crossrank.datasets import BeirDataset, Run, ranked, read_run
from crossrank.evaluate.metrics import aggregate, per_query
from crossrank.ltr.clicks import Impression
from crossrank.ltr.featurelog import FeatureTable
from crossrank.ltr.features import FeatureSet, default_feature_set
from crossrank.ltr.lambdamart import LambdaMART, cross_validate_lambdamart, split_queries, train_lambdamart
from crossrank.ltr.propensity import PositionBias, click_labels, estimate_position_bias, grade_labels
from crossrank.ltr.simulator import ClickModel, ClickSimulator
from crossrank.pipeline import FromRun, Fuse, PairScorer, Pipeline, Rerank, Stage
from crossrank.retrieve.bm25 import CorpusBM25
from crossrank.types import Query


def first_stage_run(dataset: BeirDataset, run: str | None, k: int) -> Run:
    """A shipped run by name ("bm25-top100"), a TREC run file, or full-corpus BM25 when None."""
    if run is None:  # full-corpus BM25 over title and text, for sets that ship no run
        corpus = dataset.corpus
        return CorpusBM25([d.text for d in corpus.values()], list(corpus), [d.title for d in corpus.values()]).run(
            dataset.queries, k)
    return read_run(Path(run)) if Path(run).is_file() else dataset.run(run)


def feature_pipeline(run: Run, dataset: BeirDataset, depth: int, dense: PairScorer | None,
                     cross_encoder: PairScorer | None, ce_depth: int | None = None) -> Pipeline:
    """run (as "bm25") → bi-encoder cosine ("dense") → RRF ("fusion") → cross-encoder ("rerank"): every
    candidate leaves carrying each signal's score and rank, the raw material of the features."""
    stages: list[Stage] = [FromRun(run, dataset.corpus, k=depth, name="bm25")]
    if dense is not None:
        stages += [Rerank(dense, k=depth, name="dense"), Fuse("rrf", sources=("bm25", "dense"))]
    if cross_encoder is not None:
        stages.append(Rerank(cross_encoder, k=ce_depth or depth, name="rerank"))
    return Pipeline(stages)


def log_features(dataset: BeirDataset, pipeline: Pipeline, feature_set: FeatureSet, path: Path | None = None,
                 query_batch: int = 16) -> FeatureTable:
    """Run the pipeline over the split's queries (in batches, with progress) and log labelled features."""
    queries = [Query(text, qid) for qid, text in sorted(dataset.queries.items())]
    results = []
    for start in tqdm(range(0, len(queries), query_batch), desc=f"features {dataset.name}:{dataset.split}",
                      unit="batch"):
        results += pipeline.run(queries[start:start + query_batch])
    table = FeatureTable.from_results(feature_set, results, dataset.qrels)
    if path is not None:
        table.save(path)
    return table


def pipeline_feature_set(pipeline: Pipeline) -> FeatureSet:
    """The default features over the signals this pipeline records."""
    return default_feature_set(tuple(stage.name for stage in pipeline.stages))


@dataclass
class Row:
    system: str
    mean: float
    per_query: dict[str, float]


def evaluate(table: FeatureTable, scores: np.ndarray, qrels: Mapping[str, Mapping[str, int]], system: str,
             measure: str = "nDCG@10") -> Row:
    values = per_query(qrels, table.run(scores), (measure,))
    return Row(system, aggregate(values)[measure], values[measure])


def signal_scores(table: FeatureTable, signal: str) -> np.ndarray:
    """A logged signal as a ranker (missing = ranked last)."""
    column = table.features[:, table.feature_set.names.index(f"score:{signal}")]
    return np.where(np.isnan(column), -np.inf, column)


def fit_lambdamart(table: FeatureTable, *, folds: int = 1, valid_fraction: float = 0.2, seed: int = 0,
                   **kwargs) -> LambdaMART:
    """`folds` > 1: the average of cross-validated models; else one model stopped on a random query holdout."""
    if folds > 1:
        return cross_validate_lambdamart(table, folds, seed=seed, **kwargs)
    fit, valid = split_queries(table, valid_fraction, seed)
    return train_lambdamart(fit, valid, seed=seed, **kwargs)


def train_on_judgments(train: FeatureTable, valid_fraction: float = 0.2, seed: int = 0, folds: int = 1,
                       **kwargs) -> LambdaMART:
    return fit_lambdamart(train, folds=folds, valid_fraction=valid_fraction, seed=seed,
                          description={"labels": "judgments"}, **kwargs)


def simulate_clicks(table: FeatureTable, qrels: Mapping[str, Mapping[str, int]], model: ClickModel,
                    logging_signal: str, sessions_per_query: int, depth: int = 10, swap_prob: float = 0.0,
                    seed: int = 0) -> list[Impression]:
    """Click logs for the table's queries, shown in the order of one logged signal (the production ranker)."""
    scores = signal_scores(table, logging_signal)
    rankings = {qid: ranked(docs) for qid, docs in table.run(scores).items()}
    simulator = ClickSimulator(model, qrels, depth=depth, swap_prob=swap_prob, seed=seed)
    return list(simulator.simulate(rankings, sessions_per_query))


def train_on_clicks(train: FeatureTable, log: Sequence[Impression], debias: bool, *, levels: int = 10,
                    dwell_threshold: float | None = None, max_weight: float | None = None,
                    bias: PositionBias | None = None, valid_fraction: float = 0.2, seed: int = 0, folds: int = 1,
                    **kwargs) -> tuple[LambdaMART, PositionBias | None]:
    """LambdaMART on click labels of the shown results: naive click-through rates, or IPS-corrected ones with
    the position bias estimated by EM from the same log (or given). Validation also uses click labels."""
    if debias and bias is None:
        bias = estimate_position_bias(log, dwell_threshold=dwell_threshold)
    labels = click_labels(log, bias if debias else None, dwell_threshold=dwell_threshold, max_weight=max_weight)
    labelled = train.with_labels(grade_labels(labels, levels), only_labelled=True)
    description = {"labels": "clicks-ips" if debias else "clicks-naive", "impressions": len(log),
                   "propensities": None if bias is None else list(bias.theta)}
    model = fit_lambdamart(labelled, folds=folds, valid_fraction=valid_fraction, seed=seed, gain="linear",
                           description=description, **kwargs)
    return model, bias if debias else None
