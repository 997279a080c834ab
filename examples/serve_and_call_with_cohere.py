"""Serve the reranker over HTTP and call it with the Cohere SDK, unchanged but for the base URL.

    python examples/serve_and_call_with_cohere.py
"""

import os
import socket
import subprocess
import time

import cohere
import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


port = free_port()
server = subprocess.Popen(["crossrank", "serve", "--port", str(port)], env={**os.environ, "CROSSRANK_API_KEYS": "key1"})
try:
    for _ in range(240):  # ready once the model is loaded (the first start exports it to ONNX once)
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    else:
        raise SystemExit("the server did not start")
    co = cohere.ClientV2(api_key="key1", base_url=f"http://127.0.0.1:{port}")
    response = co.rerank(model="crossrank", query="capital of France",
                         documents=["Paris is the capital and largest city of France.", "Berlin is in Germany."],
                         top_n=1)
    best = response.results[0]
    print(f"best: document {best.index}, relevance {best.relevance_score:.3f}")
finally:
    server.terminate()
    server.wait(timeout=60)
