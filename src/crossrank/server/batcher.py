"""Micro-batching across requests: concurrent requests share one `score` call, sized by an estimated token budget.

Requests wait in a bounded queue; a collector closes a batch when the budget is full or `max_wait_ms` passed,
and hands it to a worker thread (tokenisation and inference never run on the event loop). While the worker is
busy the queue fills, so batches grow with load on their own. The engine then sorts the concatenated pairs by
length and packs them by its own token budget; results are split back per request.

Failure isolation (what infinity issue #242 lacked): if a combined batch raises, each of its requests is retried
alone, so only the request that actually fails gets the error and the server keeps serving.

Abandoned work stops: a batch is scored in slices of `slice_tokens`, and before each slice the pairs of requests
that timed out, whose client left, or that a shutdown cut short are dropped, so one huge abandoned request cannot
hold the scorer long after its answer stopped mattering. `drain(seconds)` (on SIGTERM) refuses new work and
answers whatever is still waiting with 503 before the deadline, instead of being killed mid-response.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from crossrank.model.cross_encoder import PairScores
from crossrank.server.metrics import Metrics
from crossrank.server.scoring import BatchScorer

log = logging.getLogger("crossrank.server")


class Overloaded(Exception):
    """The queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimedOut(Exception):
    """The request was not answered within the per-request timeout."""


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


class ScoringFailed(Exception):
    """The scorer raised on this request's pairs (the cause is chained); other requests in its batch are unaffected."""


def estimate_tokens(query: str, text: str, cap: int | None) -> int:
    """A cheap pre-tokenisation estimate (about 4 characters a token) used only to size batches."""
    tokens = math.ceil(len(text) / 4)
    if cap is not None:
        tokens = min(tokens, cap)
    return tokens + math.ceil(len(query) / 4) + 3


@dataclass(eq=False)
class _Pending:
    queries: list[str]
    texts: list[str]
    caps: list[int | None]
    costs: list[int]
    future: asyncio.Future[PairScores] = field(repr=False)
    abandoned: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def cost(self) -> int:
        return sum(self.costs)


