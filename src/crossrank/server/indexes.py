"""Named indexes over HTTP: `/search` runs `crossrank.pipeline` stages on a `crossrank.store.Index`, and
document add/update/delete stage and commit through the index's own API. Nothing here re-implements retrieval,
fusion or storage; the rerank stage scores through the server's micro-batcher so /search and /rerank share
batches, backpressure and failure isolation."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam

from crossrank.model.calibration import Calibrator
from crossrank.model.cross_encoder import PairScores
from crossrank.model.interpolation import FirstStageInterpolation
from crossrank.pipeline import Pipeline, search_pipeline
from crossrank.retrieve.bm25 import query_words
from crossrank.server.auth import require_api_key
from crossrank.server.batcher import MicroBatcher
from crossrank.server.schemas import (
    INDEX_NAME,
    NOT_BLANK,
    AddDocumentsRequest,
    CreateIndexRequest,
    DocumentBody,
    IndexChange,
    IndexList,
    PipelineSpec,
    SearchRequest,
    SearchResponse,
)
from crossrank.store import Index, IndexConfig
from crossrank.store.filters import UnknownFieldError
from crossrank.store.index import (
    DATABASE,
    IndexExistsError,
    IndexLockedError,
    NotAnIndexError,
)
from crossrank.types import Document

log = logging.getLogger("crossrank.server")
IndexName = PathParam(pattern=INDEX_NAME, description="Index name (letters, digits, '_', '.', '-').")
DocId = PathParam(min_length=1, max_length=512, pattern=NOT_BLANK,
                  description="Document id; may contain '/' (percent-encode '#', '?' and '%').")


class BatchedModel:
    """Stands in for a CrossEncoder in the pipeline's Rerank stage and in `ContextSelector` (which call `score`
    from a worker thread), routing the pairs through the server's micro-batcher on the event loop; `interpolation`
    is the loaded model's shipped first-stage weight, the Rerank stage's default, `calibrate` its calibration
    (what `probabilities` applies to logits the selector blends itself) and `encoder` the in-process CrossEncoder
    the batched pairs reach, if any (an index lends it its stored passage vectors)."""

    def __init__(self, batcher: MicroBatcher, loop: asyncio.AbstractEventLoop, name: str,
                 interpolation: FirstStageInterpolation | None,
                 calibrate: Callable[[np.ndarray], np.ndarray] | None = None, encoder: Any = None) -> None:
        self.batcher, self.loop, self.name, self.interpolation = batcher, loop, name, interpolation
        self.calibrate = calibrate if calibrate is not None else Calibrator()
        self.encoder = encoder

    @classmethod
    def serving(cls, request: Request) -> BatchedModel:
        """The model behind this app's micro-batcher, for a request handled on the running event loop."""
        app = request.app
        batcher = getattr(app.state, "batcher", None)
        if batcher is None:
            raise HTTPException(503, "the model is still loading", headers={"Retry-After": "1"})
        scorer = app.state.scorer
        return cls(batcher, asyncio.get_running_loop(), str(scorer.name), getattr(scorer, "interpolation", None),
                   getattr(scorer, "probabilities", None), getattr(scorer, "encoder", None))

    def score(self, queries: Sequence[str], documents: Sequence[Document]) -> PairScores:
        texts = [document.content for document in documents]
        future = asyncio.run_coroutine_threadsafe(self.batcher.submit(list(queries), texts, [None] * len(texts)),
                                                  self.loop)
        return future.result()

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return self.calibrate(logits)


@dataclass(eq=False)
class _Handle:
    index: Index
    users: int = 0
    retired: bool = False  # replaced or evicted: closed when its last user leaves


