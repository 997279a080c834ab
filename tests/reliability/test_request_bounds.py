"""Items 2 and 5: one request cannot hold the scorer past its answer, every request's work is capped, and
failures that used to be 500s (queue full under /search, a lone surrogate, a shutdown with work in flight, damaged
folders under the index root) get the right status in the JSON error shape, never a server path."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import free_port, wait_ready
from fastapi.testclient import TestClient

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.batcher import MicroBatcher, RequestTimedOut
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer

pytestmark = pytest.mark.reliability  # tests/reliability: each reproduces an operator-found defect


@pytest.fixture(scope="module")
def scorer(tiny_model_dir) -> EncoderScorer:
    return EncoderScorer(CrossEncoder.from_pretrained(tiny_model_dir))


class SlowScorer:
    """Wraps a scorer: every call sleeps `seconds` and is counted, like a long forward pass."""

    def __init__(self, inner, seconds: float) -> None:  # noqa: ANN001
        self.inner, self.seconds, self.calls = inner, seconds, 0
        self.name, self.window_tokens, self.interpolation = "slow", 256, None

    def __call__(self, queries, texts, caps):  # noqa: ANN001, ANN204
        self.calls += 1
        time.sleep(self.seconds)
        return self.inner(queries, texts, caps)


def test_legal_but_huge_request_is_refused_naming_the_limit(scorer):
    with TestClient(create_app(ServerConfig(), scorer)) as client:
        documents = ["word " * 400] * 1000  # 1,000 × 2,000 characters: within max_documents and max_chars
        response = client.post("/v1/rerank", json={"query": "q", "documents": documents})
        assert response.status_code == 413 and "max_request_tokens" in response.json()["message"]
        capped = client.post("/v2/rerank", json={"query": "q", "documents": documents[:300], "max_tokens_per_doc": 64})
        assert capped.status_code == 200  # truncation brings the same documents under the limit
        cjk = ["".join(chr(0x4E00 + (i * 7 + j) % 2000) for j in range(1000)) for i in range(200)]
        dense = client.post("/v1/rerank", json={"query": "q", "documents": cjk})  # ~1 token per character:
        assert dense.status_code == 413  # counted with the tokenizer, not guessed from characters / 4


def test_abandoned_request_stops_being_scored_at_the_next_slice(scorer):
    slow = SlowScorer(scorer, 0.2)

    async def run() -> tuple[int, float]:
        batcher = MicroBatcher(slow, slice_tokens=64, request_timeout_s=0.5)  # ~25 slices of 0.2 s for 100 pairs
        await batcher.start()
        texts = ["some words here " * 3] * 100
        with pytest.raises(RequestTimedOut):
            await batcher.submit(["q"] * len(texts), texts, [None] * len(texts))
        start = time.perf_counter()
        quick = await batcher.submit(["q"], ["a short one"], [None])  # waits at most for the slice in progress
        waited = time.perf_counter() - start
        assert len(quick.logits) == 1
        await batcher.close()
        return slow.calls, waited

    calls, waited = asyncio.run(run())
    assert calls <= 6, f"{calls} scorer calls: the abandoned request kept being scored"
    assert waited < 1.0


def test_search_queue_full_is_503_with_retry_after(scorer, tmp_path):
    entered, release = threading.Event(), threading.Event()

    def blocked(queries, texts, caps):  # noqa: ANN001, ANN202
        entered.set()
        release.wait(30)
        return scorer(queries, texts, caps)

    blocked.name, blocked.window_tokens, blocked.interpolation = "blocked", 256, None  # type: ignore[attr-defined]
    config = ServerConfig(index_root=tmp_path, max_queue_pairs=4, max_wait_ms=0)
    with TestClient(create_app(config, blocked)) as client:
        docs = [{"id": str(i), "text": f"alpha document {i}"} for i in range(6)]
        created = client.post("/indexes/s/documents?create=true", json={"documents": docs, "dense": False})
        assert created.status_code == 200
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
            assert entered.wait(30)
            queued = pool.submit(client.post, "/v1/rerank", json={"query": "q", "documents": ["a", "b", "c"]})
            time.sleep(0.3)
            response = client.post("/search", json={"index": "s", "query": "alpha", "rerank_k": 5})
            release.set()
            assert first.result().status_code == 200 and queued.result().status_code == 200
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] and "queue full" in response.json()["message"]


@pytest.mark.parametrize("path, body", [
    ("/v1/rerank", {"query": "q", "documents": ["bad \ud800 here"]}),
    ("/v1/rerank", {"query": "q", "documents": [{"text": "fine", "note": "\udfff"}]}),
    ("/indexes/u/documents?create=true", {"documents": [{"id": "1", "text": "bad \ud800 here"}]}),
    ("/indexes/u/documents?create=true", {"documents": [{"id": "1", "text": "ok", "metadata": {"k": "\ud800"}}]}),
])
def test_lone_surrogates_are_422_not_500(scorer, tmp_path, path, body):
    with TestClient(create_app(ServerConfig(index_root=tmp_path), scorer)) as client:
        response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
        assert response.status_code == 422 and "surrogate" in response.json()["message"]
        assert not (tmp_path / "u").exists()  # nothing written


def test_damaged_folders_under_the_root_are_4xx_without_server_paths(scorer, tmp_path):
    (tmp_path / "stray").write_text("not an index")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "passages.sqlite").write_bytes(b"garbage" * 100)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("someone's files")
    with TestClient(create_app(ServerConfig(index_root=tmp_path), scorer), raise_server_exceptions=False) as client:
        answers = [
            client.post("/search", json={"index": "stray", "query": "q"}),
            client.post("/search", json={"index": "broken", "query": "q"}),
            client.post("/indexes/broken/documents", json={"documents": [{"id": "1", "text": "t"}]}),
            client.put("/indexes/stray"),
            client.put("/indexes/full"),
            client.post("/indexes/full/documents?create=true", json={"documents": [{"id": "1", "text": "t"}]}),
        ]
        for answer in answers:
            assert answer.status_code in (404, 409), answer.text
            assert str(tmp_path) not in answer.text and "/tmp" not in answer.text
        assert client.get("/indexes").json() == {"indexes": ["broken"]}  # listed: it is an index, damaged
    assert (tmp_path / "full" / "notes.txt").read_text() == "someone's files"  # nothing touched


DRAIN_SERVER = """
import sys, time
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.http import serve_http
from crossrank.server.scoring import EncoderScorer