class MicroBatcher:
    """Collects concurrent requests into batches for a `BatchScorer` running on `workers` threads."""

    def __init__(self, scorer: BatchScorer, *, batch_tokens: int = 32768, max_wait_ms: float = 2.0,
                 max_queue_pairs: int = 20000, request_timeout_s: float = 60.0, workers: int = 1,
                 slice_tokens: int = 8192, metrics: Metrics | None = None) -> None:
        self.scorer = scorer
        self.batch_tokens = batch_tokens
        self.slice_tokens = slice_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue_pairs = max_queue_pairs
        self.request_timeout_s = request_timeout_s
        self.workers = workers
        self.metrics = metrics
        self.queued_pairs = 0
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self._drained: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not all(task.done() for task in self._tasks)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._drained = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="crossrank-score")
        self._tasks = [asyncio.create_task(self._collect(), name=f"batcher-{i}") for i in range(self.workers)]

    async def close(self) -> None:
        """Finish everything already queued, then stop the collectors and the worker threads."""
        if self._queue is None:
            return
        self._closing = True
        for _ in self._tasks:
            self._queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._queue, self._tasks, self._executor, self._closing = None, [], None, False

    def drain(self, seconds: float) -> None:
        """Stop accepting work now; whatever is still unanswered `seconds` from now gets a 503 and is dropped from
        scoring. Called on the event loop when a shutdown starts."""
        self._closing = True
        if self._drained is not None:
            asyncio.get_running_loop().call_later(max(0.0, seconds), self._drained.set)

    async def submit(self, queries: Sequence[str], texts: Sequence[str], caps: Sequence[int | None],
                     disconnected: Callable[[], Awaitable[bool]] | None = None) -> PairScores:
        """Score aligned pairs together with whatever else is queued; raise Overloaded, RequestTimedOut or
        ClientDisconnected instead of waiting forever."""
        if self._queue is None or self._closing:
            raise Overloaded("the server is not accepting work (starting or draining)", retry_after=1)
        if not texts:
            return PairScores.concat([])
        if self.queued_pairs + len(texts) > self.max_queue_pairs:
            raise Overloaded(f"queue full ({self.queued_pairs} pairs waiting, limit {self.max_queue_pairs})",
                             retry_after=max(1, math.ceil(self.queued_pairs / 1000)))
        costs = [estimate_tokens(q, t, c) for q, t, c in zip(queries, texts, caps, strict=True)]
        future: asyncio.Future[PairScores] = asyncio.get_running_loop().create_future()
        pending = _Pending(list(queries), list(texts), list(caps), costs, future)
        self.queued_pairs += len(texts)
        self._gauge()
        self._queue.put_nowait(pending)
        watcher = asyncio.create_task(self._watch(disconnected)) if disconnected else None
        assert self._drained is not None
        drained = asyncio.create_task(self._drained.wait())
        try:
            async with asyncio.timeout(self.request_timeout_s):
                done, _ = await asyncio.wait({future, drained} | ({watcher} if watcher else set()),
                                             return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise RequestTimedOut(f"no answer within {self.request_timeout_s:g}s") from None
        finally:
            for task in (watcher, drained):
                if task is not None:
                    task.cancel()
            if not future.done():
                future.cancel()  # the collector skips it if it has not been scored yet,
                pending.abandoned.set()  # and the worker drops its remaining slices if it has
        if future in done:
            return future.result()
        if drained in done:
            raise Overloaded("the server is shutting down; retry on another replica", retry_after=1)
        raise ClientDisconnected("client disconnected")

    @staticmethod
    async def _watch(disconnected: Callable[[], Awaitable[bool]]) -> None:
        while not await disconnected():
            await asyncio.sleep(0.05)

    async def _collect(self) -> None:
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        carry: _Pending | None = None
        stopping = False
        while not stopping or carry is not None:
            first = carry if carry is not None else await queue.get()
            carry = None
            if first is None:
                break
            batch, cost = [first], first.cost
            deadline = loop.time() + self.max_wait
            while cost < self.batch_tokens:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        break
                if item is None:
                    stopping = True
                    break
                if cost + item.cost > self.batch_tokens:
                    carry = item
                    break
                batch.append(item)
                cost += item.cost
            await self._run(batch, loop)

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        self.queued_pairs -= sum(len(item.texts) for item in batch)
        self._gauge()
        live = [item for item in batch if not item.future.done()]
        if not live:
            return
        if self.metrics:
            self.metrics.batch_requests.observe(len(live))
            self.metrics.batch_pairs.observe(sum(len(item.texts) for item in live))
        outcomes = await loop.run_in_executor(self._executor, self._score, live)
        for item, outcome in zip(live, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    def _score(self, batch: list[_Pending]) -> list[PairScores | BaseException]:
        """Score the batch slice by slice; a failing slice is retried request by request so only the culprit
        fails; abandoned requests lose their remaining slices."""
        parts: dict[int, list[PairScores]] = {id(item): [] for item in batch}
        failed: dict[int, BaseException] = {}
        for chunks in self._slices(batch):
            chunks = [c for c in chunks if id(c[0]) not in failed and not c[0].abandoned.is_set()]
            if not chunks:
                continue
            try:
                scored = self._call([(item, start, stop) for item, start, stop in chunks])
            except Exception as exc:  # noqa: BLE001 - isolated below, never lost
                if self.metrics:
                    self.metrics.batch_failures.inc()
                if len({id(item) for item, _, _ in chunks}) == 1:
                    failed[id(chunks[0][0])] = exc
                    continue
                log.warning("batch of %d requests failed (%s); retrying each alone", len(chunks), type(exc).__name__)
                for chunk in chunks:
                    try:
                        parts[id(chunk[0])].append(self._call([chunk]))
                    except Exception as alone:  # noqa: BLE001 - becomes this request's error
                        failed[id(chunk[0])] = alone
                continue
            offset = 0
            for item, start, stop in chunks:
                parts[id(item)].append(scored.slice(offset, offset + stop - start))
                offset += stop - start
        outcomes: list[PairScores | BaseException] = []
        for item in batch:
            if id(item) in failed:
                error = ScoringFailed(type(failed[id(item)]).__name__)
                error.__cause__ = failed[id(item)]
                outcomes.append(error)
            elif item.abandoned.is_set() and sum(len(p.logits) for p in parts[id(item)]) < len(item.texts):
                outcomes.append(RequestTimedOut("abandoned before it was scored"))
            else:
                outcomes.append(PairScores.concat(parts[id(item)]))
        return outcomes

    def _slices(self, batch: list[_Pending]) -> list[list[tuple[_Pending, int, int]]]:
        """The batch's pairs as (request, start, stop) chunks, packed into slices of about `slice_tokens`."""
        slices: list[list[tuple[_Pending, int, int]]] = [[]]
        room = self.slice_tokens
        for item in batch:
            start = 0
            for i, cost in enumerate(item.costs):
                if cost > room and (slices[-1] or i > start):
                    if i > start:
                        slices[-1].append((item, start, i))
                        start = i
                    slices.append([])
                    room = self.slice_tokens
                room -= cost
            if start < len(item.texts):
                slices[-1].append((item, start, len(item.texts)))
        return [chunks for chunks in slices if chunks]

    def _call(self, chunks: list[tuple[_Pending, int, int]]) -> PairScores:
        scored = self.scorer([q for item, a, b in chunks for q in item.queries[a:b]],
                             [t for item, a, b in chunks for t in item.texts[a:b]],
                             [c for item, a, b in chunks for c in item.caps[a:b]])
        if self.metrics:
            self.metrics.tokens.inc(int(scored.tokens.sum()))
        return scored

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_pairs.set(self.queued_pairs)
