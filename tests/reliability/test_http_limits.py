"""Item 3: the HTTP layer bounds what a client can make the server hold: header size, the time to send a whole
request (slowloris), idle keep-alive and concurrent connections. A live server on a loopback port, configured
exactly as `crossrank serve` configures uvicorn; every probe is bounded in size and time."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from conftest import LiveServer

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer

pytestmark = pytest.mark.reliability  # tests/reliability: each reproduces an operator-found defect

LIMITS = ServerConfig(max_header_bytes=16 * 1024, read_timeout_s=1.5, keep_alive_s=1.0, max_connections=8)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    app = create_app(LIMITS, EncoderScorer(CrossEncoder.from_pretrained(tiny_model_dir)))
    with LiveServer(app) as url:
        yield int(url.rsplit(":", 1)[1])


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_all(sock: socket.socket, limit_s: float = 10.0) -> bytes:
    """Everything until the server closes the connection (or `limit_s`)."""
    sock.settimeout(limit_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def healthy(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200


def test_oversized_headers_are_refused_without_reading_them_all(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        start = time.perf_counter()
        sent = 0
        try:
            while sent < 8 * 2**20:  # offer up to 8 MB of header; the server must stop reading long before
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert time.perf_counter() - start < 5
    assert healthy(server)


def test_slowloris_headers_are_cut_off_at_the_read_timeout(server):
    with connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        start = time.perf_counter()
        answer = b""
        for _ in range(20):  # a header byte every 0.25 s would keep an unbounded server waiting forever
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.25)
            sock.settimeout(0.01)
            try:
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
        elapsed = time.perf_counter() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"read_timeout_s" in answer
    assert elapsed < 3.5
    assert healthy(server)


def test_a_body_that_never_arrives_is_cut_off(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"query\":")
        start = time.perf_counter()
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert time.perf_counter() - start < 3.5


def test_silent_and_idle_connections_are_closed(server):
    with connect(server) as silent:
        start = time.perf_counter()
        assert read_all(silent) == b""  # connected, never sent a byte: closed at the read timeout
        assert time.perf_counter() - start < 3.5
    with connect(server) as idle:
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(idle)  # answered, then closed after keep_alive_s of silence
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1") == 1


def test_connections_beyond_the_limit_get_503(server):
    held = [connect(server) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.2)
        response = httpx.get(f"http://127.0.0.1:{server}/health", timeout=5)
        assert response.status_code == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert healthy(server)
