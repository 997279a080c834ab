"""Ray: offline reranking through Ray Data actors, and the HTTP app under Ray Serve, on one small local
cluster (ray.init(num_cpus=2)) shared by the module."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

ray = pytest.importorskip("ray")

from crossrank.model.cross_encoder import CrossEncoder  # noqa: E402
from crossrank.server.batch_scoring import rerank_file  # noqa: E402
from crossrank.server.config import ServerConfig  # noqa: E402

pytestmark = pytest.mark.slow

DOCS = ["Paris is in France.", "Cats purr.", {"text": "The capital of France is Paris.", "id": "d3"}, "Rivers flow."]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def test_rerank_file_with_ray_data_matches_engine(cluster, tiny_model_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    records = [{"id": f"q{i}", "query": f"question {i} about France", "documents": DOCS[i % 2:]} for i in range(10)]
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    target = tmp_path / "out.jsonl"
    assert rerank_file(source, target, model=str(tiny_model_dir), actors=2, batch_size=3, top_k=2,
                       cpus_per_actor=0.5) == 10
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in records]
    encoder = CrossEncoder.from_pretrained(tiny_model_dir)
    for record, line in zip(records, lines):
        expected = encoder.rank(record["query"], record["documents"], top_k=2)
        assert [r["index"] for r in line["results"]] == [r.index for r in expected]
        assert [r["score"] for r in line["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)
    assert any(r.get("id") == "d3" for line in lines for r in line["results"])


def test_rerank_file_reports_bad_input(cluster, tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        rerank_file(tmp_path / "missing.jsonl", tmp_path / "out.jsonl", model=str(tiny_model_dir))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    with pytest.raises(Exception, match="'documents' list"):
        rerank_file(bad, tmp_path / "out.jsonl", model=str(tiny_model_dir))


def test_ray_serve_runs_the_same_app(cluster, tiny_model_dir):
    from ray import serve

    from crossrank.server.ray_serve import build_application

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(ServerConfig(model=str(tiny_model_dir)), replicas=1, num_cpus=0.5),
              name="crossrank", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while httpx.get(f"{url}/ready").status_code != 200:
        assert time.time() < deadline
        time.sleep(0.5)
    response = httpx.post(f"{url}/v2/rerank", json={"query": "capital of France", "documents": DOCS}, timeout=60)
    assert response.status_code == 200, response.text
    expected = CrossEncoder.from_pretrained(tiny_model_dir).rank("capital of France", DOCS)
    assert [r["index"] for r in response.json()["results"]] == [r.index for r in expected]
    assert httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": ["d"] * 1001}).status_code == 413
