"""Minimal HTTP/1.1 over asyncio protocols, for the load test's hot paths.

The load test sends hundreds to thousands of requests a second and receives as many
webhook calls, from one core it must not take from the engine. aiohttp costs ~300 us of
CPU a request on the client side and ~60 on the server side; these classes cost a few
tens, because they do only what these exchanges need. Messages are parsed by httptools
(llhttp, the parser of Node.js and uvicorn): framing by ``Content-Length``, chunked
``Transfer-Encoding`` or the connection's close, keep-alive, malformed input. What is
left here is connection handling.

- :class:`ClientPool`: POSTs prepared request bytes over at most ``limit`` keep-alive
  connections, one request in flight per connection (no pipelining, so a slow answer
  never holds another's latency); requests wait in a FIFO for a free connection. Each
  request's outcome goes to a callback once: the final status (``1xx`` interim answers
  are skipped), or 0 for no answer (connection refused, lost or reset before the whole
  answer, no answer within ``timeout``, a malformed answer). Bodies are read and
  dropped. An answer that does not keep the connection alive (``Connection: close``,
  HTTP/1.0) closes it; the next request opens another. ``Retry-After`` is not acted on:
  the load test is open-loop and counts a ``429`` as refused.
- :class:`ServerConnection`: the server side: hands each request (method, headers,
  body; chunked bodies are joined) to a handler that returns the whole response bytes,
  answers pipelined requests in order, answers ``100 Continue`` when asked. A request it
  cannot parse gets ``400`` (``413`` / ``431`` past the size limits) with a JSON body,
  and the connection is closed.

Neither is a general HTTP implementation: no TLS, no redirects, no streamed bodies.
Tested in tests/load_tests/test_http1.py against aiohttp servers and clients.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import httptools
import orjson

__all__ = [
    "AnswerCallback",
    "ClientPool",
    "Handler",
    "Headers",
    "ServerConnection",
    "header",
    "response",
]

logger = logging.getLogger(__name__)

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024

Headers = list[tuple[bytes, bytes]]
"""A request's header lines as received: (name, value), names in their own case."""

Handler = Callable[[bytes, Headers, bytes], bytes]
"""(method, headers, body) -> the whole response bytes."""


class AnswerCallback(Protocol):
    """Called once per request: ``ctx`` as submitted, the status (0: no answer) and the
    ``time.monotonic()`` at which the answer (or the failure) was seen."""

    def __call__(self, ctx: Any, status: int, done: float) -> None: ...


def header(headers: Headers, name: bytes) -> bytes | None:
    """The value of the first header ``name`` (lower case) in ``headers``; None if
    absent."""
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def response(status: int, reason: bytes, body: bytes = b"", extra: bytes = b"") -> bytes:
    """A complete response; ``extra`` is more header lines, each ending with CRLF."""
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n"
        % (status, reason, extra, len(body))
        + body
    )


# -- client ------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One client connection; the httptools callbacks are its ``on_*`` methods."""

    __slots__ = (
        "complete",
        "ctx",
        "extra",
        "framed",
        "keep_alive",
        "parser",
        "pool",
        "sent_at",
        "status",
        "transport",
    )

    def __init__(self, pool: ClientPool) -> None:
        self.pool = pool
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.ctx: Any = None  # the request in flight
        self.sent_at = 0.0
        self.status = 0  # of the answer being read, once its head is complete
        self.framed = False  # the answer has a Content-Length or Transfer-Encoding
        self.complete = False
        self.keep_alive = True
        self.extra = False  # bytes after the answer: the server is out of step

    def send(self, ctx: Any, data: bytes, submitted: float) -> None:
        self.ctx = ctx
        self.sent_at = submitted  # the timeout counts from the submit, as aiohttp's total
        self.status = 0
        self.framed = self.complete = False
        self.transport.write(data)

    # asyncio callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.pool._connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        ctx, self.ctx = self.ctx, None
        self.transport = None
        if ctx is not None and self.status >= 200 and not self.framed:
            # a body framed by the close: the close completes it
            self.pool._done(self, ctx, self.status, closing=True)
            ctx = None
        self.pool._lost(self, ctx)

    def data_received(self, data: bytes) -> None:
        if self.ctx is None:  # nothing asked: a server talking out of turn
            self.transport.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abort()  # connection_lost answers 0
            return
        if self.complete:
            ctx, self.ctx = self.ctx, None
            closing = not self.keep_alive or self.extra
            self.pool._done(self, ctx, self.status, closing=closing)
            if self.extra and self.transport is not None:
                self.transport.abort()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-length" or n == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        if self.status < 200:  # an interim answer (100 Continue): the real one follows
            self.status = 0
            self.framed = False
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


