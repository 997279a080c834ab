"""A click simulator that turns judged rankings into click logs, so learning from clicks is tested and measured
without traffic. Two user models: position-based (examination falls with rank, independent of content) and
cascade (scan top-down, stop once satisfied). Noise: non-relevant results get clicked, relevant ones skipped."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from crossrank.datasets import Qrels
from crossrank.ltr.clicks import Impression


def graded_click_probs(max_grade: int, noise: float = 0.1) -> tuple[float, ...]:
    """P(click | examined, grade g) = noise + (1 - 2·noise)·(2^g - 1)/(2^G - 1): grade 0 is clicked with
    probability `noise`, the top grade skipped with probability `noise` (Hofmann et al.'s perturbed user)."""
    if max_grade < 1:
        raise ValueError(f"max_grade must be >= 1, got {max_grade}")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise}")
    return tuple(noise + (1 - 2 * noise) * (2**g - 1) / (2**max_grade - 1) for g in range(max_grade + 1))


def _check_probs(name: str, probs: Sequence[float]) -> tuple[float, ...]:
    if not probs or not all(0.0 <= p <= 1.0 for p in probs):
        raise ValueError(f"{name} must be a non-empty list of probabilities in [0, 1], got {list(probs)}")
    return tuple(float(p) for p in probs)


class ClickModel(Protocol):
    """Decides which of a shown list's results (given their relevance grades, best first) are clicked."""

    def clicks(self, grades: Sequence[int], rng: np.random.Generator) -> np.ndarray: ...


@dataclass(frozen=True)
class PositionBasedModel:
    """PBM: P(click at k) = θ_k · p(grade), θ_k = (1/k)^eta. The model inverse-propensity weighting corrects."""

    click_probs: Sequence[float]
    eta: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "click_probs", _check_probs("click_probs", self.click_probs))
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    def examination(self, depth: int) -> np.ndarray:
        """θ_1..θ_depth."""
        return (1.0 / np.arange(1, depth + 1)) ** self.eta

    def clicks(self, grades: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        attract = np.array([self.click_probs[min(g, len(self.click_probs) - 1)] for g in grades])
        examined = rng.random(len(grades)) < self.examination(len(grades))
        return examined & (rng.random(len(grades)) < attract)


@dataclass(frozen=True)
class CascadeModel:
    """Cascade (dependent-click) user: examine top-down, click with p(grade), after a click stop with
    stop(grade); nothing below the stop is seen."""

    click_probs: Sequence[float]
    stop_probs: Sequence[float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "click_probs", _check_probs("click_probs", self.click_probs))
        object.__setattr__(self, "stop_probs", _check_probs("stop_probs", self.stop_probs))
        if len(self.stop_probs) != len(self.click_probs):
            raise ValueError("click_probs and stop_probs need one entry per grade each")

    def clicks(self, grades: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        out = np.zeros(len(grades), dtype=bool)
        top = len(self.click_probs) - 1
        for k, grade in enumerate(grades):
            grade = min(grade, top)
            if rng.random() < self.click_probs[grade]:
                out[k] = True
                if rng.random() < self.stop_probs[grade]:
                    break
        return out


@dataclass
class ClickSimulator:
    """Generate impressions: each session shows the top `depth` of a query's logged ranking (optionally
    randomised by adjacent swaps, which is what makes position bias estimable), asks the user model for
    clicks, and draws a dwell time — long for relevant clicks, short for noise clicks."""

    model: ClickModel
    qrels: Qrels
    depth: int = 10
    swap_prob: float = 0.0
    satisfied_dwell: float = 60.0  # median seconds on a relevant result
    noise_dwell: float = 8.0  # median seconds on a non-relevant one
    seed: int = 0

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if not 0.0 <= self.swap_prob <= 1.0:
            raise ValueError(f"swap_prob must be in [0, 1], got {self.swap_prob}")
        self.rng = np.random.default_rng(self.seed)

    def shown_list(self, ranking: Sequence[str]) -> list[str]:
        shown = list(ranking[: self.depth + 1])
        if self.swap_prob > 0:
            for k in range(len(shown) - 1):
                if self.rng.random() < self.swap_prob:
                    shown[k], shown[k + 1] = shown[k + 1], shown[k]
        return shown[: self.depth]

    def session(self, query_id: str, ranking: Sequence[str], query: str = "", timestamp: float = 0.0) -> Impression:
        if not ranking:
            raise ValueError(f"query {query_id}: empty ranking, nothing to show")
        shown = self.shown_list(ranking)
        judged = self.qrels.get(query_id, {})
        grades = [max(0, int(judged.get(doc, 0))) for doc in shown]
        clicked = self.model.clicks(grades, self.rng)
        clicks = {
            doc: round(float(self.rng.lognormal(math.log(self.satisfied_dwell if grade > 0 else self.noise_dwell),
                                                0.5)), 1)
            for doc, grade, hit in zip(shown, grades, clicked) if hit
        }
        return Impression(query_id=query_id, shown=tuple(shown), clicks=clicks, query=query, timestamp=timestamp)

    def simulate(self, rankings: Mapping[str, Sequence[str]], sessions_per_query: int,
                 queries: Mapping[str, str] | None = None, start_time: float = 1.7e9) -> Iterator[Impression]:
        """`sessions_per_query` impressions for every query of `rankings`, interleaved query by query."""
        if sessions_per_query < 1:
            raise ValueError(f"sessions_per_query must be >= 1, got {sessions_per_query}")
        queries = queries or {}
        tick = 0
        for _ in range(sessions_per_query):
            for query_id in rankings:
                tick += 1
                yield self.session(query_id, rankings[query_id], queries.get(query_id, ""), start_time + tick)
