"""Map raw relevance logits to probabilities users can threshold.

Without a fitted calibrator a model's probability is sigmoid(logit). Training fits Platt scaling
(sigmoid(a·logit + b)) or isotonic regression on dev scores and stores it beside the checkpoint as
`calibration.json`; the engine picks it up when it loads the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

CALIBRATION_FILE = "calibration.json"
Method = Literal["sigmoid", "platt", "isotonic"]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


@dataclass(frozen=True)
class Calibrator:
    method: Method = "sigmoid"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = field(default_factory=tuple)  # isotonic knots (sorted logits)
    y: tuple[float, ...] = field(default_factory=tuple)  # isotonic probabilities at the knots

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(logits, self.x, self.y).astype(np.float32)
        return _sigmoid(self.a * logits + self.b).astype(np.float32)

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, method: Method = "platt") -> Calibrator:
        """Fit on dev (logit, binary label) pairs. Platt uses Newton steps on the log-loss (with Platt's
        target smoothing); isotonic is scipy's pool-adjacent-violators."""
        logits = np.asarray(logits, dtype=np.float64)
        labels = (np.asarray(labels) > 0).astype(np.float64)
        if logits.shape != labels.shape or logits.ndim != 1 or len(logits) < 2:
            raise ValueError("calibration needs two equal-length 1-d arrays with at least two points")
        if labels.min() == labels.max():
            raise ValueError("calibration needs both relevant and non-relevant examples")
        if method == "platt":
            return cls._fit_platt(logits, labels)
        if method == "isotonic":
            return cls._fit_isotonic(logits, labels)
        raise ValueError(f"unknown calibration method {method!r}")

    @classmethod
    def _fit_platt(cls, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
        """Newton's method with backtracking (Lin, Lin & Weng's robust form of Platt's algorithm)."""
        positives, negatives = labels.sum(), len(labels) - labels.sum()
        targets = np.where(labels > 0, (positives + 1) / (positives + 2), 1 / (negatives + 2))

        def loss(a: float, b: float) -> float:
            z = a * logits + b
            return float(np.sum(np.logaddexp(0.0, z) - targets * z))

        a, b = 0.0, float(np.log((positives + 1) / (negatives + 1)))
        current = loss(a, b)
        for _ in range(100):
            p = _sigmoid(a * logits + b)
            grad = np.array([np.sum((p - targets) * logits), np.sum(p - targets)])
            w = p * (1 - p) + 1e-12
            hessian = np.array([[np.sum(w * logits * logits), np.sum(w * logits)], [np.sum(w * logits), np.sum(w)]])
            step = np.linalg.solve(hessian + 1e-9 * np.eye(2), grad)
            scale = 1.0
            while scale > 1e-8 and loss(a - scale * step[0], b - scale * step[1]) > current:
                scale /= 2
            a, b = a - scale * step[0], b - scale * step[1]
            previous, current = current, loss(a, b)
            if abs(previous - current) < 1e-10 * max(1.0, abs(current)):
                break
        return cls(method="platt", a=float(a), b=float(b))

    @classmethod
    def _fit_isotonic(cls, logits: np.ndarray, labels: np.ndarray) -> Calibrator:
        """scipy's pool-adjacent-violators; each block becomes two knots (its lowest and highest logit)."""
        from scipy.optimize import isotonic_regression

        order = np.argsort(logits, kind="stable")
        xs = logits[order]
        fit = isotonic_regression(labels[order])
        knots_x, knots_y = [], []
        for start, stop in zip(fit.blocks[:-1], fit.blocks[1:], strict=True):
            knots_x += [float(xs[start]), float(xs[stop - 1])]
            knots_y += [float(fit.x[start])] * 2
        return cls(method="isotonic", x=tuple(knots_x), y=tuple(knots_y))

    def save(self, model_dir: Path) -> Path:
        path = Path(model_dir) / CALIBRATION_FILE
        payload = {"method": self.method, "a": self.a, "b": self.b, "x": list(self.x), "y": list(self.y)}
        path.write_text(json.dumps(payload, indent=2))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> Calibrator:
        """The stored calibrator of a model directory, or plain sigmoid when there is none."""
        path = Path(model_dir) / CALIBRATION_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls(method=data["method"], a=float(data.get("a", 1.0)), b=float(data.get("b", 0.0)),
                   x=tuple(data.get("x", ())), y=tuple(data.get("y", ())))
