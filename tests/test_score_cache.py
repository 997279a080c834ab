"""The score cache: bounded, thread-safe, and invisible in the answers — a cached pair scores exactly what the model
gives it, only pairs never seen run the model, and the server exports the hit rate."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.model.score_cache import ScoreCache
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer
from crossrank.types import Document

DOCS = [Document(text) for text in ("Paris is the capital of France.", "Bread needs yeast.", "Rust has borrowing.",
                                    "The Seine flows through Paris. " * 40)]


@pytest.fixture(scope="module")
def plain(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture
def cached(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir, cache_entries=3)


def count_forward_rows(model: CrossEncoder) -> list[int]:
    """Rows the backend runs per batch (a hit must run none)."""
    rows: list[int] = []
    run = model.backend.run

    def counting(batch):
        rows.append(len(batch["input_ids"]))
        return run(batch)

    model.backend.run = counting
    return rows


def test_keys_separate_query_from_document_and_bad_sizes_are_refused():
    assert ScoreCache.key("a", "bc") != ScoreCache.key("ab", "c") != ScoreCache.key("abc", "")
    assert ScoreCache.key("q", "d") == ScoreCache.key("q", "d") and len(ScoreCache.key("q", "d")) == 16
    assert ScoreCache.key("\ud800", "x")  # a lone surrogate (valid in JSON strings) still hashes
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_entries"):
            ScoreCache(bad)


def test_least_recently_used_entries_go_first_and_stats_count_lookups():
    cache = ScoreCache(2)
    cache.put_many([b"a", b"b"], [(1.0, 1), (2.0, 1)])
    assert cache.get_many([b"a", b"x"]) == [(1.0, 1), None]  # touches a: b is now the oldest
    cache.put_many([b"c"], [(3.0, 2)])
    assert cache.get_many([b"a", b"b", b"c"]) == [(1.0, 1), None, (3.0, 2)]
    stats = cache.stats()
    assert (stats.entries, stats.max_entries, stats.hits, stats.misses) == (2, 2, 3, 2)
    assert stats.hit_rate == pytest.approx(3 / 5)
    cache.clear()
    assert cache.stats().entries == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.booleans()), max_size=200), st.integers(1, 8))
def test_the_cache_never_exceeds_its_bound_and_answers_what_was_stored(operations, size):
    cache, stored = ScoreCache(size), {}
    for number, write in operations:
        key = number.to_bytes(2, "big")
        if write:
            cache.put_many([key], [(float(number), 1)])
            stored[key] = (float(number), 1)
        else:
            (found,) = cache.get_many([key])
            assert found is None or found == stored[key]
        assert cache.stats().entries <= size


def test_cached_scores_equal_the_models_and_repeats_skip_it(plain, cached):
    queries = ["capital of France", "capital of France", "bread", "capital of France"]
    documents = [DOCS[0], DOCS[3], DOCS[1], DOCS[0]]  # the last pair repeats the first
    expected = plain.score(queries, documents)
    rows = count_forward_rows(cached)
    first = cached.score(queries, documents)
    assert sum(rows) == 3 + int(expected.windows[1]) - 1  # 3 distinct pairs, the long one in several windows
    np.testing.assert_allclose(first.logits, expected.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(first.windows, expected.windows)
    rows.clear()
    again = cached.score(queries[:3], documents[:3])
    assert rows == []  # every pair answered from memory
    np.testing.assert_array_equal(again.logits, first.logits[:3])
    np.testing.assert_array_equal(again.probabilities, first.probabilities[:3])
    stats = cached.cache.stats()  # lookups: the in-call repeat was a miss (though scored once), then 3 hits
    assert (stats.hits, stats.misses) == (3, 4)


def test_a_full_cache_evicts_and_rescores_what_it_forgot(cached):
    rows = count_forward_rows(cached)
    cached.score(["q"] * 3, DOCS[:3])
    cached.score(["q"], [DOCS[2]])  # a hit: DOCS[2] is now the most recent
    cached.score(["other"], [DOCS[0]])  # a fourth entry evicts the oldest, (q, DOCS[0])
    rows.clear()
    cached.score(["q", "q"], [DOCS[2], DOCS[0]])
    assert sum(rows) == 1 and cached.cache.stats().entries == 3


def test_threads_sharing_one_cached_model_get_the_uncached_answers(plain, tiny_model_dir):
    model = CrossEncoder.from_pretrained(tiny_model_dir, cache_entries=100)
    expected = plain.score(["paris"] * len(DOCS), DOCS).logits
    results, errors = [], []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(model.score(["paris"] * len(DOCS), DOCS).logits)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 20
    for logits in results:
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_the_server_caches_by_default_and_exports_the_hit_rate(tiny_model_dir):
    body = {"query": "capital of France", "documents": [d.text for d in DOCS[:3]]}
    with TestClient(create_app(ServerConfig(model=str(tiny_model_dir)))) as client:
        first = client.post("/v1/rerank", json=body).json()
        second = client.post("/v1/rerank", json=body).json()
        assert [r["relevance_score"] for r in second["results"]] == [r["relevance_score"] for r in first["results"]]
        metrics = client.get("/metrics").text
    assert "crossrank_score_cache_hits_total 3.0" in metrics and "crossrank_score_cache_misses_total 3.0" in metrics
    assert "crossrank_score_cache_entries 3.0" in metrics
    encoder = CrossEncoder.from_pretrained(tiny_model_dir)
    with TestClient(create_app(ServerConfig(score_cache_entries=0), EncoderScorer(encoder))) as client:
        client.post("/v1/rerank", json=body)
        assert "score_cache" not in client.get("/metrics").text
    with pytest.raises(ValueError, match="score_cache_entries"):
        ServerConfig(score_cache_entries=-1)
