"""Browser tests: a real headless Chromium (Debian's `chromium` package, driven by Playwright for Python) against a
live `crossrank serve` app on a loopback port.

For the next engineer: run them with `python -m pytest -q tests/browser --all` (they are marked `slow` and
`browser`, so a plain `pytest` leaves them out; `-m browser` picks just them). They need `pip install -e '.[dev]'`
(which brings `playwright`) and Debian's Chromium at /usr/bin/chromium (`apt-get install chromium`; another binary
via CROSSRANK_CHROMIUM=/path). Never run `playwright install`: no browser build is downloaded, Playwright drives the
system Chromium. Without Chromium or Playwright the tests skip locally but FAIL under CI (env CI set) or
CROSSRANK_REQUIRE_BROWSER=1, so CI can never skip them silently. Any test that uses the `browser` or `page` fixture
is marked `browser` and `slow` automatically. Screenshots go to test-artifacts/screenshots/ at the repo root
(git-ignored): `screenshot(page, "name")` saves one on purpose, and a failing test that used `page` leaves
`<test>-FAILED.png` there plus `<test>-FAILED.txt` (URL, console messages, page errors, blocked requests).
The page's context lets only loopback requests out: a UI that loads anything from a CDN fails fast (and the
blocked URLs are listed in `page_log.blocked`) instead of hanging on the sandbox's missing internet.

Fixtures: `browser` (session; a playwright Browser), `page` (function; a fresh context's Page, 10 s timeouts),
`page_log` (function; what that page logged), `workbench_server` / `workbench_server_with_key` (module; a
`Workbench` with url, index_root, index_name "demo", reports_root (the server's --reports folder), api_key,
documents). Use `playwright.sync_api.expect` for
auto-waiting assertions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import REPO, LiveServer

DEFAULT_CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
DEFAULT_TIMEOUT_MS = 10_000
# Root (as in CI) cannot use Chromium's sandbox; /dev/shm is small in containers.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


# --- skip or fail when there is no browser ----------------------------------------------------------------------

def chromium_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CROSSRANK_CHROMIUM") or DEFAULT_CHROMIUM)


def browser_required(env: Mapping[str, str] | None = None) -> bool:
    """CI (any non-false CI variable, as CI services set it) or CROSSRANK_REQUIRE_BROWSER=1 must run browser tests."""
    env = os.environ if env is None else env

    def truthy(name: str) -> bool:
        return env.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")

    return truthy("CI") or truthy("CROSSRANK_REQUIRE_BROWSER")


def missing_browser(env: Mapping[str, str] | None = None, *, playwright_available: bool = True) -> str | None:
    """Why the browser tests cannot run here (None when they can): no Playwright, or no executable Chromium."""
    if not playwright_available:
        return "the Python package `playwright` is not installed (pip install -e '.[dev]')"
    path = chromium_path(env)
    if not path.is_file():
        return f"no Chromium at {path} (apt-get install chromium, or set CROSSRANK_CHROMIUM)"
    if not os.access(path, os.X_OK):
        return f"Chromium at {path} is not executable"
    return None


def skip_or_fail(reason: str, env: Mapping[str, str] | None = None) -> None:
    """Skip locally; fail where the browser is required, so CI never turns browser tests into silent skips."""
    if browser_required(env):
        pytest.fail(f"browser tests are required here (CI or CROSSRANK_REQUIRE_BROWSER=1) but {reason}",
                    pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def _playwright_available() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


# --- markers ----------------------------------------------------------------------------------------------------

@pytest.hookimpl(tryfirst=True)  # before the top-level conftest deselects `slow` from a plain run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so `page`'s teardown knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


# --- the browser and its pages ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium under Playwright, one per session."""
    reason = missing_browser(playwright_available=_playwright_available())
    if reason:
        skip_or_fail(reason)
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(chromium_path()), headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class PageLog:
    """What a page did that a test may want to assert on (and that a failure report lists)."""

    console: list[str] = field(default_factory=list)  # "type: text" for each console message
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    blocked: list[str] = field(default_factory=list)  # non-loopback URLs the page tried to load

    def render(self) -> str:
        return "\n".join([f"console ({len(self.console)}):", *self.console, f"page errors ({len(self.errors)}):",
                          *self.errors, f"blocked requests ({len(self.blocked)}):", *self.blocked])


@pytest.fixture
def page_log() -> PageLog:
    return PageLog()


def _local_only(log: PageLog):
    def handle(route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "about") or parts.hostname in LOOPBACK:
            route.continue_()
        else:
            log.blocked.append(url)
            route.abort("blockedbyclient")

    return handle


