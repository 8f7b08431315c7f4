"""load_tests/http1.py's client pool against real servers: aiohttp apps for what a
well-behaved server does, raw asyncio servers for what a broken one does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from aiohttp import web

from load_tests.http1 import ClientPool

Answers = list[tuple[Any, int]]
RawServe = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _post(port: int, body: bytes = b'{"n":1}') -> bytes:
    return (
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )


@asynccontextmanager
async def _app(routes: web.RouteTableDef) -> AsyncIterator[int]:
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@asynccontextmanager
async def _raw(serve: RawServe) -> AsyncIterator[int]:
    """A server running ``serve`` per connection; each connection is closed (and its
    handler awaited) on the way out."""
    handlers: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve(reader, writer)
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()

    def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(run(reader, writer))
        handlers.add(task)

    server = await asyncio.start_server(connected, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _pool(port: int, limit: int = 1, timeout: float = 10.0) -> tuple[ClientPool, Answers]:
    answers: Answers = []

    def on_answer(ctx: Any, status: int, done: float) -> None:
        answers.append((ctx, status))

    return ClientPool("127.0.0.1", port, limit, on_answer, timeout), answers


async def _one(pool: ClientPool, port: int, ctx: Any = None) -> None:
    pool.submit(ctx, _post(port))
    await pool.drain()


async def _two_in_a_row(port: int, timeout: float = 10.0) -> tuple[ClientPool, Answers]:
    """Requests 1 then 2 (the second after the first's answer) on a one-connection pool."""
    pool, answers = _pool(port, timeout=timeout)
    await _one(pool, port, 1)
    await _one(pool, port, 2)
    pool.close()
    return pool, answers


async def test_keep_alive_reuses_one_connection() -> None:
    peers: set[Any] = set()
    routes = web.RouteTableDef()

    @routes.post("/v1/events")
    async def events(request: web.Request) -> web.Response:
        assert await request.json() == {"n": 1}
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response({"accepted": 1}, status=202)

    async with _app(routes) as port:
        pool, answers = _pool(port, limit=4)
        for k in range(5):  # one after the other: the idle connection is reused
            await _one(pool, port, k)
        pool.close()
    assert answers == [(k, 202) for k in range(5)]
    assert pool.connections_opened == 1
    assert len(peers) == 1


async def test_concurrent_requests_stay_within_the_limit() -> None:
    release = asyncio.Event()
    peers: set[Any] = set()
    routes = web.RouteTableDef()

    @routes.post("/v1/events")
    async def events(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        await release.wait()
        return web.Response(status=202)

    async with _app(routes) as port:
        pool, answers = _pool(port, limit=2)
        for k in range(6):
            pool.submit(k, _post(port))
        while len(peers) < 2:
            await asyncio.sleep(0.01)
        assert pool.in_flight == 6
        assert not answers
        release.set()
        await pool.drain()
        pool.close()
    assert sorted(answers) == [(k, 202) for k in range(6)]
    assert pool.connections_opened == 2
    assert len(peers) == 2


async def test_429_with_retry_after_is_an_answer_and_keeps_the_connection() -> None:
    routes = web.RouteTableDef()
    calls = 0

    @routes.post("/v1/events")
    async def events(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.json_response(
                {"error": "backpressure"}, status=429, headers={"Retry-After": "1"}
            )
        return web.Response(status=202)

    async with _app(routes) as port:
        pool, answers = _pool(port)
        await _one(pool, port, "refused")
        await _one(pool, port, "accepted")  # open-loop: sent at once, not after 1 s
        pool.close()
    assert answers == [("refused", 429), ("accepted", 202)]
    assert pool.connections_opened == 1


async def test_connection_close_answer_opens_a_new_connection() -> None:
    routes = web.RouteTableDef()

    @routes.post("/v1/events")
    async def events(request: web.Request) -> web.Response:
        resp = web.Response(status=202, text="{}")
        resp.force_close()  # "Connection: close", then aiohttp closes
        return resp

    async with _app(routes) as port:
        pool, answers = await _two_in_a_row(port)
    assert answers == [(1, 202), (2, 202)]
    assert pool.connections_opened == 2


async def test_connection_close_answer_is_not_reused_even_if_the_socket_stays_open() -> None:
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()  # keeps the socket open, reads nothing more as a request

    async with _raw(serve) as port:
        _, answers = await _two_in_a_row(port, timeout=2.0)
    assert answers == [(1, 202), (2, 202)]
    assert connections == 2


async def test_chunked_answer_is_read_whole_and_the_connection_kept() -> None:
    routes = web.RouteTableDef()

    @routes.post("/v1/events")
    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=202)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"accepted"', b":", b"1}"):
            await resp.write(part)
            await asyncio.sleep(0.01)  # separate reads on the client side
        await resp.write_eof()
        return resp

    async with _app(routes) as port:
        pool, answers = await _two_in_a_row(port)
    assert answers == [(1, 202), (2, 202)]
    assert pool.connections_opened == 1


async def test_server_closing_without_an_answer_gives_0_then_recovers() -> None:
    seen = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        while True:
            try:
                await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            seen += 1
            if seen == 1:  # the first request: closed unanswered
                break
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    async with _raw(serve) as port:
        pool, answers = _pool(port)
        await _one(pool, port, "lost")
        await _one(pool, port, "next")
        pool.close()
    assert answers == [("lost", 0), ("next", 202)]
    assert pool.connections_opened == 2


async def test_truncated_body_gives_0_and_close_framed_body_gives_the_status() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await _read_request(reader)
        if b'"truncated"' in req:  # 10 of the 100 bytes announced, then the close
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 100\r\n\r\n0123456789")
        else:  # no length, no chunks: the body ends with the connection
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        writer.close()

    async with _raw(serve) as port:
        pool, answers = _pool(port)
        pool.submit("truncated", _post(port, b'"truncated"'))
        await pool.drain()
        pool.submit("close-framed", _post(port, b'"close"'))
        await pool.drain()
        pool.close()
    assert answers == [("truncated", 0), ("close-framed", 200)]


async def test_malformed_answer_gives_0() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 2x2 Accepted\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()  # the client hangs up
        writer.close()

    async with _raw(serve) as port:
        pool, answers = _pool(port)
        await _one(pool, port, "bad")
        pool.close()
    assert answers == [("bad", 0)]


async def test_interim_100_continue_is_skipped() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read()
        writer.close()

    async with _raw(serve) as port:
        pool, answers = _pool(port)
        await _one(pool, port, 1)
        pool.close()
    assert answers == [(1, 202)]


async def test_no_answer_within_the_timeout_gives_0() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # never answers; reads until the client gives up
        writer.close()

    async with _raw(serve) as port:
        pool, answers = _pool(port, timeout=0.2)
        await _one(pool, port, "slow")
        pool.close()
    assert answers == [("slow", 0)]


async def test_connection_refused_gives_0_for_each_request() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()  # nothing listens on the port now
    pool, answers = _pool(port, limit=2)
    for k in range(3):
        pool.submit(k, _post(port))
    await pool.drain()
    pool.close()
    assert sorted(answers) == [(0, 0), (1, 0), (2, 0)]
    assert pool.connections_opened == 0


async def test_close_fails_what_is_still_queued() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async with _raw(serve) as port:
        pool, answers = _pool(port, limit=1)
        for k in range(3):
            pool.submit(k, _post(port))
        while pool.connections_opened == 0:
            await asyncio.sleep(0.01)
        pool.close()
        await asyncio.sleep(0.05)  # the aborted connection's loss is seen
        pool.submit(3, _post(port))  # after close: failed at once
    assert sorted(answers) == [(0, 0), (1, 0), (2, 0), (3, 0)]
