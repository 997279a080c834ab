"""Significance on constructed cases: identical systems, a clear shift, noise, Holm's step-down, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from crossrank.evaluate.significance import (
    compare,
    compare_all,
    confidence_interval,
    holm,
    randomisation_test,
    t_test,
)


def values(array: np.ndarray) -> dict[str, float]:
    return {f"q{i}": float(v) for i, v in enumerate(array)}


def test_identical_systems_are_not_different() -> None:
    base = values(np.linspace(0, 1, 30))
    result = compare(base, base)
    assert (result.delta, result.t_p, result.randomisation_p) == (0.0, 1.0, 1.0)
    assert (result.wins, result.ties, result.losses) == (0, 30, 0)


def test_a_consistent_improvement_is_significant() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.6, 50)
    better = base + 0.2 + rng.normal(0, 0.05, 50)
    result = compare(values(better), values(base), permutations=2000)
    assert result.delta == pytest.approx(float((better - base).mean()))
    assert result.t_p < 1e-10
    assert result.randomisation_p == pytest.approx(1 / 2001)  # no flip beats the observed mean
    assert result.wins == 50 and result.losses == 0


def test_pure_noise_is_not_significant_and_tests_agree_with_scipy() -> None:
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, 40)
    noisy = base + rng.normal(0, 0.1, 40)
    differences = noisy - base
    assert t_test(differences) == pytest.approx(stats.ttest_rel(noisy, base).pvalue)
    p_rand = randomisation_test(differences, permutations=5000)
    assert p_rand > 0.05
    # Randomisation and t-test agree closely on well-behaved differences.
    assert p_rand == pytest.approx(t_test(differences), abs=0.05)


def test_randomisation_exact_on_tiny_case() -> None:
    # Differences (1, 1, 1): of the 8 sign patterns only (+,+,+) and (-,-,-) reach |mean| = 1 → p ≈ 2/8.
    assert randomisation_test(np.array([1.0, 1.0, 1.0]), permutations=20000, seed=3) == pytest.approx(0.25, abs=0.01)


def test_a_constant_shift_has_no_t_test_but_a_randomisation_test() -> None:
    base = values(np.array([0.2, 0.5]))
    shifted = values(np.array([0.3, 0.6]))  # +0.1 on both queries: zero variance, t undefined
    result = compare(shifted, base, permutations=2000)
    assert math.isnan(result.t_p)
    assert result.randomisation_p == pytest.approx(0.5, abs=0.05)  # 2 of the 4 sign patterns reach it
    assert math.isnan(t_test(np.full(30, 0.1))) and t_test(np.zeros(30)) == 1.0


def test_holm_step_down() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []
    adjusted = holm([0.01, math.nan, 0.02])  # the undefined test still counts in the family of three
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.03) and adjusted[2] == pytest.approx(0.04)


def test_compare_all_applies_holm_across_systems() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 30)
    systems = {"base": values(base), "same": values(base), "better": values(base + 0.1 + rng.normal(0, 0.01, 30))}
    tests = compare_all(systems, "base", permutations=500)
    assert set(tests) == {"same", "better"}
    assert tests["better"].t_p_holm == pytest.approx(min(1.0, 2 * tests["better"].t_p))
    assert tests["same"].t_p_holm == 1.0


def test_confidence_interval_is_the_t_interval() -> None:
    # mean 0.25, standard error 0.0645 (sd 0.129 over 4), t(0.975, 3) = 3.182: 0.25 ± 0.2054
    assert confidence_interval([0.1, 0.2, 0.3, 0.4]) == pytest.approx((0.0446, 0.4554), abs=1e-4)
    assert confidence_interval([0.1, 0.2, 0.3, 0.4], level=0.5) == pytest.approx((0.2006, 0.2994), abs=1e-4)
    assert confidence_interval([0.5]) == (0.5, 0.5)
    assert confidence_interval([0.3, 0.3, 0.3]) == (0.3, 0.3)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same queries"):
        compare({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match="baseline"):
        compare_all({"x": {"a": 1.0}}, "missing")
    with pytest.raises(ValueError, match="permutations"):
        randomisation_test(np.array([1.0]), permutations=0)
