"""Position bias from clicks and inverse-propensity weighting. Under a position-based model a click at rank k
means "examined (θ_k) and found relevant (γ)"; estimating θ by EM over randomised logs and dividing every click
by θ_k turns biased click counts into unbiased relevance estimates (Joachims et al., 2017; Wang et al., 2018)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossrank.ltr.clicks import DEFAULT_DWELL_THRESHOLD, Impression


@dataclass(frozen=True)
class PositionBias:
    """Relative examination propensities θ_1..θ_K, normalised so θ_1 = 1."""

    theta: tuple[float, ...]
    iterations: int = 0

    def __post_init__(self) -> None:
        if not self.theta or not all(0.0 < t <= 1.0 + 1e-9 for t in self.theta):
            raise ValueError(f"propensities must be in (0, 1], got {list(self.theta)}")

    def propensity(self, position: int) -> float:
        """θ at a 1-based position; positions beyond the estimate reuse the last one."""
        if position < 1:
            raise ValueError(f"positions start at 1, got {position}")
        return self.theta[min(position, len(self.theta)) - 1]

    def weight(self, position: int, max_weight: float | None = None) -> float:
        """The IPS weight 1/θ_k of a click at `position`, optionally clipped to `max_weight` (variance control)."""
        weight = 1.0 / self.propensity(position)
        return weight if max_weight is None else min(weight, max_weight)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"theta": list(self.theta), "iterations": self.iterations}, indent=2))

    @classmethod
    def load(cls, path: Path) -> PositionBias:
        data = json.loads(path.read_text())
        return cls(theta=tuple(float(t) for t in data["theta"]), iterations=int(data.get("iterations", 0)))


def _observations(impressions: Iterable[Impression], dwell_threshold: float | None):
    """(pair index, position index, clicked) arrays over every shown result, and the pair keys."""
    pair_ids: dict[tuple[str, str], int] = {}
    pairs, positions, clicked = [], [], []
    for impression in impressions:
        hits = set(impression.satisfied_clicks(dwell_threshold))
        for k, doc in enumerate(impression.shown):
            pairs.append(pair_ids.setdefault((impression.query_id, doc), len(pair_ids)))
            positions.append(k)
            clicked.append(doc in hits)
    if not pairs:
        raise ValueError("the click log is empty")
    return np.array(pairs), np.array(positions), np.array(clicked, dtype=float), list(pair_ids)


def harvest_position_bias(impressions: Iterable[Impression], dwell_threshold: float | None = None) -> PositionBias:
    """Intervention harvesting from adjacent swaps: a (query, document) shown at both k and k+1 gives
    E[clicks_{k+1}]·n_k / E[clicks_k]·n_{k+1} = θ_{k+1}/θ_k whatever its relevance, so summing over such
    documents and chaining the ratios estimates θ in closed form (Joachims et al., 2017; Agarwal et al., 2019)."""
    pair, pos, c, _ = _observations(impressions, dwell_threshold)
    return PositionBias(theta=_harvest(pair, pos, c))


def _harvest(pair: np.ndarray, pos: np.ndarray, c: np.ndarray) -> tuple[float, ...]:
    n_pos, n_pair = int(pos.max()) + 1, int(pair.max()) + 1
    cell = pair * n_pos + pos
    shown = np.bincount(cell, minlength=n_pair * n_pos).reshape(n_pair, n_pos)
    clicks = np.bincount(cell, c, minlength=n_pair * n_pos).reshape(n_pair, n_pos)
    theta = [1.0]
    for k in range(n_pos - 1):
        num = float((clicks[:, k + 1] * shown[:, k]).sum())
        den = float((clicks[:, k] * shown[:, k + 1]).sum())
        if num <= 0 or den <= 0:
            raise ValueError(f"no clicked document was shown at both positions {k + 1} and {k + 2}: position bias "
                             "is not identifiable from this log (log with randomisation, e.g. swaps)")
        theta.append(min(theta[-1] * num / den, 1.0))
    return tuple(theta)


def estimate_position_bias(impressions: Iterable[Impression], max_iterations: int = 200, tol: float = 1e-6,
                           dwell_threshold: float | None = None) -> PositionBias:
    """EM for the position-based click model, started from the harvested estimate: alternately infer, for each
    unclicked result, whether it went unseen or was seen and judged irrelevant, then re-estimate θ per position
    and γ per (query, document). EM alone crawls along the θ/γ ridge for deep positions (thousands of
    iterations), so the closed-form start matters. θ is only identifiable when documents appear at several
    positions — log with randomisation (swaps)."""
    pair, pos, c, _ = _observations(impressions, dwell_threshold)
    n_pos, n_pair = int(pos.max()) + 1, int(pair.max()) + 1
    shown_at = np.bincount(pos, minlength=n_pos)
    shown_pair = np.bincount(pair, minlength=n_pair)
    theta = np.array(_harvest(pair, pos, c))
    gamma = np.clip(np.bincount(pair, c / theta[pos], minlength=n_pair) / np.maximum(shown_pair, 1), 1e-6, 1.0)
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        t, g = theta[pos], gamma[pair]
        miss = np.maximum(1.0 - t * g, 1e-12)
        seen = c + (1 - c) * t * (1 - g) / miss  # P(examined | click outcome)
        relevant = c + (1 - c) * (1 - t) * g / miss  # P(relevant | click outcome)
        new_theta = np.bincount(pos, seen, minlength=n_pos) / np.maximum(shown_at, 1)
        new_gamma = np.bincount(pair, relevant, minlength=n_pair) / np.maximum(shown_pair, 1)
        # θ and γ are identified only up to a common scale (θ·c, γ/c): pin θ_1 = 1.
        new_gamma, new_theta = new_gamma * new_theta[0], new_theta / new_theta[0]
        delta = max(np.abs(new_theta - theta).max(), np.abs(new_gamma - gamma).max())
        theta, gamma = np.clip(new_theta, 1e-6, 1.0), np.clip(new_gamma, 1e-6, 1.0)
        if delta < tol:
            break
    return PositionBias(theta=tuple(float(x) for x in theta), iterations=iteration)


def click_labels(impressions: Iterable[Impression], bias: PositionBias | None = None,
                 dwell_threshold: float | None = DEFAULT_DWELL_THRESHOLD,
                 max_weight: float | None = None) -> dict[str, dict[str, float]]:
    """Per (query, shown document) relevance from clicks: Σ click weights / times shown. Without `bias` the weight
    is 1 (naive click-through rate, biased towards the top); with it, 1/θ_k (IPS), an unbiased estimate of
    P(click | examined) under a position-based model. Clicks shorter than `dwell_threshold` do not count."""
    weights: dict[tuple[str, str], float] = defaultdict(float)
    shown: dict[tuple[str, str], int] = defaultdict(int)
    for impression in impressions:
        for doc in impression.shown:
            shown[impression.query_id, doc] += 1
        for doc in impression.satisfied_clicks(dwell_threshold):
            position = impression.position(doc)
            weights[impression.query_id, doc] += 1.0 if bias is None else bias.weight(position, max_weight)
    if not shown:
        raise ValueError("the click log is empty")
    labels: dict[str, dict[str, float]] = defaultdict(dict)
    for (qid, doc), count in shown.items():
        labels[qid][doc] = weights.get((qid, doc), 0.0) / count
    return dict(labels)


def grade_labels(labels: dict[str, dict[str, float]], levels: int = 10) -> dict[str, dict[str, int]]:
    """Quantise click relevance estimates (probabilities, clipped to [0, 1]) into integer grades 0..levels:
    LambdaMART needs integer labels; pair it with a linear label gain."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return {qid: {doc: int(round(levels * min(max(v, 0.0), 1.0))) for doc, v in docs.items()}
            for qid, docs in labels.items()}


def ips_weights(positions: Sequence[int], bias: PositionBias, max_weight: float | None = None) -> np.ndarray:
    """IPS weights for clicks at the given 1-based positions."""
    return np.array([bias.weight(p, max_weight) for p in positions], dtype=float)
