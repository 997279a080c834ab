"""Item 10: one error shape everywhere (`{"message"}`, never FastAPI's `detail`), every status the server answers
declared in the OpenAPI document with the bearer security scheme, exact types, and right `Allow` headers."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer

pytestmark = pytest.mark.reliability  # tests/reliability: each reproduces an operator-found defect


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    scorer = EncoderScorer(CrossEncoder.from_pretrained(tiny_model_dir))
    config = ServerConfig(api_keys=frozenset({"k"}), index_root=tmp_path_factory.mktemp("contract"))
    with TestClient(create_app(config, scorer), headers={"Authorization": "Bearer k"}) as c:
        yield c


def test_unparseable_body_is_400_with_message(client):
    response = client.post("/v1/rerank", content=b'{"query": "q", "documents": [', headers={"content-type":
                                                                                              "application/json"})
    assert response.status_code == 400 and set(response.json()) == {"message"}
    assert "not valid JSON" in response.json()["message"]


@pytest.mark.parametrize("method, path, status", [
    ("get", "/nowhere", 404),
    ("get", "/v1/rerank", 405),
    ("delete", "/indexes/x/documents", 405),
    ("post", "/indexes/x/documents/a/b", 405),
])
def test_routing_errors_use_the_same_shape(client, method, path, status):
    response = client.request(method, path)
    assert response.status_code == status and set(response.json()) == {"message"}


def test_allow_names_every_method_of_the_path(client):
    response = client.request("PATCH", "/indexes/x/documents/some/id")
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, PUT"
    assert client.request("PATCH", "/v1/rerank").headers["allow"] == "POST"


@pytest.mark.parametrize("payload, fragment", [
    ({"query": "q", "documents": ["a"], "top_n": True}, "top_n: expected a JSON number"),
    ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n: expected a JSON number"),
    ({"query": "q", "documents": ["a"], "return_documents": 1}, "return_documents"),
    ({"query": "q", "documents": []}, "at least 1 item"),
])
def test_types_are_exact_and_empty_lists_refused(client, payload, fragment):
    response = client.post("/v2/rerank", json=payload)
    assert response.status_code == 422 and fragment in response.json()["message"]
    assert client.post("/v2/rerank", json={"query": "q", "documents": ["a", "b"], "top_n": 1.0}).status_code == 200


def test_openapi_declares_every_status_and_the_security_scheme(client):
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key from CROSSRANK_API_KEYS or --api-keys-file."}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            declared = set(operation["responses"])
            if path.startswith(("/v1", "/v2", "/search", "/indexes")):
                assert {"400", "401", "422", "500", "503"} <= declared, (method, path, declared)
                assert operation["security"] == [{"HTTPBearer": []}], (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)


def test_unauthenticated_requests_are_401_with_the_challenge(client):
    response = client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}, headers={"Authorization": ""})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert set(response.json()) == {"message"}
