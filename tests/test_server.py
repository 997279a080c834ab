"""In-process tests of the rerank service: response shapes, limits, auth, metrics, and the micro-batcher
(merging, failure isolation, backpressure, timeouts) against the real tiny model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.auth import key_matches
from crossrank.server.batcher import MicroBatcher, Overloaded, RequestTimedOut
from crossrank.server.config import ServerConfig, read_api_keys
from crossrank.server.scoring import EncoderScorer
from crossrank.types import Document

DOCS = ["Paris is the capital of France.", "Bananas are yellow.", "The Eiffel Tower is in Paris.",
        "Berlin is in Germany.", "France borders Spain."]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def scorer(encoder) -> EncoderScorer:
    return EncoderScorer(encoder)


@pytest.fixture(scope="module")
def client(scorer):
    with TestClient(create_app(ServerConfig(max_documents=20, max_chars_per_document=500, max_body_bytes=20000),
                               scorer)) as c:
        yield c


class FailingScorer:
    """The real scorer, except that any batch containing the query 'boom' raises (an injected fault)."""

    def __init__(self, scorer: EncoderScorer) -> None:
        self.scorer = scorer
        self.calls: list[set[str]] = []
        self.name = scorer.name
        self.window_tokens = scorer.window_tokens

    def __call__(self, queries, texts, caps):
        self.calls.append(set(queries))
        if "boom" in queries:
            raise RuntimeError("injected failure")
        time.sleep(0.05)  # long enough that concurrent requests queue up behind a running batch
        return self.scorer(queries, texts, caps)


def test_v1_matches_engine_ranking_and_probabilities(client, encoder):
    response = client.post("/v1/rerank", json={"query": "capital of France", "documents": DOCS,
                                               "return_documents": True})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = encoder.rank("capital of France", DOCS)
    assert [r["index"] for r in body["results"]] == [r.index for r in expected]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([r.probability for r in expected],
                                                                            abs=1e-6)
    assert all(0 <= r["relevance_score"] <= 1 for r in body["results"])
    assert body["results"][0]["document"] == {"text": DOCS[expected[0].index]}
    assert body["meta"]["api_version"] == {"version": "1"}
    assert body["usage"]["total_tokens"] == body["meta"]["tokens"]["input_tokens"] > 0
    assert body["id"] and body["model"]


def test_unversioned_alias_answers_like_v1(client):
    payload = {"query": "Paris", "documents": DOCS, "top_n": 3}
    plain, v1 = client.post("/rerank", json=payload).json(), client.post("/v1/rerank", json=payload).json()
    assert plain["results"] == v1["results"] and "usage" in plain


def test_v2_top_n_without_documents(client):
    body = client.post("/v2/rerank", json={"model": "x", "query": "Paris", "documents": DOCS, "top_n": 2}).json()
    assert len(body["results"]) == 2 and "document" not in body["results"][0]
    assert body["meta"]["api_version"] == {"version": "2"} and "usage" not in body


def test_jina_shape_objects_and_nulls_accepted(client):
    body = client.post("/v1/rerank", json={
        "model": "jina-reranker-v2", "query": "Paris", "top_n": None, "return_documents": True,
        "documents": [{"text": "Paris is nice", "id": "a"}, "Rome"]}).json()
    assert {r["index"] for r in body["results"]} == {0, 1}
    assert {"text": "Paris is nice", "id": "a"} in [r["document"] for r in body["results"]]
    assert body["usage"]["prompt_tokens"] > 0


def test_rank_fields_read_the_named_fields(client, encoder):
    documents = [{"text": "t1", "title": "Bananas", "body": "yellow fruit"},
                 {"text": "t2", "title": "Paris", "body": "capital of France", "year": 2024},
                 {"text": "Paris, France", "other": "x"}]  # none of the rank fields: its text is read
    body = client.post("/v1/rerank", json={"query": "France", "documents": documents,
                                           "rank_fields": ["title", "body", "year"]}).json()
    expected = encoder.rank("France", ["title: Bananas\nbody: yellow fruit",
                                       "title: Paris\nbody: capital of France\nyear: 2024", "Paris, France"])
    assert [r["index"] for r in body["results"]] == [r.index for r in expected]


def test_max_tokens_per_doc_truncates(client):
    long_doc = "word " * 90
    full = client.post("/v2/rerank", json={"query": "q", "documents": [long_doc]}).json()
    cut = client.post("/v2/rerank", json={"query": "q", "documents": [long_doc], "max_tokens_per_doc": 10}).json()
    assert cut["meta"]["tokens"]["input_tokens"] == full["meta"]["tokens"]["input_tokens"] - 80


@pytest.mark.parametrize("payload, fragment", [
    ({"query": "   ", "documents": ["a"]}, "query is empty"),
    ({"query": "q", "documents": [{"title": "no text"}]}, "documents.0.TextDocument.text: Field required"),
    ({"query": "q", "documents": []}, "documents: List should have at least 1 item"),
    ({"query": "q", "documents": ["a"], "top_n": True}, "top_n: expected a JSON number"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ({"query": "q", "documents": "not a list"}, "documents"),
    ({"documents": ["a"]}, "query"),
    ({"query": "q", "documents": [{"a": 1}], "rank_fields": ["a"]}, "text: Field required"),
])
def test_bad_requests_get_422_with_message(client, payload, fragment):
    response = client.post("/v1/rerank", json=payload)
    assert response.status_code == 422
    assert fragment in response.json()["message"]


def test_oversize_inputs_get_413_with_message(client):
    too_many = client.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 21})
    assert too_many.status_code == 413 and "limit is 20 (max_documents)" in too_many.json()["message"]
    too_long = client.post("/v2/rerank", json={"query": "q", "documents": ["ok", "x" * 501]})
    assert too_long.status_code == 413 and "documents[1] has 501 characters" in too_long.json()["message"]
    too_big = client.post("/v1/rerank", content=b'{"query": "q", "documents": ["' + b"x" * 30000 + b'"]}',
                          headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and "max_body_bytes" in too_big.json()["message"]

    def chunks():
        yield b'{"query": "q", "documents": ["'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"]}'

    streamed = client.post("/v1/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_auth_requires_a_matching_bearer_key(scorer, caplog):
    config = ServerConfig(api_keys=frozenset({"secret-1", "secret-2"}))
    with TestClient(create_app(config, scorer)) as c:
        payload = {"query": "q", "documents": ["a"]}
        assert c.post("/v1/rerank", json=payload).status_code == 401
        wrong = c.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["message"]
        assert c.post("/v1/rerank", json=payload, headers={"Authorization": "Bearer secret-2"}).status_code == 200
        assert c.get("/health").status_code == 200  # probes stay open
    assert "secret-2" not in caplog.text


def test_key_helpers(tmp_path):
    assert key_matches("b", frozenset({"a", "b"})) and not key_matches("c", frozenset({"a", "b"}))
    file = tmp_path / "keys"
    file.write_text("k1  # ops\n\n# comment\nk2\n")
    assert read_api_keys("k3, ,k4", file) == {"k1", "k2", "k3", "k4"}
    with pytest.raises(ValueError, match="not found"):
        read_api_keys(None, tmp_path / "missing")
    with pytest.raises(ValueError, match="max_documents"):
        ServerConfig(max_documents=0)
    with pytest.raises(ValueError, match="engine_batch_tokens"):
        ServerConfig(engine_batch_tokens=0)
    assert ServerConfig().engine_batch_tokens is None  # the engine's per-precision default


def test_health_ready_and_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["status"] == "ready"
    client.post("/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
    text = client.get("/metrics").text
    for name in ("crossrank_requests_total{route=\"/v1/rerank\",status=\"200\"}", "crossrank_request_seconds_bucket",
                 "crossrank_batch_pairs_bucket", "crossrank_queue_pairs", "crossrank_tokens_total",
                 "crossrank_rejected_total"):
        assert name in text


def test_openapi_is_published(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/rerank", "/v2/rerank", "/health", "/ready", "/metrics"} <= set(spec["paths"])


def test_failing_batch_fails_only_its_own_request(scorer):
    failing = FailingScorer(scorer)
    with TestClient(create_app(ServerConfig(max_wait_ms=1000), failing)) as c:  # a long wait merges all four
        results: dict[str, int] = {}

        def call(query: str) -> None:
            results[query] = c.post("/v1/rerank", json={"query": query, "documents": DOCS}).status_code

        threads = [threading.Thread(target=call, args=(q,)) for q in ("Paris", "boom", "Berlin", "Spain")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == {"Paris": 200, "boom": 500, "Berlin": 200, "Spain": 200}
        assert any("boom" in call and len(call) > 1 for call in failing.calls)  # it failed inside a merged batch
        assert c.post("/v1/rerank", json={"query": "Paris", "documents": DOCS}).status_code == 200
        assert "crossrank_batch_failures_total 1.0" in c.get("/metrics").text


def test_full_queue_answers_503_with_retry_after(scorer):
    entered, release = threading.Event(), threading.Event()

    def blocked(queries, texts, caps):
        entered.set()
        release.wait(30)
        return scorer(queries, texts, caps)

    with TestClient(create_app(ServerConfig(max_queue_pairs=8, max_wait_ms=0), blocked)) as c:
        payload = {"query": "q", "documents": DOCS}
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(c.post, "/v1/rerank", json=payload)
            assert entered.wait(10)  # the worker is busy with the first request
            queued = pool.submit(c.post, "/v1/rerank", json=payload)
            deadline = time.time() + 10
            while "crossrank_queue_pairs 5.0" not in c.get("/metrics").text:
                assert time.time() < deadline
                time.sleep(0.02)
            refused = c.post("/v1/rerank", json=payload)
            release.set()
            assert running.result().status_code == queued.result().status_code == 200
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "queue full" in refused.json()["message"]


def test_batcher_merges_concurrent_requests_and_splits_results(scorer, encoder):
    calls: list[int] = []

    def counting(queries, texts, caps):
        calls.append(len(texts))
        return scorer(queries, texts, caps)

    async def main():
        batcher = MicroBatcher(counting, max_wait_ms=50)
        await batcher.start()
        outs = await asyncio.gather(*(batcher.submit([q] * len(DOCS), DOCS, [None] * len(DOCS)) for q in queries))
        await batcher.close()
        return outs

    queries = ["Paris", "Germany", "fruit"]
    outs = asyncio.run(main())
    assert calls == [3 * len(DOCS)]
    for query, out in zip(queries, outs):
        alone = encoder.score([query] * len(DOCS), [Document(d) for d in DOCS])
        np.testing.assert_allclose(out.logits, alone.logits, atol=1e-5)
        np.testing.assert_allclose(out.probabilities, alone.probabilities, atol=1e-6)


def test_batcher_backpressure_timeout_and_close(scorer):
    class Slow:
        def __call__(self, queries, texts, caps):
            time.sleep(0.3)
            return scorer(queries, texts, caps)

    async def main():
        batcher = MicroBatcher(Slow(), max_queue_pairs=6, request_timeout_s=0.1, max_wait_ms=0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(["q"] * 5, DOCS, [None] * 5))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as overloaded:
            await batcher.submit(["q"] * 2, DOCS[:2], [None] * 2)
        assert overloaded.value.retry_after >= 1
        with pytest.raises(RequestTimedOut):
            await first
        await batcher.close()
        with pytest.raises(Overloaded, match="not accepting"):
            await batcher.submit(["q"], DOCS[:1], [None])

    asyncio.run(main())


def test_billed_search_units_follow_coheres_rule(scorer):
    from crossrank.server.app import search_units

    # One unit per 100 documents; a document over 500 tokens (with its query) counts once per 500-token chunk.
    cases = {(10,) * 100: 1, (10,) * 101: 2, (500,) * 100: 1, (501,) + (10,) * 99: 2, (1200,): 1, (250,) * 150: 2}
    assert {tokens: search_units(np.array(tokens)) for tokens in cases} == cases
    with TestClient(create_app(ServerConfig(max_documents=300, max_chars_per_document=5000), scorer)) as c:
        def units(documents: list[str]) -> int:
            body = c.post("/v2/rerank", json={"query": "q", "documents": documents}).json()
            return body["meta"]["billed_units"]["search_units"]

        assert units(["short text"] * 100) == 1
        assert units(["short text"] * 101) == 2
        assert units(["word " * 600] + ["short text"] * 99) == 2  # 601 tokens: two chunks, 101 documents billed


def test_v1_max_chunks_per_doc_caps_each_document_at_whole_windows(scorer):
    window = scorer.window_tokens
    long_doc = "word " * (2 * window + 50)  # three windows of document tokens
    with TestClient(create_app(ServerConfig(max_chars_per_document=20000), scorer)) as c:
        def tokens(**extra) -> int:
            body = c.post("/v1/rerank", json={"query": "q", "documents": [long_doc], **extra}).json()
            return body["meta"]["tokens"]["input_tokens"]

        assert tokens() == 1 + 2 * window + 50  # the query's one token and the whole document
        assert tokens(max_chunks_per_doc=1) == 1 + window
        assert tokens(max_chunks_per_doc=2) == 1 + 2 * window
        assert tokens(max_chunks_per_doc=5) == tokens()
