"""The FastAPI app: Cohere v1/v2 and Jina rerank endpoints over the micro-batcher, /search and /v1/context on named
indexes, plus health, readiness and metrics. `create_app(config)` loads the model in the lifespan; tests and Ray
pass a ready scorer instead.

Every error, from any layer (routing, validation, limits, the batcher, the store), is JSON `{"message": ...}`
with the status the OpenAPI document declares; an unexpected failure is a 500 whose message carries an id to
find the logged traceback, never the exception's text (which may hold server paths)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from crossrank.server.auth import require_api_key
from crossrank.server.batcher import (
    ClientDisconnected,
    MicroBatcher,
    Overloaded,
    RequestTimedOut,
    ScoringFailed,
    estimate_tokens,
)
from crossrank.server.config import ServerConfig
from crossrank.server.context import DefaultEncoder, context_router, load_context_tokenizers
from crossrank.server.indexes import IndexRegistry, index_router
from crossrank.server.judgments import judgments_router
from crossrank.server.limits import BodySizeLimit
from crossrank.server.metrics import Metrics
from crossrank.server.reports import reports_router
from crossrank.server.schemas import (
    ApiVersion,
    BilledUnits,
    ErrorResponse,
    Meta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankV1Request,
    RerankV2Request,
    Tokens,
    Usage,
    document_out,
)
from crossrank.server.scoring import BatchScorer, EncoderScorer
from crossrank.server.workbench import mount_workbench

if TYPE_CHECKING:
    from crossrank.ltr.lambdamart import LambdaMART

log = logging.getLogger("crossrank.server")

DOCUMENTS_PER_SEARCH_UNIT, TOKENS_PER_BILLED_DOCUMENT = 100, 500  # Cohere's billing unit (search_units)
ERROR_MEANINGS = {
    400: "The body is not valid JSON.",
    401: "Missing or wrong API key.",
    404: "No such index, document or context tokenizer.",
    409: "The index is busy (another process holds its writer lock), damaged, empty (/v1/context), lacks a retriever "
         "or filter field the request names, or the index limit is reached.",
    413: "The request exceeds a documented limit (the message names it).",
    422: "The request is well-formed JSON but invalid (the message says which field and why).",
    499: "The client disconnected before the answer was ready (logged; nobody receives it).",
    500: "An unexpected server failure; the message holds an id to find it in the log.",
    503: "Overloaded, timed out, starting or shutting down; retry after the Retry-After header's seconds.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": ERROR_MEANINGS[code]} for code in codes}


ERRORS = error_responses(400, 401, 413, 422, 499, 500, 503)


def load_scorer(config: ServerConfig) -> EncoderScorer:
    from crossrank.model.cross_encoder import CrossEncoder

    return EncoderScorer(CrossEncoder.from_pretrained(
        config.model, backend=config.backend, quantize=config.quantize,  # type: ignore[arg-type]
        threads=config.threads, batch_tokens=config.engine_batch_tokens, cache_entries=config.score_cache_entries,
        segment_cache_entries=config.segment_cache_entries))


def load_ltr(config: ServerConfig) -> LambdaMART | None:
    """The LambdaMART model /search applies when a request sets `ltr`, loaded once at startup."""
    if config.ltr_model is None:
        return None
    from crossrank.ltr.lambdamart import LambdaMART

    return LambdaMART.load(config.ltr_model)


def create_app(config: ServerConfig, scorer: BatchScorer | None = None) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.scorer is None:
            app.state.scorer = await asyncio.to_thread(load_scorer, config)
        batcher = MicroBatcher(app.state.scorer, batch_tokens=config.batch_tokens, max_wait_ms=config.max_wait_ms,
                               max_queue_pairs=config.max_queue_pairs, request_timeout_s=config.request_timeout_s,
                               workers=config.workers, slice_tokens=config.slice_tokens, metrics=metrics)
        await batcher.start()
        app.state.batcher = batcher
        app.state.ready = True
        log.info("ready", extra={"model": model_name(app), "auth": bool(config.api_keys)})
        try:
            yield
        finally:
            app.state.ready = False
            log.info("draining")
            await batcher.close()
            app.state.indexes.close()
            log.info("stopped")

    app = FastAPI(title="crossrank", version="0.1.0", lifespan=lifespan,
                  description="Cohere/Jina-compatible reranking with cross-request micro-batching.")
    app.state.config = config
    app.state.scorer = scorer
    app.state.metrics = metrics
    app.state.ready = False
    app.state.indexes = IndexRegistry(config.index_root, max_indexes=config.max_indexes,
                                      max_open=config.max_open_indexes)
    app.state.context_tokenizers = load_context_tokenizers(config)
    app.state.context_encoder = DefaultEncoder()
    app.state.ltr = load_ltr(config)
    app.state.indexes_checked_for_vectors = set()  # indexes.warn_once_without_vectors looks at each once
    # A scorer without a cache (a test double, Ray's remote one) exports nothing.
    metrics.watch_caches(lambda: getattr(app.state.scorer, "cache_stats", dict)())
    install_error_handlers(app)
    routers = [ops_router(), rerank_router(), index_router(), context_router(), judgments_router(), reports_router()]
    for router in routers:
        app.include_router(router)
    mount_workbench(app)
    app.state.routes = [route for router in routers for route in router.routes]  # for 405's Allow header
    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes)
    return app


def model_name(app: FastAPI) -> str:
    scorer = app.state.scorer
    return str(getattr(scorer, "name", None) or app.state.config.model or "crossrank")


def ops_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/ready", responses=error_responses(503))
    async def ready(request: Request) -> dict[str, str]:
        """Readiness: the model is loaded and the batcher is accepting work."""
        batcher = getattr(request.app.state, "batcher", None)
        if not request.app.state.ready or batcher is None or not batcher.running:
            raise HTTPException(503, "not ready")
        return {"status": "ready", "model": model_name(request.app)}

    @router.get("/metrics", response_class=Response)
    async def prometheus(request: Request) -> Response:
        """Prometheus text exposition."""
        return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")

    return router


def rerank_router() -> APIRouter:
    router = APIRouter(tags=["rerank"], dependencies=[Depends(require_api_key)], responses=ERRORS)

    @router.post("/v1/rerank", response_model_exclude_none=True)
    async def rerank_v1(body: RerankV1Request, request: Request) -> RerankResponse:
        """Cohere v1 rerank; also Jina's request shape (the answer carries Jina's `usage`)."""
        return await rerank(request, body, api_version="1", with_usage=True)

    @router.post("/v2/rerank", response_model_exclude_none=True)
    async def rerank_v2(body: RerankV2Request, request: Request) -> RerankResponse:
        """Cohere v2 rerank."""
        return await rerank(request, body, api_version="2", with_usage=False)

    @router.post("/rerank", response_model_exclude_none=True, include_in_schema=False)
    async def rerank_plain(body: RerankV1Request, request: Request) -> RerankResponse:
        """Unversioned alias (infinity and TEI clients post to /rerank)."""
        return await rerank(request, body, api_version="1", with_usage=True)

    return router


def check_limits(config: ServerConfig, body: RerankRequest, texts: list[str], metrics: Metrics) -> None:
    if len(body.documents) > config.max_documents:
        metrics.rejected.labels("documents").inc()
        raise HTTPException(413, f"{len(body.documents)} documents in one request; the limit is "
                                 f"{config.max_documents} (max_documents) — split the request")
    if len(body.query) > config.max_chars_per_document:
        metrics.rejected.labels("chars").inc()
        raise HTTPException(413, f"query has {len(body.query)} characters; the limit is "
                                 f"{config.max_chars_per_document} (max_chars_per_document)")
    for i, text in enumerate(texts):
        if len(text) > config.max_chars_per_document:
            metrics.rejected.labels("chars").inc()
            raise HTTPException(413, f"documents[{i}] has {len(text)} characters; the limit is "
                                     f"{config.max_chars_per_document} (max_chars_per_document)")


async def check_request_tokens(app: FastAPI, query: str, texts: list[str], cap: int | None) -> None:
    """Bound the work one request can cause: model tokens (query + document per pair, after truncation), counted
    with the model's tokenizer. A scorer without one (a test double) is held to the characters / 4 estimate."""
    config: ServerConfig = app.state.config
    characters = sum(len(query) + (len(text) if cap is None else min(len(text), cap)) for text in texts)
    if characters <= config.max_request_tokens:
        return  # a WordPiece token covers at least one character: no need to tokenize to know it fits
    count = getattr(app.state.scorer, "count_tokens", None)
    if count is not None:
        total = await asyncio.to_thread(count, [query] * len(texts), texts, [cap] * len(texts))
    else:
        total = sum(estimate_tokens(query, text, cap) for text in texts)
    if total > config.max_request_tokens:
        app.state.metrics.rejected.labels("tokens").inc()
        raise HTTPException(413, f"this request holds {total} tokens over all documents; the limit is "
                                 f"{config.max_request_tokens} (max_request_tokens) — split it, or send "
                                 "max_tokens_per_doc / max_chunks_per_doc to truncate long documents")


