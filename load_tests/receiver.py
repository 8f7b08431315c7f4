"""The webhook receiver of ``nudge loadtest``: the engine under test delivers every action
here; probe actions give the event-to-action latency.

Every POST (any path) whose body is a JSON object is an action: its arrival time is kept
(actions per second) and it is answered ``200`` at once. A probe action (``rule_id`` the
probe rule's or ``template`` the probe type) carries ``params.sent_at``, the probe
event's send time in epoch ms, and its latency is the wall clock on arrival minus that,
recorded while :attr:`WebhookReceiver.measuring` is set. A probe whose
``Idempotency-Key`` (header, else the body's ``idempotency_key``) was measured already is
a redelivery: counted, not measured again. A body that is not a JSON object gets ``400``
and is not counted; other methods ``405``. These are the rules of the aiohttp receiver
it replaces, so the report's figures mean what they did.

It runs on :mod:`load_tests.http1` rather than aiohttp: at 20,000 actions a second an
aiohttp server would need more than the load test's whole core (about 60 us of CPU a
request, against ~16 here; ``python -m load_tests.bench_sender --receiver raw`` and
``--receiver aiohttp``).
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any

import orjson

from load_tests.http1 import Headers, ServerConnection, header, response

__all__ = ["WebhookReceiver"]

_OK = response(200, b"OK")
_BAD = response(400, b"Bad Request", b'{"error":"the body must be a JSON object"}')
_METHOD = response(405, b"Method Not Allowed", b'{"error":"POST only"}', b"Allow: POST\r\n")


class WebhookReceiver:
    """Counts actions and measures probes. ``hdr`` (an HdrHistogram, microseconds)
    receives each measured probe latency while :attr:`measuring` is set; :attr:`warm`
    is set by the first probe action seen, measured or not."""

    def __init__(self, hdr: Any, probe_rule_id: str, probe_type: str) -> None:
        self.hdr = hdr
        self.rule_id = probe_rule_id
        self.probe_type = probe_type
        self.start = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (s since start, latency ms)
        self.arrivals = array("d")  # s since start of every action
        self.probe_keys: set[str] = set()
        self.actions = 0
        self.duplicates = 0
        self.refused = 0  # bodies answered 400 / 405
        self.warm = asyncio.Event()
        self.measuring = False
        self._server: asyncio.Server | None = None
        self._conns: set[ServerConnection] = set()

    def restart(self, start: float) -> None:
        """Measure from ``start`` (``time.monotonic``): arrivals so far are forgotten."""
        self.start = start
        del self.arrivals[:]
        self.measuring = True

    async def listen(self, host: str, port: int) -> None:
        """Serve on ``host:port`` until :meth:`close`."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerConnection(self.handle, self._conns), host, port, backlog=1024
        )

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._conns):
            conn.close()

    def handle(self, method: bytes, headers: Headers, body: bytes) -> bytes:
        """One request: see the module docstring."""
        if method != b"POST":
            self.refused += 1
            return _METHOD
        now_ms = time.time() * 1000
        t = time.monotonic() - self.start
        try:
            action = orjson.loads(body)
        except orjson.JSONDecodeError:
            self.refused += 1
            return _BAD
        if not isinstance(action, dict):
            self.refused += 1
            return _BAD
        self.actions += 1
        self.arrivals.append(t)
        if action.get("rule_id") == self.rule_id or action.get("template") == self.probe_type:
            self._probe(headers, action, t, now_ms)
        return _OK

    def _probe(self, headers: Headers, action: dict[str, Any], t: float, now_ms: float) -> None:
        self.warm.set()
        raw = header(headers, b"idempotency-key")
        key = raw.decode("latin-1") if raw else str(action.get("idempotency_key"))
        if key in self.probe_keys:
            self.duplicates += 1
            return
        params = action.get("params")
        sent = params.get("sent_at") if isinstance(params, dict) else None
        try:
            sent_ms = float(sent) if isinstance(sent, int | float | str) else None
        except ValueError:
            sent_ms = None
        if sent_ms is not None and self.measuring:
            self.probe_keys.add(key)
            lat = max(0.0, now_ms - sent_ms)
            self.hdr.record_value(max(1, round(lat * 1000)))
            self.samples.append((t, lat))
