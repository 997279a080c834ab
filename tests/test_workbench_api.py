"""The workbench's server side without a browser: the /ui page shells and assets, the judgments API (record, read,
export, evaluate), the reports API, and the /search options the workbench needs (LTR, the query limit).
The browser itself is driven in tests/browser/."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from crossrank.ltr.featurelog import FeatureTable
from crossrank.ltr.features import FeatureSet, StageScore
from crossrank.ltr.lambdamart import train_lambdamart
from crossrank.model.cross_encoder import CrossEncoder
from crossrank.server.app import create_app
from crossrank.server.config import ServerConfig
from crossrank.server.scoring import EncoderScorer
from crossrank.server.workbench import CONTENT_SECURITY_POLICY
from crossrank.types import Candidate

DOCS = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
    {"id": "lyon", "title": "Lyon", "text": "Lyon is a large city in France, known for its food."},
    {"id": "bread", "title": "Bread", "text": "Bread is baked from flour, water and yeast."},
]
KEY = "workbench-key"


@pytest.fixture(scope="module")
def encoder(tiny_model_dir) -> CrossEncoder:
    return CrossEncoder.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def ltr_model_dir(tmp_path_factory):
    """A LambdaMART over the BM25 and cross-encoder signals, trained on synthetic lists (mechanics only)."""
    rng = np.random.default_rng(0)
    features = FeatureSet("workbench-test", 1, (StageScore("bm25"), StageScore("rerank")))
    lists, qrels = [], {}
    for q in range(30):
        grades = rng.integers(0, 3, size=8)
        candidates = [Candidate(f"d{i}", f"d{i}", "t", scores={"bm25": float(rng.normal()),
                                                               "rerank": float(g) + rng.normal(0, .2)})
                      for i, g in enumerate(grades)]
        lists.append((f"q{q}", "query", candidates))
        qrels[f"q{q}"] = {f"d{i}": int(g) for i, g in enumerate(grades)}
    model = train_lambdamart(FeatureTable.from_candidates(features, lists, qrels), num_rounds=20, min_data_in_leaf=3)
    path = tmp_path_factory.mktemp("ltr") / "model"
    model.save(path)
    return path


def make_client(encoder, tmp_path, **config):
    app = create_app(ServerConfig(index_root=tmp_path / "indexes", **config), EncoderScorer(encoder))
    return TestClient(app)


@pytest.fixture
def client(encoder, tmp_path, ltr_model_dir):
    with make_client(encoder, tmp_path, ltr_model=ltr_model_dir, reports_root=tmp_path / "reports") as c:
        response = c.post("/indexes/cities/documents?create=true", json={"documents": DOCS, "dense": False})
        assert response.status_code == 200, response.text
        yield c


@pytest.mark.parametrize("path", ["/ui", "/ui/compare", "/ui/judgments", "/ui/reports"])
def test_pages_are_shells_with_a_strict_policy(client, path):
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert '<script src="/ui/static/workbench.js" defer></script>' in page.text
    assert "<script>" not in page.text  # no inline script: the policy would block it anyway
    assert 'data-ltr="true"' in page.text and 'data-auth="false"' in page.text


def test_assets_ship_in_the_package_and_unknown_views_are_404(client):
    script, style = client.get("/ui/static/workbench.js"), client.get("/ui/static/workbench.css")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert ".innerHTML" not in script.text and "insertAdjacentHTML" not in script.text  # text only, never markup
    assert style.status_code == 200
    assert client.get("/ui/nope").status_code == 404
    assert client.get("/ui/", follow_redirects=False).headers["location"] == "/ui"
    assert not any(path.startswith("/ui") for path in client.get("/openapi.json").json()["paths"])


def test_pages_need_no_key_but_the_api_does(encoder, tmp_path):
    with make_client(encoder, tmp_path, api_keys=frozenset({KEY})) as c:
        page = c.get("/ui")
        assert page.status_code == 200 and 'data-auth="true"' in page.text
        assert c.get("/indexes").status_code == 401 and c.get("/reports").status_code == 401
        assert c.get("/indexes", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_search_applies_the_ltr_model_only_when_asked(client, encoder, tmp_path):
    body = {"index": "cities", "query": "capital of France", "rerank_k": 4, "explain": True}
    plain = client.post("/search", json=body).json()
    learned = client.post("/search", json={**body, "ltr": True}).json()
    assert "ltr" not in plain["results"][0]["scores"]
    assert [t["stage"] for t in learned["trace"]] == ["retrieve", "rerank", "ltr", "cut"]
    scores = [hit["scores"]["ltr"] for hit in learned["results"]]
    assert scores == sorted(scores, reverse=True) and "LTR(workbench-test" in learned["pipeline"]
    with make_client(encoder, tmp_path) as bare:
        refused = bare.post("/search", json={**body, "ltr": True})
        assert refused.status_code == 409 and "--ltr" in refused.json()["message"]


def test_search_fuses_as_asked(encoder, tmp_path):
    with make_client(encoder, tmp_path) as c:
        c.post("/indexes/both/documents?create=true", json={"documents": DOCS})
        body = {"index": "both", "query": "capital city", "rerank_k": 0, "explain": True}
        assert "Fuse('rrf'" in c.post("/search", json=body).json()["pipeline"]
        weighted = c.post("/search", json={**body, "fusion": "weighted"}).json()
        assert "Fuse('weighted'" in weighted["pipeline"] and "fusion" in weighted["results"][0]["scores"]
        assert c.post("/search", json={**body, "fusion": "max"}).status_code == 422


def test_explain_names_the_query_words_bm25_matches_for_highlighting(client):
    body = {"index": "cities", "query": "The capital of France, the CAPITAL city", "rerank_k": 0}
    assert "query_terms" not in client.post("/search", json=body).json()
    explained = client.post("/search", json={**body, "explain": True}).json()
    assert explained["query_terms"] == ["capital", "france", "city"]  # lower-cased, stop words dropped, once each


def test_a_query_longer_than_the_limit_is_a_clear_413(client):
    response = client.post("/search", json={"index": "cities", "query": "paris " * 2000})
    assert response.status_code == 413 and "max_query_chars" in response.json()["message"]


def judge(client, grade, doc="paris", query="capital of France", who="ann", **extra):
    return client.post("/indexes/cities/judgments",
                       json={"judge": who, "query": query, "doc_id": doc, "grade": grade, **extra})


def test_judgments_are_recorded_listed_and_exported(client, tmp_path):
    first = judge(client, 1, passage_id="paris#0")
    assert first.status_code == 201, first.text
    recorded = first.json()
    assert recorded["grade"] == 1 and recorded["passage_id"] == "paris#0"
    assert datetime.fromisoformat(recorded["time"]).utcoffset() == timedelta(0)
    assert judge(client, 2).status_code == 201  # supersedes the first grade
    assert judge(client, 0, doc="bread").status_code == 201
    assert judge(client, 2, doc="lyon", who="bob").status_code == 201
    listed = client.get("/indexes/cities/judgments", params={"query": "capital of France"}).json()
    assert {(j["judge"], j["doc_id"], j["grade"]) for j in listed["judgments"]} == {
        ("ann", "paris", 2), ("ann", "bread", 0), ("bob", "lyon", 2)}
    assert listed["judges"] == ["ann", "bob"]
    mine = client.get("/indexes/cities/judgments", params={"judge": "bob"}).json()["judgments"]
    assert [j["doc_id"] for j in mine] == ["lyon"]
    assert (tmp_path / "indexes" / "cities" / "judgments" / "ann.jsonl").is_file()
    qrels = client.get("/indexes/cities/judgments/qrels")
    assert qrels.status_code == 200 and qrels.headers["content-type"].startswith("text/plain")
    lines = sorted(line.split() for line in qrels.text.splitlines())
    assert [(line[2], line[3]) for line in lines] == [("bread", "0"), ("lyon", "2"), ("paris", "2")]
    assert all(line[1] == "0" and line[0].startswith("q-") for line in lines)


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"doc_id": "atlantis"}, 404, "no document 'atlantis'"),
    ({"grade": 3}, 422, "grade"),
    ({"grade": True}, 422, "grade"),
    ({"judge": "a b"}, 422, "judge"),
    ({"query": "   "}, 422, "query"),
])
def test_bad_judgments_are_refused_and_nothing_is_written(client, tmp_path, body, status, message):
    valid = {"judge": "ann", "query": "capital", "doc_id": "paris", "grade": 2}
    response = client.post("/indexes/cities/judgments", json={**valid, **body})
    assert response.status_code == status and message in response.json()["message"]
    assert client.get("/indexes/cities/judgments").json()["judgments"] == []
    assert client.post("/indexes/nowhere/judgments", json=valid).status_code == 404


def test_evaluate_runs_pipelines_over_the_judged_queries(client):
    for query, doc in [("capital of France", "paris"), ("capital of Germany", "berlin"), ("food in France", "lyon")]:
        assert judge(client, 2, doc=doc, query=query).status_code == 201
    refused = client.post("/indexes/cities/judgments/evaluate", json={"pipelines": [{"name": "x"}], "judge": "nobody"})
    assert refused.status_code == 409 and "no judgments" in refused.json()["message"]
    response = client.post("/indexes/cities/judgments/evaluate", json={
        "pipelines": [{"name": "bm25", "retrievers": ["bm25"], "rerank_k": 0}, {"name": "bm25>>ce", "rerank_k": 4},
                      {"name": "bm25", "retrievers": ["bm25"], "rerank_k": 0}],
        "measures": ["nDCG@10", "RR@10"], "permutations": 200})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["queries"] == 3 and result["baseline"] == "bm25"
    assert [s["name"] for s in result["systems"]] == ["bm25", "bm25>>ce", "bm25 #2"]
    assert result["tests"]["bm25 #2"]["ties"] == 3  # the same pipeline twice: identical per query
    bm25 = result["systems"][0]
    assert set(bm25["per_query"]["nDCG@10"]) == set(result["query_text"])
    assert sorted(result["query_text"].values()) == ["capital of France", "capital of Germany", "food in France"]
    assert bm25["means"]["RR@10"] == pytest.approx(np.mean(list(bm25["per_query"]["RR@10"].values())))
    test = result["tests"]["bm25>>ce"]
    assert test["wins"] + test["ties"] + test["losses"] == 3
    assert "Rerank(" in result["systems"][1]["pipeline"] and "Collapse()" in result["systems"][1]["pipeline"]


def write_report(root, name, systems, nan=False):
    folder = root / name
    folder.mkdir(parents=True)
    text = json.dumps({"dataset": "demo", "split": "test", "queries": 2, "baseline": systems[0],
                       "config": {"measures": ["nDCG@10"], "depth": 100},
                       "systems": [{"name": s, "means": {"nDCG@10": 0.5}, "per_query": {"nDCG@10": {"1": .5, "2": .5}}}
                                   for s in systems],
                       "tests": {"nDCG@10": {s: {"t_p": float("nan")} for s in systems[1:]}} if nan else {},
                       "query_text": {"1": "one", "2": "two"}})
    (folder / "results.json").write_text(text)


def test_reports_are_listed_and_served_from_the_reports_folder_only(client, tmp_path):
    assert client.get("/reports").json()["reports"] == []
    root = tmp_path / "reports"
    write_report(root, "demo-test", ["bm25", "bm25>>ce"], nan=True)
    (root / "junk").mkdir()
    (root / "junk" / "results.json").write_text("not json")
    listed = client.get("/reports").json()["reports"]
    assert [(r["name"], r["systems"]) for r in listed] == [("demo-test", ["bm25", "bm25>>ce"])]
    report = client.get("/reports/demo-test")
    assert report.status_code == 200 and report.json()["tests"]["nDCG@10"]["bm25>>ce"]["t_p"] is None
    assert client.get("/reports/junk").status_code == 404
    assert client.get("/reports/..%2F..%2Fetc").status_code == 404
    (tmp_path / "results.json").write_text((root / "demo-test" / "results.json").read_text())  # outside the root
    assert client.get("/reports/%2E%2E").status_code == 404


def test_without_a_reports_folder_the_list_is_empty(encoder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./eval-results here
    with make_client(encoder, tmp_path) as c:
        assert c.get("/reports").json() == {"root": None, "reports": []}
        assert c.get("/reports/x").status_code == 404
