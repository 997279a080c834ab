"""LambdaMART with LightGBM's `lambdarank` objective: gradient-boosted trees trained to maximise NDCG@k over
query groups, early-stopped on validation queries. The saved model directory holds the trees, the feature set
they expect (name, version, definition) and a model card with validation NDCG and feature importances."""

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

MODEL_FILE, FEATURES_FILE, CARD_FILE = "model.txt", "feature_set.json", "model_card.json"
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
    """A trained ranker: `score(table)` or `predict(features)`; `card` records how it was made."""

    booster: lgb.Booster
    feature_set: FeatureSet
    card: dict[str, Any] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != len(self.feature_set.features):
            raise ValueError(f"expected features of shape [n, {len(self.feature_set.features)}] "
                             f"({self.feature_set.key}), got {features.shape}")
        if len(features) == 0:
            return np.zeros(0)
        return self.booster.predict(features, num_iteration=self.card.get("best_iteration") or None)

    def score(self, table: FeatureTable) -> np.ndarray:
        """Scores for a feature table logged with the same feature set (refuses any other)."""
        if table.feature_set != self.feature_set:
            raise ValueError(f"model expects features {self.feature_set.key} {self.feature_set.names}, "
                             f"the table has {table.feature_set.key} {table.feature_set.names}")
        return self.predict(table.features)

    def importance(self, kind: str = "gain") -> dict[str, float]:
        """Feature → total split gain (or split count with kind="split"), best iteration only."""
        values = self.booster.feature_importance(importance_type=kind,
                                                 iteration=self.card.get("best_iteration") or None)
        return dict(zip(self.feature_set.names, (float(v) for v in values)))

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(path / MODEL_FILE))
        (path / FEATURES_FILE).write_text(json.dumps(self.feature_set.to_json(), indent=2) + "\n")
        (path / CARD_FILE).write_text(json.dumps(self.card, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LambdaMART:
        missing = [name for name in (MODEL_FILE, FEATURES_FILE) if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not an LTR model directory: missing {missing}")
        feature_set = FeatureSet.from_json(json.loads((path / FEATURES_FILE).read_text()))
        card = json.loads((path / CARD_FILE).read_text()) if (path / CARD_FILE).is_file() else {}
        booster = lgb.Booster(model_file=str(path / MODEL_FILE))
        if booster.num_feature() != len(feature_set.features):
            raise ValueError(f"{path}: trees use {booster.num_feature()} features, feature set has "
                             f"{len(feature_set.features)}")
        return cls(booster, feature_set, card)

    def card_markdown(self) -> str:
        lines = [f"# LTR model ({self.card.get('objective', 'lambdarank')})", "",
                 f"- feature set: `{self.feature_set.key}`",
                 f"- trained on: {self.card.get('train', {})}",
                 f"- validation: {self.card.get('valid', {})}",
                 f"- best iteration: {self.card.get('best_iteration')} of {self.card.get('num_rounds')}",
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
        "num_rounds": num_rounds, "best_iteration": best, "seconds": round(time.perf_counter() - start, 2),
        "train": {"queries": len(set(train.qids)), "rows": len(train.qids), **(description or {})},
        "valid": None if valid is None else {
            "queries": len(set(valid.qids)), "rows": len(valid.qids),
            f"ndcg@{ndcg_at}": float(evals["valid"][f"ndcg@{ndcg_at}"][best - 1]),
        },
    }
    model = LambdaMART(booster, train.feature_set, card)
    card["importance_gain"] = model.importance("gain")
    card["importance_split"] = model.importance("split")
    return model

