"""uvicorn with the limits a server facing untrusted clients needs, and a drain that answers instead of dying.

uvicorn's default protocol (httptools) accepts request heads of any size and waits forever for an incomplete
request. Here the h11 protocol caps the head at `max_header_bytes` (bigger: 400 and the connection closes), a
connection must deliver each whole request (head and body) within `read_timeout_s` of its start or of the
previous response (else 408 and close: slowloris-style senders cannot hold connections), idle keep-alive ends after
`keep_alive_s`, and beyond `max_connections` concurrent connections uvicorn answers 503.

On SIGTERM the batcher is told to drain: new work is refused at once (503 + Retry-After) and work still waiting a
second before `drain_seconds` runs out is answered 503 and dropped from scoring, so uvicorn's graceful shutdown
finds every response sent instead of cancelling requests mid-flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from crossrank.server.config import ServerConfig

log = logging.getLogger("crossrank.server")
DRAIN_MARGIN_S = 1.0


class BoundedH11Protocol(H11Protocol):
    """h11 with a deadline for receiving each whole request; `read_timeout_s` is set by `uvicorn_config`."""

    read_timeout_s = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()  # the whole request is in; answering it has no deadline here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()  # type: ignore[union-attr]
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return
        started = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        if started and (self.cycle is None or not self.cycle.response_started):  # silent connections just close
            body = json.dumps({"message": f"the request was not received within {self.read_timeout_s:g}s "
                                          "(read_timeout_s)"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
        log.warning("request read timed out", extra={"client": self.client and self.client[0]})
        self.transport.close()


def uvicorn_config(app: Any, config: ServerConfig, *, host: str, port: int, drain_seconds: float) -> uvicorn.Config:
    protocol = type("BoundedH11", (BoundedH11Protocol,), {"read_timeout_s": config.read_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, access_log=False, log_config=None,
                          h11_max_incomplete_event_size=config.max_header_bytes,
                          timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]
                          limit_concurrency=config.max_connections, timeout_graceful_shutdown=drain_seconds)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server that starts the batcher's drain when the shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, drain_seconds: float) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        batcher = getattr(self.config.app.state, "batcher", None)
        if not self.should_exit and batcher is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(batcher.drain, max(0.0, self.drain_seconds - DRAIN_MARGIN_S))
        super().handle_exit(sig, frame)


def serve_http(app: Any, config: ServerConfig, *, host: str, port: int, drain_seconds: float) -> None:
    DrainingServer(uvicorn_config(app, config, host=host, port=port, drain_seconds=drain_seconds),
                   drain_seconds).run()
