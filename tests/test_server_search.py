"""/search and document management on named indexes: the pipeline and store behind HTTP, with index names
that cannot escape the index root."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.pipeline import Cut, Pipeline, Rerank, Retrieve
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer
from crossrank.store import Index

DOCS = [
    {"id": "paris", "text": "Paris is the capital and largest city of France.", "metadata": {"lang": "en"}},
    {"id": "berlin", "text": "Berlin is the capital of Germany.", "metadata": {"lang": "en"}},
    {"id": "madrid", "text": "Madrid est la capitale de l'Espagne.", "metadata": {"lang": "fr"}},
    {"id": "bread", "text": "Bread is baked from flour, water and yeast.", "metadata": {"lang": "en"}},
]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture
def client(encoder, tmp_path):
    config = ServerConfig(index_root=tmp_path / "indexes", max_documents=50)
    with TestClient(create_app(config, EncoderScorer(encoder))) as c:
        response = c.post("/indexes/cities/documents?create=true", json={"documents": DOCS, "dense": False})
        assert response.status_code == 200, response.text
        yield c


def test_add_then_search_matches_the_pipeline(client, encoder, tmp_path):
    assert client.get("/indexes").json() == {"indexes": ["cities"]}
    body = client.post("/search", json={"index": "cities", "query": "capital city", "k": 2, "rerank_k": 3,
                                        "explain": True}).json()
    assert len(body["results"]) == 2 and [t["stage"] for t in body["trace"]] == ["retrieve", "rerank", "cut"]
    assert "rerank" in body["results"][0]["scores"] and "bm25" in body["results"][0]["ranks"]
    client.app.state.indexes.close()  # release the writer lock so the direct check below can read
    with Index.open(tmp_path / "indexes" / "cities") as index:
        expected = Pipeline([Retrieve(index, ["bm25"], k=100), Rerank(encoder, k=3), Cut(2)]).search("capital city")
    assert [r["id"] for r in body["results"]] == [c.id for c in expected.candidates]


def test_filters_update_and_delete(client):
    french = client.post("/search", json={"index": "cities", "query": "capitale", "filters": {"lang": "fr"}}).json()
    assert [r["doc_id"] for r in french["results"]] == ["madrid"] and "trace" not in french
    updated = client.put("/indexes/cities/documents/bread", json={"text": "Sourdough bread rises slowly."})
    assert updated.status_code == 200 and updated.json()["documents"] == 4
    hits = client.post("/search", json={"index": "cities", "query": "sourdough", "rerank_k": 0}).json()["results"]
    assert hits[0]["doc_id"] == "bread" and "Sourdough" in hits[0]["text"]
    deleted = client.delete("/indexes/cities/documents/bread")
    assert deleted.status_code == 200 and deleted.json()["documents"] == 3
    missing = client.delete("/indexes/cities/documents/bread")
    assert missing.status_code == 404 and "no document 'bread'" in missing.json()["message"]


@pytest.mark.parametrize("name", ["..", "../etc", ".hidden", "a/b", "x" * 65])
def test_index_names_cannot_escape_the_root(client, name, tmp_path):
    response = client.post(f"/indexes/{name}/documents?create=true", json={"documents": DOCS[:1], "dense": False})
    assert response.status_code in (404, 422)
    assert client.put(f"/indexes/{name}", json={"dense": False}).status_code in (404, 405, 422)
    search = client.post("/search", json={"index": name, "query": "q"})
    assert search.status_code == 422
    assert not any(p.name != "cities" for p in (tmp_path / "indexes").iterdir())


@pytest.mark.parametrize("payload, status, fragment", [
    ({"index": "nowhere", "query": "q"}, 404, "no index named 'nowhere'"),
    ({"index": "cities", "query": "q", "retrievers": ["dense"]}, 409, "not available"),
    ({"index": "cities", "query": "q", "filters": {"colour": "red"}}, 409, "unknown filter field 'colour'"),
    ({"index": "cities", "query": "q", "filters": {"lang": {}}}, 422, "empty range"),
    ({"index": "cities", "query": "q", "filters": {"lang": {"near": "en"}}}, 422, "near"),
    ({"index": "cities", "query": "q", "rerank_k": 60}, 413, "max_documents"),
    ({"index": "cities", "query": " "}, 422, "query is empty"),
])
def test_search_errors_are_clear(client, payload, status, fragment):
    response = client.post("/search", json=payload)
    assert response.status_code == status and fragment in response.json()["message"]


@pytest.mark.parametrize("weight", [1.0, -0.1, "heavy"])
def test_search_first_stage_weight_is_validated(client, weight):
    response = client.post("/search", json={"index": "cities", "query": "capital", "first_stage_weight": weight})
    assert response.status_code == 422 and "first_stage_weight" in response.json()["message"]


def test_search_uses_the_models_first_stage_weight_unless_told(tiny_model_with_fusion_dir, tmp_path):
    encoder = CrossEncoder.from_pretrained(tiny_model_with_fusion_dir, backend="torch")
    config = ServerConfig(index_root=tmp_path / "indexes", max_documents=50)
    with TestClient(create_app(config, EncoderScorer(encoder))) as c:
        assert c.put("/indexes/cities", json={"dense": False}).status_code == 201
        assert c.post("/indexes/cities/documents", json={"documents": DOCS}).status_code == 200

        def search(**extra):
            body = {"index": "cities", "query": "capital city", "rerank_k": 3, "explain": True, **extra}
            response = c.post("/search", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        shipped, chosen, alone = search(), search(first_stage_weight=0.2), search(first_stage_weight=0)
    assert "first_stage_weight=0.75" in shipped["pipeline"] and "first_stage_weight=0.2" in chosen["pipeline"]
    assert "first_stage_weight" not in alone["pipeline"]
    for body in (shipped, chosen):
        top = body["results"][0]
        assert top["score"] == top["scores"]["rerank_interpolated"] and top["ranks"]["rerank_interpolated"] == 1
    assert all("rerank_interpolated" not in r["scores"] for r in alone["results"])


def test_document_errors_are_clear(client):
    no_id = client.post("/indexes/cities/documents", json={"documents": [{"text": "x"}]})
    assert no_id.status_code == 422 and "id" in no_id.json()["message"]
    too_many = client.post("/indexes/cities/documents",
                           json={"documents": [{"id": str(i), "text": "t"} for i in range(51)]})
    assert too_many.status_code == 413
    assert client.put("/indexes/absent/documents/x", json={"text": "t"}).status_code == 404


def test_search_without_index_root_is_404(encoder):
    with TestClient(create_app(ServerConfig(), EncoderScorer(encoder))) as c:
        response = c.post("/search", json={"index": "cities", "query": "q"})
        assert response.status_code == 404 and "--index-root" in response.json()["message"]


def test_an_index_without_the_served_models_vectors_is_named_once_in_the_log(closed_gated_dir, tmp_path, caplog):
    import json
    import logging
    import shutil

    from crossrank.store import Index, IndexConfig

    other = tmp_path / "other-model"  # a model trained since the index was built: another fingerprint
    shutil.copytree(closed_gated_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "note": "fine-tuned since"}))
    with Index.create(tmp_path / "indexes" / "cities", IndexConfig(dense=False)) as index:
        index.add(DOCS)
        index.commit()
        index.store_segments(CrossEncoder.from_pretrained(other))
    served = CrossEncoder.from_pretrained(closed_gated_dir)
    search = ("/search", {"index": "cities", "query": "capital city", "rerank_k": 3})
    context = ("/v1/context", {"index": "cities", "query": "capital city", "budget_tokens": 100})

    def warnings_after(*requests: tuple[str, dict]) -> list[logging.LogRecord]:
        caplog.clear()
        with TestClient(create_app(ServerConfig(index_root=tmp_path / "indexes"), EncoderScorer(served))) as client, \
                caplog.at_level(logging.WARNING, logger="crossrank.server"):
            for route, body in requests:
                response = client.post(route, json=body)
                assert response.status_code == 200, response.text
        return [r for r in caplog.records if "passage vectors for another reranker" in r.getMessage()]

    warned = warnings_after(search, search, context)
    assert len(warned) == 1 and warned[0].index == "cities"
    assert len(warnings_after(context)) == 1  # context selection reads the same vectors
    with Index.open(tmp_path / "indexes" / "cities", writable=True) as index:
        index.store_segments(served)
    assert warnings_after(search, context) == []
