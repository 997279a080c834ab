"""The relevance workbench at /ui: four server-rendered page shells (Jinja2, autoescaped) and one vanilla script that
is a client of the public JSON API (/indexes, /search, /indexes/{name}/judgments, /reports), sending the user's
key like any other client. Every asset ships in the package (no CDN, no build step). The pages carry a
Content-Security-Policy that runs scripts from this server only, and the script writes text with `textContent`,
never as markup, so a document or query holding HTML is shown as text and cannot run."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
VIEWS = {"search": "Search", "compare": "Compare", "judgments": "Judgments", "reports": "Reports"}
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
templates = Jinja2Templates(directory=HERE / "templates")


def mount_workbench(app: FastAPI) -> None:
    """Add the /ui pages and their static assets to the app."""
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="workbench-static")
    app.include_router(workbench_router())


def workbench_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui/")
    async def trailing_slash() -> RedirectResponse:
        return RedirectResponse("/ui")

    @router.get("/ui", response_class=HTMLResponse)
    @router.get("/ui/{view}", response_class=HTMLResponse)
    async def page(request: Request, view: str = "search") -> HTMLResponse:
        """A view's page shell: no data in it (the script fetches everything with the user's key)."""
        if view not in VIEWS:
            raise HTTPException(404, f"no workbench view {view!r}; views are {sorted(VIEWS)}")
        from crossrank.server.app import model_name

        app = request.app
        response = templates.TemplateResponse(request, f"{view}.html", {
            "view": view, "views": VIEWS, "model": model_name(app), "auth": bool(app.state.config.api_keys),
            "ltr": app.state.ltr is not None})
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return router