def search_units(pair_tokens: np.ndarray) -> int:
    """Cohere's billing rule: one search unit is one query with up to 100 documents, and a document longer than
    500 tokens, counted with its query, is split into chunks of 500 that each count as a document."""
    chunks = int(np.sum(np.ceil(np.asarray(pair_tokens, dtype=np.float64) / TOKENS_PER_BILLED_DOCUMENT)))
    return math.ceil(max(chunks, 1) / DOCUMENTS_PER_SEARCH_UNIT)


async def rerank(request: Request, body: RerankRequest, *, api_version: str, with_usage: bool) -> RerankResponse:
    app = request.app
    config: ServerConfig = app.state.config
    metrics: Metrics = app.state.metrics
    try:
        texts = body.texts()
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    check_limits(config, body, texts, metrics)
    cap = body.token_cap(getattr(app.state.scorer, "window_tokens", 256))
    await check_request_tokens(app, body.query, texts, cap)
    batcher: MicroBatcher | None = getattr(app.state, "batcher", None)
    if batcher is None:
        raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})
    scored = await batcher.submit([body.query] * len(texts), texts, [cap] * len(texts),
                                  disconnected=request.is_disconnected)
    order = np.argsort(-scored.logits, kind="stable")[: body.top_n]
    results = [
        RerankResult(index=int(i), relevance_score=float(np.clip(scored.probabilities[i], 0.0, 1.0)),
                     document=document_out(body.documents[i]) if body.return_documents else None)
        for i in order
    ]
    tokens = int(scored.tokens.sum())
    return RerankResponse(
        id=str(uuid.uuid4()), model=model_name(app), results=results,
        meta=Meta(api_version=ApiVersion(version=api_version),
                  billed_units=BilledUnits(search_units=search_units(scored.tokens)),
                  tokens=Tokens(input_tokens=tokens)),
        usage=Usage(total_tokens=tokens, prompt_tokens=tokens) if with_usage else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with a human-readable `message` (what Cohere's clients surface)."""
    metrics: Metrics = app.state.metrics

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"message": message}, status_code=status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})  # keeps Retry-After, WWW-Authenticate, ...
        if exc.status_code == 405:  # Starlette names only the first route matching the path; name all of them
            allowed = {method for route in request.app.state.routes
                       if route.matches(request.scope)[0] is Match.PARTIAL for method in route.methods}
            headers["Allow"] = ", ".join(sorted(allowed))
        return error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            where = next(e for e in errors if e.get("type") == "json_invalid")
            return error(400, f"the body is not valid JSON ({where.get('ctx', {}).get('error', 'parse error')})")
        problems = [f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in errors]
        return error(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        metrics.rejected.labels("overloaded").inc()
        return error(503, str(exc), {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestTimedOut)
    async def timed_out(request: Request, exc: RequestTimedOut) -> JSONResponse:
        metrics.rejected.labels("timeout").inc()
        return error(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(ClientDisconnected)
    async def disconnected(request: Request, exc: ClientDisconnected) -> JSONResponse:
        metrics.rejected.labels("disconnected").inc()
        return error(499, "client disconnected")

    @app.exception_handler(ScoringFailed)
    async def scoring_failed(request: Request, exc: ScoringFailed) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("scoring failed", exc_info=exc.__cause__ or exc, extra={"route": request.url.path,
                                                                        "incident": incident})
        return error(500, f"scoring failed (incident {incident}; details are in the server log)")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("request failed", exc_info=exc, extra={"route": request.url.path, "incident": incident})
        return error(500, f"internal error (incident {incident}; details are in the server log)")


class Observe:
    """Raw ASGI middleware: per-route request counts, latency, and one JSON access-log line per request
    (method, route, status, milliseconds; never headers, so keys stay out of the logs)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - start
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            log.info("request", extra={"method": scope["method"], "route": route, "status": status,
                                       "ms": round(elapsed * 1000, 2)})
