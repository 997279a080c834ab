"""Named indexes over HTTP: `/search` runs `crossrank.pipeline` stages on a `crossrank.store.Index`, and
document add/update/delete stage and commit through the index's own API. Nothing here re-implements retrieval,
fusion or storage; the rerank stage scores through the server's micro-batcher so /search and /rerank share
batches, backpressure and failure isolation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam

from crossrank.model.cross_encoder import PairScores
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.server.auth import require_api_key
from crossrank.server.batcher import MicroBatcher
from crossrank.server.schemas import (
    INDEX_NAME,
    AddDocumentsRequest,
    DocumentBody,
    ErrorResponse,
    IndexChange,
    SearchRequest,
    SearchResponse,
)
from crossrank.store import Index, IndexConfig
from crossrank.store.index import IndexLockedError, NotAnIndexError
from crossrank.types import Document

IndexName = PathParam(pattern=INDEX_NAME, description="Index name (letters, digits, '_', '.', '-').")


class BatchedModel:
    """Stands in for a CrossEncoder in the pipeline's Rerank stage (which calls `score` from a worker thread),
    routing the pairs through the server's micro-batcher on the event loop; `interpolation` is the loaded
    model's shipped first-stage weight, the Rerank stage's default."""

    def __init__(self, batcher: MicroBatcher, loop: asyncio.AbstractEventLoop, name: str,
                 interpolation: FirstStageInterpolation | None) -> None:
        self.batcher, self.loop, self.name, self.interpolation = batcher, loop, name, interpolation

    def score(self, queries: Sequence[str], documents: Sequence[Document]) -> PairScores:
        texts = [document.content for document in documents]
        future = asyncio.run_coroutine_threadsafe(self.batcher.submit(list(queries), texts, [None] * len(texts)),
                                                  self.loop)
        scored = future.result()
        return PairScores(scored.logits, scored.probabilities, scored.windows)


class IndexRegistry:
    """Open indexes under one root, one handle per name for the server's lifetime (writer if the lock is free)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None
        self._open: dict[str, Index] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        if self.root is None:
            raise HTTPException(404, "this server has no index root (start it with --index-root DIR)")
        path = (self.root / name).resolve()
        if path.parent != self.root:  # the name pattern already forbids this; checked again at the filesystem
            raise HTTPException(422, f"invalid index name {name!r}")
        return path

    def get(self, name: str, create: IndexConfig | None = None) -> Index:
        path = self.path(name)
        with self._lock:
            index = self._open.get(name)
            if index is None:
                try:
                    index = Index.open(path, writable=True)
                except IndexLockedError:
                    index = Index.open(path)
                except NotAnIndexError as exc:
                    if create is None:
                        raise HTTPException(404, f"no index named {name!r}") from exc
                    index = Index.create(path, create)
                self._open[name] = index
            return index

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "passages.sqlite").is_file())

    def close(self) -> None:
        with self._lock:
            for index in self._open.values():
                index.close()
            self._open.clear()


def registry(request: Request) -> IndexRegistry:
    return request.app.state.indexes


def change(name: str, index: Index, generation: int) -> IndexChange:
    return IndexChange(index=name, generation=generation, **index.count())


async def blocking(function, *args):  # noqa: ANN001, ANN201
    """Run index work in a thread; the store's own errors become clear 4xx answers."""
    try:
        return await asyncio.to_thread(function, *args)
    except PermissionError as exc:
        raise HTTPException(409, f"index is read-only here (another process holds its writer lock): {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, str(exc)) from exc


def index_router() -> APIRouter:
    router = APIRouter(tags=["search"], dependencies=[Depends(require_api_key)],
                       responses={code: {"model": ErrorResponse} for code in (401, 404, 409, 413, 422, 503)})

    @router.post("/search", response_model_exclude_none=True)
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        """Retrieve → fuse → rerank → cut on a named index; `explain` adds the per-stage trace."""
        from crossrank.pipeline import Cut, Fuse, Pipeline, Rerank, Retrieve

        index = await asyncio.to_thread(registry(request).get, body.index)
        names = body.retrievers or index.retrievers
        unknown = sorted(set(names) - set(index.retrievers))
        if unknown:
            raise HTTPException(422, f"retrievers {unknown} not available; index {body.index!r} has "
                                     f"{index.retrievers}")
        if body.rerank_k > request.app.state.config.max_documents:
            raise HTTPException(413, f"rerank_k={body.rerank_k} exceeds max_documents="
                                     f"{request.app.state.config.max_documents}")
        stages = [Retrieve(index, names, k=body.first_k)]
        if len(names) > 1:
            stages.append(Fuse("rrf", sources=names))
        if body.rerank_k:
            app = request.app
            model = BatchedModel(app.state.batcher, asyncio.get_running_loop(), str(app.state.scorer.name),
                                 getattr(app.state.scorer, "interpolation", None))
            weight = "model" if body.first_stage_weight is None else body.first_stage_weight
            stages.append(Rerank(model, k=body.rerank_k, first_stage_weight=weight))  # type: ignore[arg-type]
        pipeline = Pipeline([*stages, Cut(body.k)])
        result = await blocking(pipeline.search, body.query, body.filters)
        out = result.to_dict()
        return SearchResponse(index=body.index, query=body.query, results=out["results"],
                              pipeline=repr(pipeline) if body.explain else None,
                              trace=out["trace"] if body.explain else None)

    @router.get("/indexes")
    async def list_indexes(request: Request) -> dict[str, list[str]]:
        """Names of the indexes under the server's index root."""
        return {"indexes": registry(request).names()}

    @router.post("/indexes/{name}/documents")
    async def add_documents(body: AddDocumentsRequest, request: Request, name: str = IndexName) -> IndexChange:
        """Add (or replace, by id) documents and commit; creates the index on first use."""
        limit = request.app.state.config.max_documents
        if len(body.documents) > limit:
            raise HTTPException(413, f"{len(body.documents)} documents in one request; the limit is {limit}")
        index = await asyncio.to_thread(registry(request).get, name, IndexConfig(dense=body.dense))
        documents = [Document(text=d.text, title=d.title, id=d.id, metadata=d.metadata) for d in body.documents]
        await blocking(index.add, documents)
        return change(name, index, await blocking(index.commit))

    @router.put("/indexes/{name}/documents/{doc_id}")
    async def update_document(body: DocumentBody, request: Request, name: str = IndexName,
                              doc_id: str = PathParam(min_length=1, max_length=512)) -> IndexChange:
        """Replace one document (or add it under this id) and commit."""
        index = await asyncio.to_thread(registry(request).get, name)
        await blocking(index.add, [Document(text=body.text, title=body.title, id=doc_id, metadata=body.metadata)])
        return change(name, index, await blocking(index.commit))

    @router.delete("/indexes/{name}/documents/{doc_id}")
    async def delete_document(request: Request, name: str = IndexName,
                              doc_id: str = PathParam(min_length=1, max_length=512)) -> IndexChange:
        """Delete one document and commit; 404 if the id is not in the index."""
        index = await asyncio.to_thread(registry(request).get, name)
        if await blocking(index.delete, [doc_id]):
            raise HTTPException(404, f"no document {doc_id!r} in index {name!r}")
        return change(name, index, await blocking(index.commit))

    return router