@pytest.fixture
def page(browser, page_log: PageLog, request: pytest.FixtureRequest):
    """A fresh context (no cookies or storage from other tests) and its page; on failure, a screenshot and a log."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.route("**/*", _local_only(page_log))
    new_page = context.new_page()
    new_page.on("console", lambda message: page_log.console.append(f"{message.type}: {message.text}"))
    new_page.on("pageerror", lambda error: page_log.errors.append(str(error)))
    try:
        yield new_page
    finally:
        failed = any(getattr(getattr(request.node, f"report_{when}", None), "failed", False)
                     for when in ("setup", "call"))
        if failed:
            name = f"{safe_name(request.node.nodeid)}-FAILED"
            try:
                screenshot(new_page, name)
            except Exception as error:  # noqa: BLE001 - a report of a failure must not fail itself
                page_log.errors.append(f"(screenshot failed: {error})")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / f"{name}.txt").write_text(f"url: {new_page.url}\n{page_log.render()}\n")
        context.close()


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:150]


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Save `page` as test-artifacts/screenshots/<name>.png (name sanitised) and return the path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{safe_name(name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


# --- a live server with a small index ---------------------------------------------------------------------------

INDEX_NAME = "demo"
UI_KEY = "ui-test-key"
MARKUP_TEXT = "Beware of <script>alert(1)</script> and <b>bold</b> markup in stored documents."
DEMO_DOCUMENTS = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France.", "topic": "cities"},
    {"id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany, on the river Spree.",
     "topic": "cities"},
    {"id": "madrid", "title": "Madrid", "text": "Madrid est la capitale de l'Espagne.", "topic": "cities",
     "lang": "fr"},
    {"id": "lisbon", "title": "Lisbon", "text": "Lisbon is the hilly capital of Portugal by the Atlantic.",
     "topic": "cities"},
    {"id": "bread", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast.", "topic": "food"},
    {"id": "sourdough", "title": "Sourdough", "text": "Sourdough bread rises slowly with a wild yeast starter.",
     "topic": "food"},
    {"id": "cheese", "title": "Cheese", "text": "Cheese is made by curdling milk and ageing the curds.",
     "topic": "food"},
    {"id": "python", "title": "Python", "text": "Python is a dynamic programming language.", "topic": "code"},
    {"id": "rust", "title": "Rust", "text": "Rust is a systems language with ownership and borrowing.",
     "topic": "code"},
    {"id": "haskell", "title": "Haskell", "text": "Haskell is a lazy, purely functional language.",
     "topic": "code"},
    {"id": "markup", "title": "Markup <i>title</i>", "text": MARKUP_TEXT, "topic": "code"},
]


@dataclass(frozen=True)
class Workbench:
    """A live server for UI tests: open f"{url}/ui"; `api_key` is None when the server needs none."""

    url: str
    index_root: Path
    index_name: str
    reports_root: Path
    api_key: str | None = None
    documents: tuple[dict, ...] = tuple(DEMO_DOCUMENTS)


def build_demo_index(index_root: Path, index_config) -> Path:
    from crossrank.store import Index
    from crossrank.types import Document

    path = index_root / INDEX_NAME
    with Index.create(path, index_config) as index:
        index.add([Document(d["text"], title=d["title"], id=d["id"],
                            metadata={"topic": d["topic"], "lang": d.get("lang", "en")}) for d in DEMO_DOCUMENTS])
        index.commit()
    return path


def _serve(tiny_model_dir: Path, tiny_index_config, tmp_path_factory: pytest.TempPathFactory,
           api_key: str | None) -> Iterator[Workbench]:
    from crossrank.server.app import create_app
    from crossrank.server.config import ServerConfig

    index_root = tmp_path_factory.mktemp("workbench-indexes")
    reports_root = tmp_path_factory.mktemp("workbench-reports")
    build_demo_index(index_root, tiny_index_config)
    config = ServerConfig(model=str(tiny_model_dir), index_root=index_root, reports_root=reports_root,
                          api_keys=frozenset({api_key}) if api_key else frozenset())
    with LiveServer(create_app(config)) as url:
        yield Workbench(url=url, index_root=index_root, index_name=INDEX_NAME, reports_root=reports_root,
                        api_key=api_key)


@pytest.fixture(scope="module")
def workbench_server(tiny_model_dir, tiny_index_config, tmp_path_factory) -> Iterator[Workbench]:
    """`crossrank serve` as configured for the workbench, no API keys, with the index `demo` (DEMO_DOCUMENTS)."""
    yield from _serve(tiny_model_dir, tiny_index_config, tmp_path_factory, None)


@pytest.fixture(scope="module")
def workbench_server_with_key(tiny_model_dir, tiny_index_config, tmp_path_factory) -> Iterator[Workbench]:
    """The same, requiring `Authorization: Bearer ui-test-key` (Workbench.api_key) on the API."""
    yield from _serve(tiny_model_dir, tiny_index_config, tmp_path_factory, UI_KEY)


__all__ = ["DEMO_DOCUMENTS", "INDEX_NAME", "MARKUP_TEXT", "UI_KEY", "PageLog", "Workbench", "browser_required",
           "chromium_path", "missing_browser", "screenshot", "skip_or_fail"]
