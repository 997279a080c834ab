"""`crossrank eval` results over HTTP, for the workbench's Reports view: the results.json files under the server's
reports folder (`crossrank serve --reports DIR`, default ./eval-results when it exists), listed and served as
they were written. Names are paths relative to that folder; nothing outside it is reachable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from crossrank.server.auth import require_api_key

RESULTS = "results.json"
MAX_DEPTH = 4  # eval-results/<dataset-split>/results.json, or a few folders deeper


class ReportEntry(BaseModel):
    name: str
    dataset: str
    split: str
    queries: int
    systems: list[str]
    modified: float


class ReportList(BaseModel):
    root: str | None
    reports: list[ReportEntry]


def reports_root(request: Request) -> Path | None:
    root = request.app.state.config.reports_root
    if root is None:
        default = Path("eval-results")
        return default.resolve() if default.is_dir() else None
    return Path(root).resolve()


def read_results(path: Path) -> dict[str, Any] | None:
    """A results.json as `crossrank eval` writes it, or None when the file is not one (skipped in listings)."""
    try:
        # NaN (a p-value over one query) is valid in Python's JSON but not in JSON: serve it as null.
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=lambda _: None)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("systems"), list) else None


def list_reports(root: Path) -> list[ReportEntry]:
    entries = []
    for path in sorted(root.rglob(RESULTS)):
        if len(path.relative_to(root).parts) > MAX_DEPTH + 1 or (data := read_results(path)) is None:
            continue
        entries.append(ReportEntry(
            name=path.parent.relative_to(root).as_posix(), dataset=str(data.get("dataset", "")),
            split=str(data.get("split", "")), queries=int(data.get("queries", 0)),
            systems=[str(system.get("name")) for system in data["systems"]], modified=path.stat().st_mtime))
    return sorted(entries, key=lambda entry: -entry.modified)


def reports_router() -> APIRouter:
    from crossrank.server.app import error_responses

    router = APIRouter(tags=["reports"], dependencies=[Depends(require_api_key)],
                       responses=error_responses(401, 404, 422, 500))

    @router.get("/reports")
    async def reports(request: Request) -> ReportList:
        """The evaluation results under the reports folder, newest first."""
        root = reports_root(request)
        return ReportList(root=None if root is None else root.name,
                          reports=[] if root is None or not root.is_dir() else list_reports(root))

    @router.get("/reports/{name:path}")
    async def report(request: Request, name: str) -> dict[str, Any]:
        """One results.json (systems with means and per-query values, paired tests, depth curve, failures)."""
        root = reports_root(request)
        if root is None:
            raise HTTPException(404, "this server has no reports folder (start it with --reports DIR)")
        path = (root / name / RESULTS).resolve()
        if not path.is_relative_to(root):
            raise HTTPException(404, f"no report named {name!r}")
        data = read_results(path) if path.is_file() else None
        if data is None:
            raise HTTPException(404, f"no report named {name!r}")
        return data

    return router