class IndexRegistry:
    """Open indexes under one root, shared by all requests. Requests borrow an index with `lease` (so one in use is
    never closed under them); at most `max_open` stay open (the least recently used idle ones are closed), at most
    `max_indexes` may exist, and an index is created only when a request asks for it. A handle opened read-only
    (a CLI writer held the lock) is upgraded the next time a write needs it."""

    def __init__(self, root: Path | None, *, max_indexes: int = 100, max_open: int = 16) -> None:
        self.root = root.resolve() if root is not None else None
        self.max_indexes, self.max_open = max_indexes, max_open
        self._open: OrderedDict[str, _Handle] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        if self.root is None:
            raise HTTPException(404, "this server has no index root (start it with --index-root DIR)")
        path = (self.root / name).resolve()
        if path.parent != self.root or not re.fullmatch(INDEX_NAME, name):  # the route pattern checks it too
            raise HTTPException(422, f"invalid index name {name!r}")
        return path

    @asynccontextmanager
    async def lease(self, name: str, *, write: bool = False,
                    create: IndexConfig | None = None) -> AsyncIterator[Index]:
        """Borrow the index `name` for one request: writable if `write`, created with `create` if it is missing."""
        handle = await asyncio.to_thread(self._acquire, name, write, create)
        try:
            yield handle.index
        finally:
            self._release(handle)

    def _acquire(self, name: str, write: bool, create: IndexConfig | None) -> _Handle:
        path = self.path(name)
        with self._lock:
            handle = self._open.get(name)
            if handle is not None and write and not handle.index.writable:
                upgraded = _Handle(self._open_writable(name, path))
                self._retire(name)
                handle = self._open[name] = upgraded
            elif handle is None:
                handle = self._open[name] = _Handle(self._open_index(name, path, write, create))
            self._open.move_to_end(name)
            handle.users += 1
            self._evict()
            return handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            if handle.retired and handle.users == 0:
                handle.index.close()

    def _retire(self, name: str) -> None:
        handle = self._open.pop(name)
        handle.retired = True
        if handle.users == 0:
            handle.index.close()

    def _evict(self) -> None:
        idle = [name for name, handle in self._open.items() if handle.users == 0]
        for name in idle[: max(0, len(self._open) - self.max_open)]:
            self._retire(name)

    @staticmethod
    def _busy(name: str) -> HTTPException:
        return HTTPException(409, f"index {name!r} is being written by another process (it holds the writer lock); "
                                  "retry when it is done", headers={"Retry-After": "1"})

    def _open_writable(self, name: str, path: Path) -> Index:
        try:
            return Index.open(path, writable=True)
        except IndexLockedError as exc:
            raise self._busy(name) from exc

    def _open_index(self, name: str, path: Path, write: bool, create: IndexConfig | None) -> Index:
        try:
            try:
                return Index.open(path, writable=True)
            except IndexLockedError as exc:
                if write:
                    raise self._busy(name) from exc
                return Index.open(path)
        except HTTPException:
            raise
        except NotAnIndexError as exc:
            if (path / DATABASE).exists():
                log.error("index cannot be opened", exc_info=exc, extra={"index": name})
                raise HTTPException(409, f"index {name!r} exists but cannot be opened (damaged files; details are "
                                         "in the server log)") from exc
            if path.exists():
                raise HTTPException(409, f"the name {name!r} is taken by something that is not an index") from exc
            if create is None:
                raise HTTPException(404, f"no index named {name!r} (create it with PUT /indexes/{name})") from exc
        except Exception as exc:
            log.error("index cannot be opened", exc_info=exc, extra={"index": name})
            raise HTTPException(409, f"index {name!r} cannot be opened (damaged files; details are in the server "
                                     "log)") from exc
        if len(self.names()) >= self.max_indexes:
            raise HTTPException(409, f"this server already holds {self.max_indexes} indexes (max_indexes); delete "
                                     "one or raise the limit")
        try:
            return Index.create(path, create)
        except IndexExistsError:  # created by another process between our check and our rename
            return self._open_writable(name, path)

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if re.fullmatch(INDEX_NAME, p.name) and (p / DATABASE).is_file())

    def open_count(self) -> int:
        return len(self._open)

    def close(self) -> None:
        with self._lock:
            for name in list(self._open):
                self._retire(name)


def registry(request: Request) -> IndexRegistry:
    return request.app.state.indexes


def change(name: str, index: Index, generation: int) -> IndexChange:
    return IndexChange(index=name, generation=generation, **index.count())


async def blocking(function, *args):
    """Run index work in a thread; the store's own errors become clear 4xx answers."""
    try:
        return await asyncio.to_thread(function, *args)
    except UnknownFieldError as exc:
        raise HTTPException(409, str(exc)) from exc
    except PermissionError as exc:
        raise HTTPException(409, "index is read-only here (another process holds its writer lock); retry",
                            headers={"Retry-After": "1"}) from exc
    except (ValueError, TypeError) as exc:
        raise HTTPException(422, str(exc)) from exc


def pipeline_for(request: Request, index: Index, spec: PipelineSpec, *, k: int) -> Pipeline:
    """The stages `spec` names on `index`, scoring through the server's batcher; a spec the server or the index
    cannot run (too deep for the limits, a retriever the index lacks, LTR without a model) is a clear 4xx."""
    from crossrank.ltr.stage import LTR

    config = request.app.state.config
    if spec.rerank_k > config.max_documents:
        raise HTTPException(413, f"rerank_k={spec.rerank_k} exceeds max_documents={config.max_documents}")
    if spec.rerank_k * index.config.passage_tokens > config.max_request_tokens:
        raise HTTPException(413, f"rerank_k={spec.rerank_k} passages of up to {index.config.passage_tokens} "
                                 f"tokens exceed max_request_tokens={config.max_request_tokens}")
    names = spec.retrievers or index.retrievers
    unknown = sorted(set(names) - set(index.retrievers))
    if unknown:
        raise HTTPException(409, f"retrievers {unknown} not available; index {index.path.name!r} has "
                                 f"{index.retrievers}")
    ltr_model = request.app.state.ltr
    if spec.ltr and ltr_model is None:
        raise HTTPException(409, "this server has no LambdaMART model (start it with --ltr MODEL)")
    model = BatchedModel.serving(request) if spec.rerank_k else None
    if model is not None:
        warn_once_without_vectors(request, index, model)
    return search_pipeline(
        index, names, first_k=spec.first_k, fusion=spec.fusion, reranker=model, rerank_k=spec.rerank_k, k=k,
        first_stage_weight="model" if spec.first_stage_weight is None else spec.first_stage_weight,
        learned=LTR(ltr_model) if spec.ltr else None)


