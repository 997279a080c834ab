"""LambdaMART with LightGBM's `lambdarank` objective: gradient-boosted trees trained to maximise NDCG@k over
query groups, early-stopped on validation queries. With few judged queries (TREC DL has ~50) one held-out
split is a noisy stopping signal, so `cross_validate_lambdamart` trains one model per fold, each stopped on its
own fold, and averages them: every query serves validation once and the ensemble's variance drops. The saved
model directory holds the trees (one file per model), the feature set they expect (name, version, definition)
and a model card with validation NDCG and feature importances."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from crossrank.ltr.featurelog import FeatureTable
from crossrank.ltr.features import FeatureSet

MODEL_FILES, FEATURES_FILE, CARD_FILE = "model-{}.txt", "feature_set.json", "model_card.json"
GAINS = ("exponential", "linear")


def split_queries(table: FeatureTable, valid_fraction: float, seed: int = 0) -> tuple[FeatureTable, FeatureTable]:
    """Hold out a random share of queries for validation (rows of one query never straddle the split)."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    qids = sorted(set(table.qids))
    if len(qids) < 2:
        raise ValueError("need at least two queries to hold some out for validation")
    rng = np.random.default_rng(seed)
    n_valid = min(max(1, round(valid_fraction * len(qids))), len(qids) - 1)
    valid = set(rng.choice(qids, size=n_valid, replace=False).tolist())
    return table.subset(set(qids) - valid), table.subset(valid)


def _labels(table: FeatureTable, what: str) -> np.ndarray:
    labels = table.labels
    if len(labels) == 0:
        raise ValueError(f"the {what} table has no rows")
    if np.isnan(labels).any():
        raise ValueError(f"the {what} table has unlabelled rows; label it first (FeatureTable.with_labels)")
    if (labels < 0).any() or not np.all(labels == np.round(labels)):
        raise ValueError(f"LambdaMART needs integer grades >= 0 as {what} labels")
    return labels.astype(int)


