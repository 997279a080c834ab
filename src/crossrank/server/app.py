"""The FastAPI app: Cohere v1/v2 and Jina rerank endpoints over the micro-batcher, plus health, readiness and
metrics. `create_app(config)` loads the model in the lifespan; tests and Ray pass a ready scorer instead."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from crossrank.server.auth import require_api_key
from crossrank.server.batcher import ClientDisconnected, MicroBatcher, Overloaded, RequestTimedOut
from crossrank.server.config import ServerConfig
from crossrank.server.indexes import IndexRegistry, index_router
from crossrank.server.limits import BodySizeLimit
from crossrank.server.metrics import Metrics
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
from crossrank.server.scoring import EncoderScorer, PairScorer

log = logging.getLogger("crossrank.server")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 413, 422, 500, 503)
}


def load_scorer(config: ServerConfig) -> EncoderScorer:
    from crossrank.model.cross_encoder import CrossEncoder

    return EncoderScorer(CrossEncoder.from_pretrained(
        config.model, backend=config.backend, quantize=config.quantize,  # type: ignore[arg-type]
        threads=config.threads, batch_tokens=config.engine_batch_tokens))


def create_app(config: ServerConfig, scorer: PairScorer | None = None) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        if app.state.scorer is None:
            app.state.scorer = await asyncio.to_thread(load_scorer, config)
        batcher = MicroBatcher(app.state.scorer, batch_tokens=config.batch_tokens, max_wait_ms=config.max_wait_ms,
                               max_queue_pairs=config.max_queue_pairs, request_timeout_s=config.request_timeout_s,
                               workers=config.workers, metrics=metrics)
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
    app.state.indexes = IndexRegistry(config.index_root)
    install_error_handlers(app)
    app.include_router(ops_router())
    app.include_router(rerank_router())
    app.include_router(index_router())
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

    @router.get("/ready", responses={503: {"model": ErrorResponse}})
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
    batcher: MicroBatcher | None = getattr(app.state, "batcher", None)
    if batcher is None:
        raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})
    try:
        scored = await batcher.submit([body.query] * len(texts), texts, [cap] * len(texts),
                                      disconnected=request.is_disconnected)
    except Overloaded as exc:
        metrics.rejected.labels("overloaded").inc()
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after)}) from exc
    except RequestTimedOut as exc:
        metrics.rejected.labels("timeout").inc()
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
    except ClientDisconnected as exc:
        metrics.rejected.labels("disconnected").inc()
        raise HTTPException(499, "client disconnected") from exc
    except Exception as exc:  # a failed batch: this request's error only, the server keeps serving
        log.error("scoring failed", exc_info=exc, extra={"documents": len(texts)})
        raise HTTPException(500, f"scoring failed: {type(exc).__name__}: {exc}") from exc
    order = np.argsort(-scored.logits, kind="stable")[: body.top_n]
    results = [
        RerankResult(index=int(i), relevance_score=float(np.clip(scored.probabilities[i], 0.0, 1.0)),
                     document=document_out(body.documents[i]) if body.return_documents else None)
        for i in order
    ]
    tokens = int(scored.tokens.sum())
    return RerankResponse(
        id=str(uuid.uuid4()), model=model_name(app), results=results,
        meta=Meta(api_version=ApiVersion(version=api_version), billed_units=BilledUnits(search_units=1),
                  tokens=Tokens(input_tokens=tokens)),
        usage=Usage(total_tokens=tokens, prompt_tokens=tokens) if with_usage else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with a human-readable `message` (what Cohere's clients surface)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"message": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()]
        return JSONResponse({"message": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        return JSONResponse({"message": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


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