def warn_once_without_vectors(request: Request, index: Index, model: BatchedModel) -> None:
    """Log, once per index, that it stores passage vectors for another reranker but not the served one (a model
    trained since the index was built): its searches encode every candidate, tens of times slower, and nothing else
    would say why. `crossrank index DIR -m MODEL` stores them. Each index is looked at once, not on every request."""
    checked = request.app.state.indexes_checked_for_vectors
    if index.path.name in checked:
        return
    checked.add(index.path.name)
    if index.lacks_segments(model):
        log.warning("index stores passage vectors for another reranker, not the served one: its searches encode "
                    "every candidate (store them with `crossrank index DIR -m MODEL`)",
                    extra={"index": index.path.name, "model": model.name})


def index_router() -> APIRouter:
    from crossrank.server.app import error_responses

    router = APIRouter(tags=["search"], dependencies=[Depends(require_api_key)],
                       responses=error_responses(400, 401, 404, 409, 413, 422, 500, 503))

    @router.post("/search", response_model_exclude_none=True)
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        """Retrieve → fuse → rerank → cut on a named index; `explain` adds the per-stage trace."""
        limit = request.app.state.config.max_query_chars
        if len(body.query) > limit:
            raise HTTPException(413, f"the query has {len(body.query)} characters; the limit is {limit} "
                                     "(max_query_chars): a query this long is a document, shorten it")
        async with registry(request).lease(body.index) as index:
            pipeline = pipeline_for(request, index, body, k=body.k)
            result = await blocking(pipeline.search, body.query, body.filter_dict())
        out = result.to_dict()
        return SearchResponse(index=body.index, query=body.query, results=out["results"],
                              pipeline=repr(pipeline) if body.explain else None,
                              trace=out["trace"] if body.explain else None,
                              query_terms=query_words(body.query) if body.explain else None)

    @router.get("/indexes")
    async def list_indexes(request: Request) -> IndexList:
        """Names of the indexes under the server's index root."""
        return IndexList(indexes=registry(request).names())

    @router.put("/indexes/{name}", status_code=201, responses={200: {"model": IndexChange,
                                                                     "description": "The index already exists."}})
    async def create_index(request: Request, response: Response, body: CreateIndexRequest | None = None,
                           name: str = IndexName) -> IndexChange:
        """Create an empty index (201), or answer 200 if it exists; writes to a missing index are 404, so a typo
        in a name never creates one."""
        existed = (registry(request).path(name) / DATABASE).is_file()
        config = IndexConfig(dense=body.dense if body is not None else True)
        async with registry(request).lease(name, create=config) as index:
            if existed:
                response.status_code = 200
            return change(name, index, index.generation)

    @router.post("/indexes/{name}/documents")
    async def add_documents(body: AddDocumentsRequest, request: Request, name: str = IndexName,
                            create: bool = Query(False, description="Create the index if it does not exist.")
                            ) -> IndexChange:
        """Add (or replace, by id) documents and commit; 404 for a missing index unless `create=true`."""
        limit = request.app.state.config.max_documents
        if len(body.documents) > limit:
            raise HTTPException(413, f"{len(body.documents)} documents in one request; the limit is {limit} "
                                     "(max_documents)")
        documents = [Document(text=d.text, title=d.title, id=d.id, metadata=d.metadata) for d in body.documents]
        async with registry(request).lease(name, write=True,
                                           create=IndexConfig(dense=body.dense) if create else None) as index:
            await blocking(index.add, documents)
            return change(name, index, await blocking(index.commit))

    @router.put("/indexes/{name}/documents/{doc_id:path}")
    async def update_document(body: DocumentBody, request: Request, name: str = IndexName,
                              doc_id: str = DocId) -> IndexChange:
        """Replace one document (or add it under this id) and commit."""
        async with registry(request).lease(name, write=True) as index:
            await blocking(index.add, [Document(text=body.text, title=body.title, id=doc_id,
                                                metadata=body.metadata)])
            return change(name, index, await blocking(index.commit))

    @router.delete("/indexes/{name}/documents/{doc_id:path}")
    async def delete_document(request: Request, name: str = IndexName, doc_id: str = DocId) -> IndexChange:
        """Delete one document and commit; 404 if the id is not in the index."""
        async with registry(request).lease(name, write=True) as index:
            if await blocking(index.delete, [doc_id]):
                raise HTTPException(404, f"no document {doc_id!r} in index {name!r}")
            return change(name, index, await blocking(index.commit))

    return router
