"""load_tests/receiver.py, the loadtest's webhook receiver, on a real socket: the engine's
own webhook client (aiohttp) and raw connections for what it must survive."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from hdrh.histogram import HdrHistogram

from load_tests.loadtest import PROBE_RULE_ID, PROBE_TYPE
from load_tests.receiver import WebhookReceiver


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[WebhookReceiver, int]]:
    recv = WebhookReceiver(HdrHistogram(1, 3_600_000_000, 3), PROBE_RULE_ID, PROBE_TYPE)
    port = _port()
    await recv.listen("127.0.0.1", port)
    try:
        yield recv, port
    finally:
        recv.close()


def _action(key: str, probe: bool, sent_at: float | None = None) -> bytes:
    return orjson.dumps(
        {
            "rule_id": PROBE_RULE_ID if probe else "abandoned-cart",
            "template": PROBE_TYPE if probe else "cart_reminder",
            "customer_id": "cus-1",
            "params": {"sent_at": sent_at} if probe else {"discount_pct": 10},
            "idempotency_key": key,
        }
    )


def _request(body: bytes, key: str = "k", method: bytes = b"POST") -> bytes:
    return (
        b"%s /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Idempotency-Key: %s\r\nContent-Length: %d\r\n\r\n%s"
        % (method, key.encode(), len(body), body)
    )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return int(head[9:12]), await reader.readexactly(length)


async def test_probe_latency_is_arrival_wall_clock_minus_sent_at(
    receiver: tuple[WebhookReceiver, int],
) -> None:
    recv, port = receiver
    url = f"http://127.0.0.1:{port}/hook"
    async with aiohttp.ClientSession() as session:
        # a probe before the measurement: the warm-up, not measured
        async with session.post(url, data=_action("w", True, time.time() * 1000)) as r:
            assert r.status == 200
        assert recv.warm.is_set()
        assert recv.hdr.get_total_count() == 0
        recv.restart(time.monotonic())
        assert len(recv.arrivals) == 0
        sent_at = time.time() * 1000 - 250  # sent 250 ms ago
        before = time.time() * 1000
        headers = {"Idempotency-Key": "p1"}
        async with session.post(url, data=_action("b1", True, sent_at), headers=headers) as r:
            assert r.status == 200
        after = time.time() * 1000
        # the engine's redelivery of the same action: counted, not measured again
        async with session.post(url, data=_action("b1", True, sent_at), headers=headers) as r:
            assert r.status == 200
        # no header: the body's idempotency_key is the key
        async with session.post(url, data=_action("b2", True, sent_at)) as r:
            assert r.status == 200
        async with session.post(url, data=_action("x", False)) as r:
            assert r.status == 200
    assert recv.actions == 5
    assert len(recv.arrivals) == 4
    assert recv.duplicates == 1
    assert recv.probe_keys == {"p1", "b2"}
    assert recv.hdr.get_total_count() == 2
    lat = recv.samples[0][1]
    assert before - sent_at <= lat <= after - sent_at
    assert abs(recv.hdr.get_min_value() / 1000 - min(s[1] for s in recv.samples)) < 1


async def test_request_split_across_reads(receiver: tuple[WebhookReceiver, int]) -> None:
    recv, port = receiver
    req = _request(_action("s", False))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    cuts = [0, 7, 40, len(req) - 10, len(req) - 1, len(req)]
    for a, b in itertools.pairwise(cuts):
        writer.write(req[a:b])
        await writer.drain()
        await asyncio.sleep(0.02)  # each its own read on the server
        assert recv.actions == (1 if b == len(req) else 0)
    assert await _read_response(reader) == (200, b"")
    assert recv.actions == 1
    writer.close()
    await writer.wait_closed()


async def test_pipelined_requests_answered_in_order(
    receiver: tuple[WebhookReceiver, int],
) -> None:
    recv, port = receiver
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        _request(_action("a", False), "a")
        + _request(b"[1, 2]", "b")  # not an object: 400, and the connection goes on
        + _request(_action("c", False), "c")
    )
    await writer.drain()
    statuses = [(await _read_response(reader))[0] for _ in range(3)]
    assert statuses == [200, 400, 200]
    assert recv.actions == 2
    assert recv.refused == 1
    writer.close()
    await writer.wait_closed()


async def test_chunked_request_body(receiver: tuple[WebhookReceiver, int]) -> None:
    recv, port = receiver
    body = _action("c", False)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    )
    await writer.drain()
    assert (await _read_response(reader))[0] == 200
    assert recv.actions == 1
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"GARBAGE\r\n\r\n", 400, "malformed request"),
        (b"POST /hook HTTP/1.1\r\nContent-Length: x1\r\n\r\n{}", 400, "malformed request"),
        (_request(b"not json"), 400, "JSON object"),
        (_request(b"", method=b"GET"), 405, "POST only"),
    ],
)
async def test_bad_request_gets_4xx_with_a_json_error(
    receiver: tuple[WebhookReceiver, int], request_bytes: bytes, status: int, error: str
) -> None:
    recv, port = receiver
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    await writer.drain()
    got, body = await _read_response(reader)
    assert got == status
    assert error in orjson.loads(body)["error"]
    assert recv.actions == 0
    if error == "malformed request":  # the stream cannot be trusted: closed
        assert await reader.read() == b""
    else:  # a well-framed request: the connection goes on
        writer.write(_request(_action("ok", False)))
        await writer.drain()
        assert (await _read_response(reader))[0] == 200
        assert recv.actions == 1
    writer.close()
    await writer.wait_closed()
