"""Items 4, 6 and 7: named indexes over HTTP are bounded (explicit creation, a cap on how many exist and on how
many stay open), a handle opened read-only while a CLI writer held the lock is upgraded once the lock is free, and
every document id, '/' included, can be updated and deleted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer
from crossrank.store import Index

pytestmark = pytest.mark.reliability  # tests/reliability: each reproduces an operator-found defect


@pytest.fixture(scope="module")
def scorer(tiny_model_dir) -> EncoderScorer:
    return EncoderScorer(CrossEncoder.from_pretrained(tiny_model_dir))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def doc(i: int) -> dict:
    return {"id": str(i), "text": f"document number {i} about owls"}


def test_writes_to_unknown_names_create_nothing(scorer, tmp_path):
    with TestClient(create_app(ServerConfig(index_root=tmp_path), scorer)) as client:
        for i in range(30):
            response = client.post(f"/indexes/typo{i}/documents", json={"documents": [doc(1)]})
            assert response.status_code == 404 and "PUT /indexes/typo" in response.json()["message"]
        assert client.put("/indexes/typo0/documents/1", json={"text": "t"}).status_code == 404
        assert list(tmp_path.iterdir()) == []


def test_creation_is_explicit_idempotent_and_capped(scorer, tmp_path):
    config = ServerConfig(index_root=tmp_path, max_indexes=3)
    with TestClient(create_app(config, scorer)) as client:
        assert client.put("/indexes/a", json={"dense": False}).status_code == 201
        assert client.put("/indexes/a", json={"dense": False}).status_code == 200
        assert client.post("/indexes/b/documents?create=true", json={"documents": [doc(1)], "dense": False}
                           ).status_code == 200
        assert client.put("/indexes/c", json={"dense": False}).status_code == 201
        refused = client.put("/indexes/d", json={"dense": False})
        assert refused.status_code == 409 and "max_indexes" in refused.json()["message"]
        assert client.get("/indexes").json() == {"indexes": ["a", "b", "c"]}


def test_open_indexes_are_capped_and_their_files_released(scorer, tmp_path):
    config = ServerConfig(index_root=tmp_path, max_open_indexes=2)
    with TestClient(create_app(config, scorer)) as client:
        client.get("/health")
        baseline = open_fds()
        for i in range(12):
            response = client.post(f"/indexes/n{i}/documents?create=true",
                                   json={"documents": [doc(i)], "dense": False})
            assert response.status_code == 200
            hits = client.post("/search", json={"index": f"n{i}", "query": "owls", "rerank_k": 0}).json()
            assert [h["doc_id"] for h in hits["results"]] == [str(i)]
            assert client.app.state.indexes.open_count() <= 2
        assert open_fds() - baseline < 40, "closed indexes kept their files open"
        for i in range(12):  # evicted indexes reopen on demand with their data
            hits = client.post("/search", json={"index": f"n{i}", "query": "owls", "rerank_k": 0}).json()
            assert [h["doc_id"] for h in hits["results"]] == [str(i)]


def test_read_only_handle_is_upgraded_when_the_cli_writer_leaves(scorer, tmp_path, tiny_index_config):
    Index.create(tmp_path / "shared", tiny_index_config).close()
    cli_writer = Index.open(tmp_path / "shared", writable=True)  # a `crossrank index` run holding the lock
    with TestClient(create_app(ServerConfig(index_root=tmp_path), scorer)) as client:
        assert client.post("/search", json={"index": "shared", "query": "owls", "rerank_k": 0}).status_code == 200
        busy = client.post("/indexes/shared/documents", json={"documents": [doc(1)]})
        assert busy.status_code == 409 and busy.headers["retry-after"] == "1"
        cli_writer.close()
        assert client.post("/indexes/shared/documents", json={"documents": [doc(1)]}).status_code == 200
        hits = client.post("/search", json={"index": "shared", "query": "owls", "rerank_k": 0}).json()["results"]
        assert [h["doc_id"] for h in hits] == ["1"]


def test_ids_from_the_cli_with_slashes_can_be_updated_and_deleted(scorer, tmp_path, tiny_index_config):
    source = tmp_path / "docs"
    (source / "guide").mkdir(parents=True)
    (source / "guide" / "owls.txt").write_text("Owls hunt at night.")
    (source / "guide" / "hawks.txt").write_text("Hawks hunt by day.")
    root = tmp_path / "indexes"
    with Index.create(root / "site", tiny_index_config) as index:
        index.ingest([source])
        assert {p.doc_id for p in index.passages("guide/owls.txt")} == {"guide/owls.txt"}
    with TestClient(create_app(ServerConfig(index_root=root), scorer)) as client:
        updated = client.put("/indexes/site/documents/guide/owls.txt", json={"text": "Owls are silent fliers."})
        assert updated.status_code == 200, updated.text
        assert client.delete("/indexes/site/documents/guide%2Fhawks.txt").status_code == 200
        assert client.delete("/indexes/site/documents/guide/hawks.txt").status_code == 404
        odd = client.put("/indexes/site/documents/a%20b%23c%3Fd", json={"text": "odd id"})
        assert odd.status_code == 200
        hits = client.post("/search", json={"index": "site", "query": "owls odd", "rerank_k": 0}).json()["results"]
        assert {h["doc_id"] for h in hits} == {"guide/owls.txt", "a b#c?d"}
        assert client.delete("/indexes/site/documents/a%20b%23c%3Fd").status_code == 200
    with Index.open(root / "site") as index:
        assert "Owls are silent fliers." in index.passages("guide/owls.txt")[0].text


def test_no_index_root_paths_in_listing(scorer, tmp_path: Path):
    (tmp_path / ".site.creating-x1").mkdir()  # a creation in progress (or killed) is never listed
    (tmp_path / ".site.creating-x1" / "passages.sqlite").write_bytes(b"")
    with TestClient(create_app(ServerConfig(index_root=tmp_path), scorer)) as client:
        assert client.get("/indexes").json() == {"indexes": []}