@dataclass
class LambdaMART:
    """A trained ranker: `score(table)` or `predict(features)`, the mean of its boosters (one, or one per
    cross-validation fold), each cut at its own best iteration; `card` records how it was made."""

    boosters: list[lgb.Booster]
    feature_set: FeatureSet
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.boosters:
            raise ValueError("a LambdaMART model needs at least one booster")
        iterations = self.card.setdefault("best_iterations", [None] * len(self.boosters))
        if len(iterations) != len(self.boosters):
            raise ValueError(f"{len(self.boosters)} boosters but {len(iterations)} best iterations in the card")

    def _models(self):  # noqa: ANN202
        return zip(self.boosters, (it or None for it in self.card["best_iterations"]), strict=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.feature_set.features):
            raise ValueError(f"expected features of shape [n, {len(self.feature_set.features)}] "
                             f"({self.feature_set.key}), got {features.shape}")
        if len(features) == 0:
            return np.zeros(0)
        return np.mean([booster.predict(features, num_iteration=it) for booster, it in self._models()], axis=0)

    def score(self, table: FeatureTable) -> np.ndarray:
        """Scores for a feature table logged with the same feature set (refuses any other)."""
        if table.feature_set != self.feature_set:
            raise ValueError(f"model expects features {self.feature_set.key} {self.feature_set.names}, "
                             f"the table has {table.feature_set.key} {table.feature_set.names}")
        return self.predict(table.features)

    def importance(self, kind: str = "gain") -> dict[str, float]:
        """Feature → total split gain (or split count with kind="split") over the boosters, best iterations only."""
        values = sum(booster.feature_importance(importance_type=kind, iteration=it).astype(float)
                     for booster, it in self._models())
        return dict(zip(self.feature_set.names, (float(v) for v in values)))

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob(MODEL_FILES.format("*")):
            stale.unlink()
        for i, booster in enumerate(self.boosters):
            booster.save_model(str(path / MODEL_FILES.format(i)))
        (path / FEATURES_FILE).write_text(json.dumps(self.feature_set.to_json(), indent=2) + "\n")
        (path / CARD_FILE).write_text(json.dumps(self.card, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LambdaMART:
        count = sum(1 for _ in path.glob(MODEL_FILES.format("*")))
        missing = [name for name in (MODEL_FILES.format(0), FEATURES_FILE) if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not an LTR model directory: missing {missing}")
        feature_set = FeatureSet.from_json(json.loads((path / FEATURES_FILE).read_text()))
        card = json.loads((path / CARD_FILE).read_text()) if (path / CARD_FILE).is_file() else {}
        boosters = [lgb.Booster(model_file=str(path / MODEL_FILES.format(i))) for i in range(count)]
        for booster in boosters:
            if booster.num_feature() != len(feature_set.features):
                raise ValueError(f"{path}: trees use {booster.num_feature()} features, feature set has "
                                 f"{len(feature_set.features)}")
        return cls(boosters, feature_set, card)

    def card_markdown(self) -> str:
        lines = [f"# LTR model ({self.card.get('objective', 'lambdarank')})", "",
                 f"- feature set: `{self.feature_set.key}`",
                 f"- trained on: {self.card.get('train', {})}",
                 f"- validation: {self.card.get('valid', {})}",
                 f"- models: {len(self.boosters)}, best iterations {self.card['best_iterations']} of "
                 f"{self.card.get('num_rounds')}",
                 "", "| feature | gain share | splits |", "|---|---|---|"]
        gain = self.card.get("importance_gain", {})
        total = sum(gain.values()) or 1.0
        for name, value in sorted(gain.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {name} | {value / total:.3f} | {self.card.get('importance_split', {}).get(name, 0):.0f} |")
        return "\n".join(lines)


def train_lambdamart(train: FeatureTable, valid: FeatureTable | None = None, *, ndcg_at: int = 10,
                     num_rounds: int = 500, learning_rate: float = 0.05, num_leaves: int = 15,
                     min_data_in_leaf: int = 20, early_stopping: int = 50, gain: str = "exponential",
                     seed: int = 0, threads: int = 1, extra_params: Mapping[str, Any] | None = None,
                     description: Mapping[str, Any] | None = None) -> LambdaMART:
    """Fit LambdaMART on integer-graded query groups. With `valid`, stop when its NDCG@`ndcg_at` has not
    improved for `early_stopping` rounds and keep the best iteration. `gain="linear"` uses gain = grade
    (for fine-grained click labels) instead of 2^grade - 1."""
    if gain not in GAINS:
        raise ValueError(f"gain must be one of {GAINS}, got {gain!r}")
    if num_rounds < 1 or ndcg_at < 1:
        raise ValueError("num_rounds and ndcg_at must be >= 1")
    if valid is not None and valid.feature_set != train.feature_set:
        raise ValueError(f"validation features {valid.feature_set.key} differ from training {train.feature_set.key}")
    y = _labels(train, "training")
    top = int(max(y.max(), _labels(valid, "validation").max() if valid is not None else 0))
    params: dict[str, Any] = {
        "objective": "lambdarank", "metric": "ndcg", "ndcg_eval_at": [ndcg_at],
        "lambdarank_truncation_level": max(ndcg_at, 20), "learning_rate": learning_rate,
        "num_leaves": num_leaves, "min_data_in_leaf": min_data_in_leaf, "seed": seed, "deterministic": True,
        "num_threads": threads, "verbosity": -1,
        "label_gain": [float(g) if gain == "linear" else float(2**g - 1) for g in range(top + 1)],
    }
    params.update(extra_params or {})
    names = [name.replace(":", "_") for name in train.feature_set.names]  # LightGBM forbids some characters
    train_set = lgb.Dataset(train.features, y, group=train.groups(), feature_name=names, free_raw_data=False)
    valid_sets, callbacks, evals = [], [], {}
    if valid is not None:
        valid_sets = [lgb.Dataset(valid.features, _labels(valid, "validation"), group=valid.groups(),
                                  reference=train_set)]
        callbacks = [lgb.early_stopping(early_stopping, verbose=False), lgb.record_evaluation(evals)]
    start = time.perf_counter()
    booster = lgb.train(params, train_set, num_boost_round=num_rounds, valid_sets=valid_sets,
                        valid_names=["valid"] if valid_sets else None, callbacks=callbacks)
    best = booster.best_iteration if valid is not None and booster.best_iteration > 0 else booster.current_iteration()
    card: dict[str, Any] = {
        "objective": "lambdarank", "feature_set": train.feature_set.to_json(),
        "params": {k: v for k, v in params.items() if k != "label_gain"}, "gain": gain,
        "num_rounds": num_rounds, "best_iterations": [best], "seconds": round(time.perf_counter() - start, 2),
        "train": {"queries": len(set(train.qids)), "rows": len(train.qids), **(description or {})},
        "valid": None if valid is None else {
            "queries": len(set(valid.qids)), "rows": len(valid.qids),
            f"ndcg@{ndcg_at}": float(evals["valid"][f"ndcg@{ndcg_at}"][best - 1]),
        },
    }
    return _with_importance(LambdaMART([booster], train.feature_set, card))


def _with_importance(model: LambdaMART) -> LambdaMART:
    model.card["importance_gain"] = model.importance("gain")
    model.card["importance_split"] = model.importance("split")
    return model


def cross_validate_lambdamart(table: FeatureTable, folds: int = 5, *, seed: int = 0, ndcg_at: int = 10,
                              **kwargs: Any) -> LambdaMART:
    """k models, each trained on k-1 folds of the queries and early-stopped on the remaining one; the returned
    model averages them. The card's validation NDCG is the mean over folds (every query validated once)."""
    qids = sorted(set(table.qids))
    if folds < 2 or folds > len(qids):
        raise ValueError(f"folds must be between 2 and the number of queries ({len(qids)}), got {folds}")
    shuffled = np.random.default_rng(seed).permutation(qids)
    models = []
    for part in np.array_split(shuffled, folds):
        held_out = set(part.tolist())
        models.append(train_lambdamart(table.subset(set(qids) - held_out), table.subset(held_out), seed=seed,
                                       ndcg_at=ndcg_at, **kwargs))
    key = f"ndcg@{ndcg_at}"
    per_fold = [m.card["valid"][key] for m in models]
    card = {**models[0].card, "best_iterations": [m.card["best_iterations"][0] for m in models],
            "seconds": round(sum(m.card["seconds"] for m in models), 2),
            "train": {**models[0].card["train"], "queries": len(qids), "rows": len(table.qids), "folds": folds},
            "valid": {"queries": len(qids), "rows": len(table.qids), key: float(np.mean(per_fold)),
                      f"{key} per fold": per_fold}}
    return _with_importance(LambdaMART([m.boosters[0] for m in models], table.feature_set, card))

