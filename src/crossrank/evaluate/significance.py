"""Paired significance of per-query differences: t-test, randomisation (sign-flip) test, Holm correction,
win/tie/loss counts and confidence intervals — what a reader needs to trust a difference between two systems
evaluated on the same queries."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class PairedTest:
    """One system against the baseline on one measure (per-query values paired by query id)."""

    delta: float  # mean(system - baseline)
    t_p: float
    randomisation_p: float
    wins: int
    ties: int
    losses: int
    t_p_holm: float = math.nan
    randomisation_p_holm: float = math.nan

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def paired_arrays(system: Mapping[str, float], baseline: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Both systems' values over the same query ids, in one order; a mismatch is a caller error."""
    if set(system) != set(baseline):
        missing = sorted(set(system) ^ set(baseline))[:5]
        raise ValueError(f"paired tests need the same queries on both sides; differing ids include {missing}")
    qids = sorted(system)
    return np.array([system[q] for q in qids], dtype=float), np.array([baseline[q] for q in qids], dtype=float)


def t_test(differences: np.ndarray) -> float:
    """Two-sided paired t-test p-value; 1.0 when the differences are all zero (nothing to test), NaN when they
    are one non-zero constant: with no variance t is undefined, not infinitely significant (a shift seen on two
    queries proves nothing). The randomisation test still answers for that case."""
    if len(differences) < 2 or not np.any(np.abs(differences) > TIE_TOLERANCE):
        return 1.0
    if np.allclose(differences, differences[0]):
        return math.nan
    return float(stats.ttest_1samp(differences, 0.0).pvalue)


def randomisation_test(differences: np.ndarray, permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided paired randomisation test: flip the sign of each query's difference at random.

    p = (1 + #{|mean(flipped)| ≥ |mean(observed)|}) / (1 + permutations), so it is never exactly 0.
    """
    if permutations < 1:
        raise ValueError(f"permutations must be ≥ 1, got {permutations}")
    if len(differences) == 0 or not np.any(np.abs(differences) > TIE_TOLERANCE):
        return 1.0
    rng = np.random.default_rng(seed)
    observed = abs(differences.mean())
    hits = 0
    for start in range(0, permutations, 1000):  # chunks bound memory at 1000 × queries
        signs = rng.choice((-1.0, 1.0), size=(min(1000, permutations - start), len(differences)))
        hits += int(np.count_nonzero(np.abs((signs * differences).mean(axis=1)) >= observed - 1e-12))
    return (hits + 1) / (permutations + 1)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone), in the input order. An undefined (NaN) p-value
    stays NaN and counts in the family as a hypothesis never rejected (ordered last)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    adjusted = [math.nan] * m
    running = 0.0
    for rank, i in enumerate(order):
        if not math.isnan(p_values[i]):
            running = max(running, min(1.0, (m - rank) * p_values[i]))
            adjusted[i] = running
    return adjusted


def win_tie_loss(differences: np.ndarray) -> tuple[int, int, int]:
    return (int(np.sum(differences > TIE_TOLERANCE)), int(np.sum(np.abs(differences) <= TIE_TOLERANCE)),
            int(np.sum(differences < -TIE_TOLERANCE)))


def compare(system: Mapping[str, float], baseline: Mapping[str, float], permutations: int = 10_000,
            seed: int = 0) -> PairedTest:
    values, base = paired_arrays(system, baseline)
    differences = values - base
    wins, ties, losses = win_tie_loss(differences)
    return PairedTest(delta=float(differences.mean()) if len(differences) else 0.0, t_p=t_test(differences),
                      randomisation_p=randomisation_test(differences, permutations, seed),
                      wins=wins, ties=ties, losses=losses)


def compare_all(systems: Mapping[str, Mapping[str, float]], baseline: str, permutations: int = 10_000,
                seed: int = 0) -> dict[str, PairedTest]:
    """Every system but the baseline against it on one measure; Holm corrects across those comparisons."""
    if baseline not in systems:
        raise ValueError(f"baseline {baseline!r} is not among the systems {sorted(systems)}")
    tests = {name: compare(values, systems[baseline], permutations, seed)
             for name, values in systems.items() if name != baseline}
    names = list(tests)
    t_holm = holm([tests[name].t_p for name in names])
    r_holm = holm([tests[name].randomisation_p for name in names])
    return {name: PairedTest(**{**asdict(tests[name]), "t_p_holm": t_holm[i], "randomisation_p_holm": r_holm[i]})
            for i, name in enumerate(names)}


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """t-based interval for the mean over queries (the error bars of the per-system plot)."""
    array = np.asarray(values, dtype=float)
    if len(array) < 2:
        mean = float(array.mean()) if len(array) else 0.0
        return mean, mean
    mean, sem = float(array.mean()), float(stats.sem(array))
    if sem == 0.0:
        return mean, mean
    low, high = stats.t.interval(level, len(array) - 1, loc=mean, scale=sem)
    return float(low), float(high)
