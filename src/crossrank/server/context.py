"""`POST /v1/context`: cited, budgeted evidence for an LLM from a named index, through `crossrank.context`.

The selector scores through the server's micro-batcher (`BatchedModel`, the object /search reranks with), so its
passage and sentence pairs share batches, backpressure, timeouts and metrics with /rerank and /search; selection
itself runs in the threadpool. The index is only read. Token budgets are counted with the estimate, or with a
tokenizer the operator configured by name (`--context-tokenizer NAME=PATH`): a request names a tokenizer, never a
file on the server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from crossrank.context import ContextSelector, TokenCounter, TokenizerTokens
from crossrank.server.auth import require_api_key
from crossrank.server.config import ServerConfig
from crossrank.server.indexes import BatchedModel, blocking, registry, warn_once_without_vectors
from crossrank.server.schemas import ContextRequest, ContextResponse
from crossrank.store import Index

SENTENCE_PASSES = 2  # sentence granularity scores the kept passages' sentences too: about their tokens again


def load_context_tokenizers(config: ServerConfig) -> dict[str, TokenCounter]:
    """The configured tokenizers, loaded once; each reports its configured name, never its server path."""
    loaded = {}
    for name, path in config.context_tokenizers.items():
        tokenizer = TokenizerTokens.from_file(path)  # FileNotFoundError / ValueError name the file: a startup error
        loaded[name] = TokenizerTokens(tokenizer.tokenizer, name)
    return loaded


class DefaultEncoder:
    """The bundled bi-encoder, loaded on first need and shared: duplicates in an index without vectors are judged
    with it (an index with vectors uses its own, already loaded for dense retrieval)."""

    def __init__(self) -> None:
        self._encoder: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._encoder is None:
                from crossrank.model.embedding import BiEncoder

                self._encoder = BiEncoder.from_pretrained()
            return self._encoder


def context_router() -> APIRouter:
    from crossrank.server.app import error_responses

    router = APIRouter(tags=["context"], dependencies=[Depends(require_api_key)],
                       responses=error_responses(400, 401, 404, 409, 413, 422, 500, 503))

    @router.post("/v1/context")
    async def context(body: ContextRequest, request: Request) -> ContextResponse:
        """The best evidence for `query` from index `index` that fits `budget_tokens`, as prompt text with
        citation markers (`rendered`), the snippets behind the markers (doc, passage, character span, scores)
        and what was left out and why (`dropped`: abstain, floor, duplicate, budget, empty).

        Retrieval uses every retriever the index has, fused; the top `candidates` are scored by the server's
        cross-encoder. When even the best is below `abstain_below` the answer is still 200, with `abstained`: true,
        no snippets and the `reason`, so the caller can answer "not found" instead of letting the LLM guess."""
        app = request.app
        config: ServerConfig = app.state.config
        metrics = app.state.metrics
        if len(body.query) > config.max_chars_per_document:
            metrics.rejected.labels("chars").inc()
            raise HTTPException(413, f"query has {len(body.query)} characters; the limit is "
                                     f"{config.max_chars_per_document} (max_chars_per_document)")
        if body.candidates > config.max_documents:
            metrics.rejected.labels("documents").inc()
            raise HTTPException(413, f"candidates={body.candidates} exceeds max_documents={config.max_documents}")
        counter = tokenizer(app.state.context_tokenizers, body.tokenizer)
        model = BatchedModel.serving(request)
        async with registry(request).lease(body.index) as index:
            passes = SENTENCE_PASSES if body.granularity == "sentence" else 1
            if passes * body.candidates * index.config.passage_tokens > config.max_request_tokens:
                metrics.rejected.labels("tokens").inc()
                raise HTTPException(413, f"candidates={body.candidates} passages of up to "
                                         f"{index.config.passage_tokens} tokens"
                                         f"{', scored again sentence by sentence,' if passes > 1 else ''} exceed "
                                         f"max_request_tokens={config.max_request_tokens}")
            if (await asyncio.to_thread(index.count))["passages"] == 0:
                raise HTTPException(409, f"index {body.index!r} holds no documents: add some with POST "
                                         f"/indexes/{body.index}/documents")
            warn_once_without_vectors(request, index, model)
            selected = await blocking(select, index, model, app.state.context_encoder, counter, body)
        return ContextResponse(index=body.index, model=model.name, style=body.style,
                               rendered=selected.render(body.style), **selected.to_dict())

    return router


def tokenizer(configured: Mapping[str, TokenCounter], name: str | None) -> TokenCounter | None:
    """The counter a request names (None: the estimate). An unknown name is a 404 listing the configured ones, as
    an unknown index is: the request is schema-valid, the server just has no such tokenizer."""
    if name is None:
        return None
    if name not in configured:
        names = ", ".join(sorted(configured)) or "none (start it with --context-tokenizer NAME=PATH)"
        raise HTTPException(404, f"no tokenizer named {name!r} on this server; configured: {names}")
    return configured[name]


def select(index: Index, model: BatchedModel, default_encoder: DefaultEncoder, counter: TokenCounter | None,
           body: ContextRequest) -> Any:
    """Runs in a worker thread: the selector's scoring calls go back to the event loop's micro-batcher."""
    encoder = index.encoder if index.config.dense else default_encoder()
    selector = ContextSelector(model, encoder, granularity=body.granularity, abstain_below=body.abstain_below,
                               min_probability=body.min_probability,
                               neighbours=body.neighbours, mmr_lambda=body.mmr_lambda, order=body.order,
                               tokenizer=counter, candidates=body.candidates)
    return selector.select(body.query, index, body.budget_tokens, filters=body.filter_dict())
