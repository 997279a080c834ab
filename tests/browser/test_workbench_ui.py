"""The workbench as a user sees it, in headless Chromium against a live server: search with stage columns and
latency bars that match the JSON API, compare two pipelines, judge with the keyboard, reload, evaluate from the
judgments (in the page and with `crossrank eval`), browse the report, and every bad input shown as a message with
nothing injected into the page. A screenshot of each view lands in test-artifacts/screenshots/."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect
from typer.testing import CliRunner

from crossrank.cli import app as cli

from .conftest import INDEX_NAME, MARKUP_TEXT, UI_KEY, screenshot

SIGNALS = ["bm25", "dense", "fusion", "rerank", "rerank_interpolated", "ltr"]


def search_response(page, run):
    """Perform `run` (a UI action) and return the JSON of the /search answer the page received."""
    with page.expect_response(lambda response: response.url.endswith("/search")) as answer:
        run()
    return answer.value.json()


def open_view(page, server, view="", **query):
    page.goto(f"{server.url}/ui{'/' + view if view else ''}" + (f"?{httpx.QueryParams(query)}" if query else ""))
    expect(page.locator("#index option")).not_to_have_count(0)


def no_dialogs(page):
    """Fail the test if anything on the page ever calls alert() (what injected script would do)."""
    page.on("dialog", lambda dialog: pytest.fail(f"a dialog opened: {dialog.message}"))


def test_search_shows_every_stage_and_the_trace_the_api_returns(page, page_log, workbench_server):
    no_dialogs(page)
    open_view(page, workbench_server)
    page.fill("#query", "capital city of France")
    body = search_response(page, lambda: page.press("#query", "Enter"))
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(len(body["results"]))
    assert [rows.nth(i).get_attribute("data-passage-id") for i in range(rows.count())] == \
        [hit["id"] for hit in body["results"]]
    shown = [s for s in SIGNALS if any(s in hit["scores"] for hit in body["results"])]
    assert {"bm25", "dense", "fusion", "rerank"} <= set(shown)
    assert page.locator("#results th.signal").evaluate_all("cells => cells.map(c => c.dataset.signal)") == shown
    for i, hit in enumerate(body["results"]):
        for signal in shown:
            cell = rows.nth(i).locator(f"td[data-signal='{signal}']")
            if signal in hit["scores"]:
                assert float(cell.get_attribute("data-score")) == pytest.approx(hit["scores"][signal])
                assert cell.get_attribute("data-rank") == str(hit["ranks"].get(signal, ""))
            else:
                expect(cell).to_have_text("not seen")
        probability = float(rows.nth(i).locator("td.probability").get_attribute("data-probability"))
        assert probability == pytest.approx(hit["scores"]["rerank_probability"])
        moved = rows.nth(i).locator(".moved")
        delta = hit["first_stage_rank"] - (i + 1)
        expect(moved).to_have_text(f"▲ {delta}" if delta > 0 else f"▼ {-delta}" if delta < 0 else "=")
    stages = page.locator("#trace .trace-stage")
    expect(stages).to_have_count(len(body["trace"]))
    for i, stage in enumerate(body["trace"]):
        assert stages.nth(i).get_attribute("data-stage") == stage["stage"]
        assert float(stages.nth(i).get_attribute("data-ms")) == pytest.approx(stage["ms"])
        width = stages.nth(i).locator(".fill").evaluate("e => e.style.width")
        assert float(width.rstrip("%")) == pytest.approx(100 * stage["ms"] / max(s["ms"] for s in body["trace"]), abs=1e-3)
    expect(page.locator("#results mark").first).to_be_visible()  # query terms highlighted in the scored passage
    assert body["query_terms"] == ["capital", "city", "france"]  # BM25's words: "of" is a stop word
    marked = {text.lower() for text in page.locator("#results mark").all_inner_texts()}
    assert marked and marked <= {"capital", "city", "france"}
    screenshot(page, "workbench-search")
    assert page_log.errors == [] and page_log.blocked == []


def test_compare_joins_the_same_passages_and_counts_the_overlap(page, workbench_server):
    no_dialogs(page)
    open_view(page, workbench_server, "compare")
    page.fill("#query", "bread with yeast")
    page.fill("#k", "5")
    page.click("#run")
    left, right = page.locator("#list-a li[data-id]"), page.locator("#list-b li[data-id]")
    expect(left).to_have_count(5)
    expect(right).to_have_count(5)
    a = left.evaluate_all("items => items.map(i => i.dataset.id)")
    b = right.evaluate_all("items => items.map(i => i.dataset.id)")
    shared = len(set(a) & set(b))
    assert page.locator("#overlap").get_attribute("data-overlap") == str(shared)
    expect(page.locator("#overlap")).to_contain_text(f"overlap@5: {shared} of 5")
    expect(page.locator("#links line")).to_have_count(shared)
    assert "a.rerank_k=0" in page.url and "b.rerank_k=50" in page.url  # the view can be linked and reloaded
    screenshot(page, "workbench-compare")


def test_judgments_persist_feed_an_evaluation_and_crossrank_eval(page, workbench_server):
    no_dialogs(page)
    open_view(page, workbench_server, q="capital of Germany")
    page.fill("#judge", "alice")
    page.dispatch_event("#judge", "change")
    rows = page.locator("#results tbody tr")
    expect(rows.first).to_be_visible()
    page.press("#judge", "Escape")  # Esc leaves a text box: the grading keys reach the results
    for row, keys, grade in ((0, ["2"], "2"), (1, ["j", "p"], "1"), (2, ["ArrowDown", "0"], "0")):
        for key in keys:
            page.keyboard.press(key)
        expect(rows.nth(row)).to_have_attribute("data-grade", grade)
        expect(page.locator("#message")).to_contain_text("Saved")
    page.reload()
    expect(rows.nth(2)).to_have_attribute("data-grade", "0")
    assert [rows.nth(i).locator("button[aria-pressed='true']").inner_text() for i in range(3)] == \
        ["Relevant", "Partly", "Not"]
    judged_docs = [rows.nth(i).get_attribute("data-doc-id") for i in range(3)]
    screenshot(page, "workbench-judged")

    page.goto(f"{workbench_server.url}/ui/judgments")
    table = page.locator("#judgments tbody tr")
    expect(table).to_have_count(3)
    expect(page.locator("#judgment-summary")).to_contain_text("3 judgments on 1 queries")
    with page.expect_download() as download:
        page.click("#export")
    lines = download.value.path().read_text(encoding="utf-8").splitlines()
    assert sorted(line.split()[2] for line in lines) == sorted(judged_docs)
    page.click("#evaluate")
    expect(page.locator("#evaluation-table tbody tr")).to_have_count(2)
    expect(page.locator("#evaluation-table caption")).to_contain_text("1 judged queries")
    expect(page.locator("#per-query rect")).to_have_count(1)
    screenshot(page, "workbench-evaluation")

    out = workbench_server.reports_root / "demo-judgments"
    result = CliRunner().invoke(cli, ["eval", str(workbench_server.index_root / INDEX_NAME), "--qrels", "judgments",
                                      "--pipelines", "bm25,hybrid", "--no-curve", "--permutations", "200",
                                      "--timing-queries", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "results.json").is_file()


def test_reports_list_open_and_click_through_to_a_query(page, workbench_server):
    import json

    out = workbench_server.reports_root / "demo-clicks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({
        "dataset": "demo", "split": "judgments", "queries": 2, "baseline": "bm25",
        "config": {"measures": ["nDCG@10", "RR@10"], "depth": 20},
        "systems": [{"name": "bm25", "pipeline": "Retrieve", "means": {"nDCG@10": 0.5, "RR@10": 0.5},
                     "ci95": {"nDCG@10": [0.1, 0.9]}, "ms_per_query": 1.0,
                     "per_query": {"nDCG@10": {"q1": 0.2, "q2": 0.8}}},
                    {"name": "hybrid>>ce", "pipeline": "Rerank", "means": {"nDCG@10": 0.6, "RR@10": 0.7},
                     "ms_per_query": 5.0, "per_query": {"nDCG@10": {"q1": 0.9, "q2": 0.3}}}],
        "tests": {"nDCG@10": {"hybrid>>ce": {"delta": 0.1, "t_p_holm": 0.5, "randomisation_p_holm": 0.5,
                                             "wins": 1, "ties": 0, "losses": 1}}},
        "depth_curve": {"system": "hybrid>>ce", "points": [
            {"depth": 10, "quality": 0.5, "recall_ceiling": 0.7, "ms_per_query": None},
            {"depth": 20, "quality": 0.6, "recall_ceiling": 0.9, "ms_per_query": None}]},
        "query_text": {"q1": "sourdough <b>starter</b>", "q2": "capital of Portugal"}}))
    page.goto(f"{workbench_server.url}/ui/reports")
    page.locator("#report-list a", has_text="demo-clicks").click()
    expect(page.locator("#report-table tbody tr")).to_have_count(2)
    expect(page.locator("#report-table tbody tr").nth(1)).to_contain_text("1/0/1")
    expect(page.locator("#depth-curve circle")).to_have_count(2)
    bars = page.locator("#per-query rect")
    expect(bars).to_have_count(2)
    expect(page.locator("#per-query .summary")).to_contain_text("1 wins · 0 ties · 1 losses")
    screenshot(page, "workbench-reports")
    page.locator("#per-query rect[data-qid='q1']").click()
    page.wait_for_url("**/ui/compare?**")
    expect(page.locator("#query")).to_have_value("sourdough <b>starter</b>")
    expect(page.locator("#list-b li[data-id]").first).to_be_visible()
    assert page.locator("#a-rerank-k").input_value() == "0" and page.locator("#b-rerank-k").input_value() == "20"
    assert page.locator("main b").count() == 0  # the query's markup stayed text


def test_bad_input_gets_a_clear_message_and_nothing_is_injected(page, workbench_server):
    no_dialogs(page)
    open_view(page, workbench_server)
    page.click("#run")
    expect(page.locator("#message")).to_contain_text("type a query first")
    page.fill("#query", "x" * 10_000)
    page.click("#run")
    expect(page.locator("#message")).to_contain_text("max_query_chars")
    expect(page.locator("#message")).to_contain_text("HTTP 413")
    page.fill("#query", "markup <img src=x onerror=alert(1)> script bold")
    page.click("#run")
    markup_row = page.locator("#results tr[data-doc-id='markup']")
    expect(markup_row).to_be_visible()
    assert markup_row.locator(".text").inner_text() == MARKUP_TEXT
    expect(markup_row.locator(".title")).to_have_text("Markup <i>title</i>")
    assert page.locator("main script, main b, main i, main img").count() == 0
    expect(page.locator("#summary q")).to_have_text("markup <img src=x onerror=alert(1)> script bold")
    screenshot(page, "workbench-markup-as-text")
    page.goto(f"{workbench_server.url}/ui?index=nope&q=paris")
    expect(page.locator("#message")).to_contain_text('There is no index named "nope"')
    page.goto(f"{workbench_server.url}/ui/nope")
    assert "no workbench view" in page.content()


def test_a_keyed_server_asks_for_the_key_first(page, workbench_server_with_key):
    page.goto(f"{workbench_server_with_key.url}/ui")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#api-key", "wrong")
    page.click("#key-form button")
    expect(page.locator("#message")).to_contain_text("refused the API key")
    page.fill("#api-key", UI_KEY)
    page.click("#key-form button")
    expect(page.locator("#index option")).to_have_count(1)
    page.fill("#query", "rust ownership")
    page.press("#query", "Enter")
    expect(page.locator("#results tbody tr").first).to_be_visible()
