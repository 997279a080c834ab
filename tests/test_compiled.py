"""The bf16 graph compiled ahead of time for this CPU: the same scores as eager bf16 at every batch and length,
built once per checkpoint and machine, safe across threads, and eager (never wrong) where compiling fails."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import pytest

from crossrank.model.backends import compiled
from crossrank.model.cross_encoder import CrossEncoder

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow  # each compile is ~15 s of both cores

PAIRS = [("what is the capital of france", "Paris is the capital and largest city of France."),
         ("what is the capital of france", "The mitochondrion is the powerhouse of the cell."),
         ("how do vaccines work", "Vaccines train the immune system to recognise a pathogen, often with a weakened "
                                  "or inactivated form of it, so that a later infection meets a prepared defence."),
         ("rivers", " ".join(f"Barge {i} carried cargo down the river past the mills." for i in range(30)))]


@pytest.fixture
def compiling(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Compiling on, into this test's own cache."""
    monkeypatch.setenv(compiled.ENVIRONMENT_SWITCH, "1")
    monkeypatch.setenv("CROSSRANK_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("fixture", ["closed_gated_dir", "tiny_model_dir"])  # the segments and the joint graph
def test_compiled_bf16_scores_as_eager_bf16_at_any_batch_and_length(fixture: str, compiling: Path,
                                                                   request: pytest.FixtureRequest,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = request.getfixturevalue(fixture)
    fast = CrossEncoder.from_pretrained(model_dir, backend="torch", quantize="bf16", max_length=128)
    assert fast.backend.compiled is not None
    assert fast.backend.graph is None  # the package holds the weights; the eager module is not kept as well
    assert len(list((compiling / "compiled").glob("*/model.pt2"))) == 1
    monkeypatch.setenv(compiled.ENVIRONMENT_SWITCH, "0")
    eager = CrossEncoder.from_pretrained(model_dir, backend="torch", quantize="bf16", max_length=128)
    assert eager.backend.compiled is None
    for pairs in (PAIRS, PAIRS[:1], PAIRS[2:3]):  # batches of several rows, of one row, of different lengths
        expected = eager.predict(pairs)
        np.testing.assert_allclose(fast.predict(pairs), expected, atol=0.05 * max(1.0, float(np.abs(expected).max())))


def test_the_package_is_built_once_and_reused(closed_gated_dir: Path, compiling: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    first = CrossEncoder.from_pretrained(closed_gated_dir, backend="torch", quantize="bf16")

    def must_not_compile(*args, **kwargs) -> None:
        raise AssertionError("compiled again although the package is cached")

    monkeypatch.setattr(compiled, "compile_package", must_not_compile)
    second = CrossEncoder.from_pretrained(closed_gated_dir, backend="torch", quantize="bf16")
    assert second.backend.compiled is not None
    np.testing.assert_array_equal(second.predict(PAIRS), first.predict(PAIRS))


def test_a_compiled_model_scores_from_several_threads_at_once(closed_gated_dir: Path, compiling: Path) -> None:
    model = CrossEncoder.from_pretrained(closed_gated_dir, backend="torch", quantize="bf16")
    expected = model.predict(PAIRS)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def score() -> None:
        try:
            for _ in range(5):
                results.append(model.predict(PAIRS))
        except BaseException as error:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=score) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 20
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_a_failed_compile_says_so_and_runs_eager(closed_gated_dir: Path, compiling: Path,
                                                monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    def broken(*args, **kwargs) -> None:
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(compiled, "compile_package", broken)
    with caplog.at_level("WARNING", logger=compiled.__name__):
        model = CrossEncoder.from_pretrained(closed_gated_dir, backend="torch", quantize="bf16")
    assert model.backend.compiled is None
    assert "no C++ compiler here" in caplog.text and "eagerly" in caplog.text
    assert not list((compiling / "compiled").glob("*/model.pt2"))  # nothing half-built is left to be loaded
    monkeypatch.setenv(compiled.ENVIRONMENT_SWITCH, "0")
    eager = CrossEncoder.from_pretrained(closed_gated_dir, backend="torch", quantize="bf16")
    np.testing.assert_array_equal(model.predict(PAIRS), eager.predict(PAIRS))


def test_fp32_and_a_switched_off_compile_never_build_a_package(closed_gated_dir: Path, compiling: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert CrossEncoder.from_pretrained(closed_gated_dir, backend="torch").backend.compiled is None
    monkeypatch.setenv(compiled.ENVIRONMENT_SWITCH, "0")
    assert CrossEncoder.from_pretrained(closed_gated_dir, backend="torch", quantize="bf16").backend.compiled is None
    assert not (compiling / "compiled").exists()