class ClientPool:
    """Keep-alive connections to one ``host:port``; see the module docstring.

    :meth:`submit` never blocks; every submitted request gets exactly one call of
    ``on_answer``. :meth:`close` fails what is still waiting or in flight (status 0).
    Must be created and used inside a running event loop."""

    def __init__(
        self, host: str, port: int, limit: int, on_answer: AnswerCallback, timeout: float = 60.0
    ) -> None:
        self.host = host
        self.port = port
        self.limit = max(1, limit)
        self.on_answer = on_answer
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.opening = 0
        self.waiting: collections.deque[tuple[Any, bytes, float]] = collections.deque()
        self.connections_opened = 0
        self._closed = False
        self._reaper = self.loop.create_task(self._reap())

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered (waiting or on a connection)."""
        return len(self.waiting) + len(self.busy)

    def submit(self, ctx: Any, data: bytes) -> None:
        """Send ``data`` (a whole request) on a free connection, or queue it."""
        if self._closed:
            self.on_answer(ctx, 0, time.monotonic())
            return
        if self.idle:
            conn = self.idle.pop()
            self.busy.add(conn)
            conn.send(ctx, data, time.monotonic())
            return
        self.waiting.append((ctx, data, time.monotonic()))
        if len(self.busy) + self.opening < self.limit and self.opening < len(self.waiting):
            self._open()

    def _open(self) -> None:
        self.opening += 1
        self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: _Conn(self), self.host, self.port),
                self.timeout,
            )
        except (OSError, TimeoutError):
            self.opening -= 1
            if self.waiting:  # the request that asked for the connection gets the error
                ctx, _, _ = self.waiting.popleft()
                self.on_answer(ctx, 0, time.monotonic())
            if self.waiting and not self._closed and len(self.busy) + self.opening < self.limit:
                self._open()

    def _connected(self, conn: _Conn) -> None:
        self.opening -= 1
        self.connections_opened += 1
        if self._closed:
            conn.transport.close()
            return
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        if self.waiting:
            ctx, data, submitted = self.waiting.popleft()
            self.busy.add(conn)
            conn.send(ctx, data, submitted)
        else:
            self.busy.discard(conn)
            self.idle.append(conn)

    def _done(self, conn: _Conn, ctx: Any, status: int, closing: bool) -> None:
        self.on_answer(ctx, status, time.monotonic())
        if closing or conn.transport is None or self._closed:
            self.busy.discard(conn)
            if conn.transport is not None:
                conn.transport.close()
            return
        self._next(conn)

    def _lost(self, conn: _Conn, ctx: Any) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if ctx is not None:
            self.on_answer(ctx, 0, time.monotonic())
        if self.waiting and not self._closed and len(self.busy) + self.opening < self.limit:
            self._open()

    async def _reap(self) -> None:
        """Every 0.5 s: abort connections whose request was submitted more than
        ``timeout`` ago, fail queued requests that waited that long."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for conn in [c for c in self.busy if now - c.sent_at > self.timeout]:
                if conn.transport is not None:
                    conn.transport.abort()  # connection_lost answers 0
            while self.waiting and now - self.waiting[0][2] > self.timeout:
                ctx, _, _ = self.waiting.popleft()
                self.on_answer(ctx, 0, now)

    async def drain(self) -> None:
        """Wait until every submitted request is answered."""
        while self.in_flight or self.opening:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Close every connection; requests not answered yet get status 0 (those in
        flight once their connection's loss is seen, on a later loop iteration)."""
        self._closed = True
        self._reaper.cancel()
        now = time.monotonic()
        while self.waiting:
            ctx, _, _ = self.waiting.popleft()
            self.on_answer(ctx, 0, now)
        for conn in [*self.idle, *self.busy]:
            if conn.transport is not None:
                conn.transport.abort()
        self.idle.clear()


# -- server ------------------------------------------------------------------------------

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _refusal(status: int, reason: bytes, error: str) -> bytes:
    body = orjson.dumps({"error": error})
    return response(status, reason, body, b"Connection: close\r\n")


class _TooLarge(Exception):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer


class ServerConnection(asyncio.Protocol):
    """One server-side connection; ``handler`` answers each request (see the module
    docstring). ``registry``, if given, holds the open connections (to close them)."""

    __slots__ = (
        "body",
        "body_size",
        "closing",
        "handler",
        "head_size",
        "headers",
        "out",
        "parser",
        "registry",
        "transport",
    )

    def __init__(self, handler: Handler, registry: set[ServerConnection] | None = None) -> None:
        self.handler = handler
        self.registry = registry
        self.transport: Any = None
        self.parser = httptools.HttpRequestParser(self)
        self.headers: Headers = []
        self.body: list[bytes] = []
        self.head_size = 0
        self.body_size = 0
        self.out: list[bytes] = []
        self.closing = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.registry is not None:
            self.registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.registry is not None:
            self.registry.discard(self)

    def close(self) -> None:
        """Close the connection (what was written is still sent)."""
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None or self.closing:  # refused a request: read no more
            return
        out = self.out
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, _TooLarge):
                out.append(cause.answer)
            else:
                logger.error("load test HTTP handler failed", exc_info=cause)
                out.append(_refusal(500, b"Internal Server Error", "the handler failed"))
            self.closing = True
        except httptools.HttpParserUpgrade:
            out.append(_refusal(400, b"Bad Request", "upgrade: not supported"))
            self.closing = True
        except httptools.HttpParserError as err:
            if not self.closing:  # (bytes after a request that closed the connection)
                out.append(_refusal(400, b"Bad Request", f"malformed request: {err}"))
                self.closing = True
        if out:
            self.transport.write(b"".join(out))
            out.clear()
        if self.closing:
            self.transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        self.headers = []
        self.body = []
        self.head_size = self.body_size = 0

    def on_url(self, url: bytes) -> None:
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value))
        self.headers.append((name, value))

    def _grow_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > _MAX_HEAD:
            raise _TooLarge(
                _refusal(431, b"Request Header Fields Too Large", "headers: over 64 KiB")
            )

    def on_headers_complete(self) -> None:
        expect = header(self.headers, b"expect")
        if expect is not None and expect.lower() == b"100-continue":
            self.out.append(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > _MAX_BODY:
            raise _TooLarge(_refusal(413, b"Content Too Large", "body: over 64 MiB"))
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.out.append(self.handler(self.parser.get_method(), self.headers, body))
        if not self.parser.should_keep_alive():
            self.closing = True
