"""The service as clients see it: a real uvicorn server on 127.0.0.1, the official cohere SDK (v1 and v2),
16 concurrent clients, client disconnects and SIGTERM drain (schemathesis: tests/reliability/test_openapi_fuzz.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cohere
import httpx
import pytest
from conftest import LiveServer, free_port, wait_ready

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer

KEY = "test-key-123"
DOCS = [f"Document {i} talks about {topic}." for i, topic in
        enumerate(["Paris", "cats", "the French capital", "rivers", "France", "dogs", "Berlin", "bread"])]


@pytest.fixture(scope="module")
def base_url(tiny_model_dir, tmp_path_factory):
    config = ServerConfig(model=str(tiny_model_dir), api_keys=frozenset({KEY}), max_documents=200,
                          index_root=tmp_path_factory.mktemp("indexes"))
    with LiveServer(create_app(config)) as url:
        yield url


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_cohere_v1_client(base_url, encoder):
    client = cohere.Client(api_key=KEY, base_url=base_url)
    response = client.rerank(model="crossrank", query="capital of France", documents=DOCS, top_n=3,
                             return_documents=True)
    expected = encoder.rank("capital of France", DOCS, top_k=3)
    assert [r.index for r in response.results] == [r.index for r in expected]
    assert [r.relevance_score for r in response.results] == pytest.approx([r.probability for r in expected], abs=1e-6)
    assert response.results[0].document.text == DOCS[expected[0].index]
    assert response.meta.api_version.version == "1"
    objects = client.rerank(query="cats", documents=[{"text": d} for d in DOCS], model="m")
    assert sorted(r.index for r in objects.results) == list(range(len(DOCS)))


def test_cohere_v2_client(base_url, encoder):
    client = cohere.ClientV2(api_key=KEY, base_url=base_url)
    response = client.rerank(model="crossrank", query="dogs", documents=DOCS, max_tokens_per_doc=64)
    expected = encoder.rank("dogs", DOCS)
    assert [r.index for r in response.results] == [r.index for r in expected]
    assert all(0 <= r.relevance_score <= 1 for r in response.results)
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=base_url).rerank(model="m", query="q", documents=["d"])


def test_jina_request_over_http(base_url):
    response = httpx.post(f"{base_url}/v1/rerank", headers=auth(), json={
        "model": "jina-reranker-v2-base-multilingual", "query": "Paris", "documents": DOCS, "top_n": 2,
        "return_documents": True})
    body = response.json()
    assert response.status_code == 200 and len(body["results"]) == 2
    assert body["usage"]["total_tokens"] > 0 and body["results"][0]["document"]["text"] in DOCS


def test_concurrent_clients_get_single_request_results(base_url):
    """16 clients × 60 requests, merged into shared batches, answer exactly what each request gets alone."""
    requests = [{"query": f"query {i % 7} about {DOCS[i % len(DOCS)].split()[-1]}",
                 "documents": DOCS[i % 3:], "top_n": 4} for i in range(60)]
    with httpx.Client(headers=auth()) as client:
        alone = [client.post(f"{base_url}/v2/rerank", json=r).json()["results"] for r in requests]

    def run_client(seed: int) -> list[tuple[int, list]]:
        out = []
        with httpx.Client(headers=auth(), timeout=60) as client:
            for j in range(60):
                index = (seed * 7 + j) % 60
                response = client.post(f"{base_url}/v2/rerank", json=requests[index])
                assert response.status_code == 200, response.text
                out.append((index, response.json()["results"]))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [item for chunk in pool.map(run_client, range(16)) for item in chunk]
    assert len(results) == 960
    for index, got in results:
        assert [r["index"] for r in got] == [r["index"] for r in alone[index]]
        assert [r["relevance_score"] for r in got] == pytest.approx([r["relevance_score"] for r in alone[index]],
                                                                   abs=1e-5)
    batches = httpx.get(f"{base_url}/metrics").text
    merged = [line for line in batches.splitlines() if line.startswith('crossrank_batch_requests_bucket{le="1.0"}')]
    total = [line for line in batches.splitlines() if line.startswith("crossrank_batch_requests_count")]
    assert float(merged[0].split()[-1]) < float(total[0].split()[-1])  # some batches held several requests


class GatedScorer:
    """The real scorer, except that a batch holding the query "hold" waits until the test opens the gate, so the
    server is busy for exactly as long as the test needs, on a slow or a fast machine alike."""

    def __init__(self, encoder: CrossEncoder) -> None:
        self.inner = EncoderScorer(encoder)
        self.name = self.inner.name
        self.gate = threading.Event()

    def __call__(self, queries, texts, token_caps):
        if "hold" in queries:
            assert self.gate.wait(60), "the test never opened the gate"
        return self.inner(queries, texts, token_caps)


def metric(url: str, series: str) -> float:
    """One sample of the live server's /metrics (0 before the series first appears)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_disconnected_client_is_not_scored(encoder, tmp_path):
    """A client that gives up while queued behind a busy worker is dropped, counted, and the server goes on."""
    scorer = GatedScorer(encoder)
    config = ServerConfig(model="unused", api_keys=frozenset({KEY}), index_root=tmp_path)

    with LiveServer(create_app(config, scorer=scorer)) as url:
        def rejected() -> float:
            return metric(url, 'crossrank_rejected_total{reason="disconnected"}')

        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(httpx.post, f"{url}/v1/rerank", json={"query": "hold", "documents": DOCS},
                               headers=auth(), timeout=60)
            time.sleep(0.2)  # the held request is on the worker now
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": DOCS}, headers=auth(), timeout=0.3)
            deadline = time.time() + 10
            while rejected() < 1 and time.time() < deadline:
                time.sleep(0.05)
            scorer.gate.set()
            assert held.result().status_code == 200
        assert rejected() == 1
        after = httpx.post(f"{url}/v1/rerank", json={"query": "q", "documents": DOCS}, headers=auth(), timeout=30)
        assert after.status_code == 200


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "CROSSRANK_API_KEYS": KEY, "CROSSRANK_MODEL": str(tiny_model_dir)}
    process = subprocess.Popen([sys.executable, "-c", "from crossrank.cli import main; main()", "serve",
                                "--port", str(port), "--drain-seconds", "60"],
                               env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        # Distinct documents (the score cache would answer 300 copies of one at once), ~14 scoring slices long.
        documents = [f"doc{i} " + "word " * 299 for i in range(300)]
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.post, f"{url}/v1/rerank", headers=auth(), timeout=120,
                                    json={"query": "drain", "documents": documents})
            # SIGTERM only once the first slice is scored: the request is in flight, not still on its way in (on a
            # loaded machine a fixed sleep let SIGTERM win the race, and new work rightly gets 503).
            deadline = time.time() + 60
            while metric(url, "crossrank_tokens_total") == 0 and not in_flight.done() and time.time() < deadline:
                time.sleep(0.02)
            assert not in_flight.done(), in_flight.result().text
            process.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 200 and len(response.json()["results"]) == 300
        assert process.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    finally:
        if process.poll() is None:
            process.kill()
    logs = process.stderr.read()
    assert KEY not in logs
    records = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert any(r.get("route") == "/v1/rerank" and r.get("status") == 200 for r in records)
    assert any(r["msg"] == "draining" for r in records)