inner = EncoderScorer(CrossEncoder.from_pretrained(sys.argv[1]))

class Slow:
    name, window_tokens, interpolation = "slow", 256, None
    def __call__(self, queries, texts, caps):
        print("scoring", flush=True)
        time.sleep(0.3)
        return inner(queries, texts, caps)

app = create_app(ServerConfig(slice_tokens=64), Slow())
serve_http(app, app.state.config, host="127.0.0.1", port=int(sys.argv[2]), drain_seconds=3)
"""


@pytest.mark.slow
def test_sigterm_with_more_work_than_the_drain_answers_503_json_and_stops_scoring(tiny_model_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", DRAIN_SERVER, str(tiny_model_dir), str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        with ThreadPoolExecutor(1) as pool:  # ~60 slices of 0.3 s: far more than the 3 s drain
            in_flight = pool.submit(httpx.post, f"{url}/v1/rerank", timeout=60,
                                    json={"query": "q", "documents": ["some words here " * 3] * 240})
            time.sleep(1.0)
            sent = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            response = in_flight.result()
        assert response.status_code == 503 and response.headers["retry-after"]
        assert "shutting down" in response.json()["message"]
        assert time.perf_counter() - sent < 3.5
        process.wait(10)
        assert time.perf_counter() - sent < 6  # the scorer stopped instead of computing the rest
    finally:
        if process.poll() is None:
            process.kill()
    scored = process.stdout.read().count("scoring")
    assert scored < 20, f"{scored} slices scored; the batcher kept computing after the drain"
