"""The browser-test harness itself: system Chromium opens the live server's JSON endpoints, runs page scripts
against the API, keeps to loopback, and the skip-or-fail rule when no browser is installed."""

from __future__ import annotations

import json
import stat

import pytest

from .conftest import (
    INDEX_NAME,
    MARKUP_TEXT,
    SCREENSHOTS,
    browser_required,
    chromium_path,
    missing_browser,
    screenshot,
    skip_or_fail,
)


def shown_json(page) -> object:
    """Chromium shows a JSON response as text in a <pre>; parse what the user sees."""
    return json.loads(page.locator("pre").first.inner_text())


def test_health_is_shown_as_json(page, page_log, workbench_server):
    response = page.goto(f"{workbench_server.url}/health")
    assert response is not None and response.ok
    assert shown_json(page) == {"status": "ok"}
    path = screenshot(page, "smoke-health")
    assert path.parent == SCREENSHOTS and path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page_log.errors == [] and page_log.blocked == []


def test_openapi_json_lists_the_api(page, workbench_server):
    response = page.goto(f"{workbench_server.url}/openapi.json")
    assert response is not None and response.ok and "application/json" in response.headers["content-type"]
    spec = shown_json(page)
    assert spec["openapi"].startswith("3.") and {"/health", "/search", "/indexes"} <= set(spec["paths"])
    screenshot(page, "smoke-openapi", full_page=False)


SEARCH = """async ([key, index]) => {
    const headers = {"Content-Type": "application/json"};
    if (key) headers["Authorization"] = `Bearer ${key}`;
    const response = await fetch("/search", {method: "POST", headers,
        body: JSON.stringify({index, query: "markup script bold", k: 20, rerank_k: 0, retrievers: ["bm25"]})});
    return {status: response.status, body: await response.json()};
}"""


def test_page_script_searches_the_demo_index(page, workbench_server):
    page.goto(f"{workbench_server.url}/health")  # any same-origin page: fetch("/search") then needs no CORS
    result = page.evaluate(SEARCH, [None, INDEX_NAME])
    assert result["status"] == 200, result
    texts = {hit["doc_id"]: hit["text"] for hit in result["body"]["results"]}
    assert texts["markup"] == MARKUP_TEXT  # the markup document is stored and served verbatim


def test_keyed_server_needs_the_key_from_the_page(page, workbench_server_with_key):
    server = workbench_server_with_key
    page.goto(f"{server.url}/health")
    assert page.evaluate(SEARCH, [None, server.index_name])["status"] == 401
    assert page.evaluate(SEARCH, ["wrong-key", server.index_name])["status"] == 401
    assert page.evaluate(SEARCH, [server.api_key, server.index_name])["status"] == 200


def test_requests_leave_only_for_loopback(page, page_log, workbench_server):
    page.goto(f"{workbench_server.url}/health")
    page.set_content('<img src="https://cdn.example.org/swagger.js"><p>offline</p>')
    assert page.locator("p").inner_text() == "offline"
    assert page_log.blocked == ["https://cdn.example.org/swagger.js"]


# --- skip or fail without a browser (no browser needed) ---------------------------------------------------------

@pytest.mark.parametrize("env, required", [
    ({}, False),
    ({"CI": "true"}, True),
    ({"CI": "1"}, True),
    ({"CI": "false"}, False),
    ({"CI": ""}, False),
    ({"CROSSRANK_REQUIRE_BROWSER": "1"}, True),
    ({"CROSSRANK_REQUIRE_BROWSER": "0"}, False),
    ({"CI": "0", "CROSSRANK_REQUIRE_BROWSER": "yes"}, True),
])
def test_browser_is_required_under_ci_or_when_asked(env, required):
    assert browser_required(env) is required


def test_a_missing_chromium_is_named(tmp_path):
    missing = tmp_path / "no-chromium"
    env = {"CROSSRANK_CHROMIUM": str(missing)}
    assert chromium_path(env) == missing and chromium_path({}).as_posix() == "/usr/bin/chromium"
    assert str(missing) in missing_browser(env)
    assert "playwright" in missing_browser({}, playwright_available=False)
    not_executable = tmp_path / "chromium"
    not_executable.write_text("#!/bin/sh\n")
    assert "not executable" in missing_browser({"CROSSRANK_CHROMIUM": str(not_executable)})
    not_executable.chmod(not_executable.stat().st_mode | stat.S_IXUSR)
    assert missing_browser({"CROSSRANK_CHROMIUM": str(not_executable)}) is None


def test_missing_browser_skips_locally_and_fails_under_ci(tmp_path):
    reason = missing_browser({"CROSSRANK_CHROMIUM": str(tmp_path / "none")})
    with pytest.raises(pytest.skip.Exception, match="browser tests skipped: no Chromium at"):
        skip_or_fail(reason, {})
    for env in ({"CI": "true"}, {"CROSSRANK_REQUIRE_BROWSER": "1"}):
        with pytest.raises(pytest.fail.Exception, match="required here .* but no Chromium at"):
            skip_or_fail(reason, env)
