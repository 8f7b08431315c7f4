"""The open-loop sender of ``nudge loadtest``, in this process or in child processes.

:func:`send_requests` posts the timeline's requests on their schedule (never waiting for
replies) and records every answer. :class:`SenderPool` forks ``n`` processes *before*
any event loop runs (a fork inherits the timeline without copying it through a pipe),
each sending every ``n``-th request against the same start instant (``time.monotonic``
is system-wide on Linux), so the generator's CPU is not the engine's: pin them with
``taskset`` (docs in load_tests/loadtest.py). Results come back as plain lists and are
merged by the parent.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from load_tests.http1 import ClientPool

__all__ = ["SendResult", "SenderPool", "Timeline", "send_requests"]

_NOW = b'"@@LOADTEST_NOW@@"'
_SENT = b'"@@LOADTEST_SENT_AT@@"'


def _iso(epoch_s: float) -> bytes:
    ms = int(epoch_s * 1000)
    t = time.gmtime(ms // 1000)
    return (time.strftime('"%Y-%m-%dT%H:%M:%S', t) + f'.{ms % 1000:03d}Z"').encode()


@dataclass
class Timeline:
    """Request bodies (send-time placeholders), their event counts and due offsets (s
    after the start)."""

    bodies: list[bytes]
    counts: list[int]
    dues: list[float]


@dataclass
class SendResult:
    """What one sender saw. Times are seconds since the shared start."""

    # (start, latency ms, status (0: no answer), events) of every request
    answers: list[tuple[float, float, int, int]] = field(default_factory=list)
    # (due, answered) of each 202, for the latency from the schedule
    acked: list[tuple[float, float]] = field(default_factory=list)
    sent: list[tuple[float, int]] = field(default_factory=list)  # (sent at, events)
    lags: list[float] = field(default_factory=list)  # send time minus due time
    late: int = 0
    connections: int = 0  # connections opened
    cpu_s: float = 0.0  # CPU seconds of the sending process(es) while sending

    def merge(self, other: SendResult) -> None:
        self.answers += other.answers
        self.acked += other.acked
        self.sent += other.sent
        self.lags += other.lags
        self.late += other.late
        self.connections += other.connections
        self.cpu_s += other.cpu_s


def _request_prefix(url: str, headers: dict[str, str]) -> tuple[str, int, bytes]:
    """(host, port, the request's bytes up to the Content-Length value) for POSTs to
    ``url`` (http only)."""
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"not an http:// URL: {url!r}")
    port = u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {u.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    return u.hostname, port, ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")


async def send_requests(
    url: str,
    headers: dict[str, str],
    timeline: Timeline,
    indices: range,
    start: float,
    connections: int,
    late_ms: float,
    timeout: float = 60.0,
) -> SendResult:
    """Send ``timeline``'s requests at ``indices``, each at ``start + due``
    (``time.monotonic``), over at most ``connections`` keep-alive connections (a request
    finding none free waits for one; that wait is part of its latency); returns once
    every one is answered or has failed (no answer within ``timeout`` s: status 0).

    Every request is stamped when it is handed to the connection pool: each event's
    ``timestamp`` and the probe's ``sent_at`` are that instant (wall clock), so
    event-to-action latency counts from the actual send, not the schedule."""
    res = SendResult()
    late_s = late_ms / 1000
    host, port, prefix = _request_prefix(url, headers)
    answers, acked = res.answers, res.acked

    def on_answer(ctx: tuple[float, float, int], status: int, done: float) -> None:
        t0, due, n = ctx
        answers.append((t0 - start, (done - t0) * 1000, status, n))
        if status == 202:
            acked.append((due - start, done - start))

    cpu0 = time.process_time()
    pool = ClientPool(host, port, connections, on_answer, timeout)
    bodies, counts, dues = timeline.bodies, timeline.counts, timeline.dues
    sent, lags = res.sent, res.lags
    monotonic, wall_clock = time.monotonic, time.time
    try:
        for k in indices:
            due = start + dues[k]
            now = monotonic()
            while due > now:  # whole milliseconds: the loop's timers round to 1 ms, and
                # a sleep rounded down to 0 would spin until `due`
                await asyncio.sleep(math.ceil((due - now) * 1000) / 1000)
                now = monotonic()
            lag = now - due
            lags.append(lag)
            if lag > late_s:
                res.late += 1
            wall = wall_clock()
            body = bodies[k].replace(_NOW, _iso(wall)).replace(_SENT, b"%.3f" % (wall * 1000))
            n = counts[k]
            sent.append((now - start, n))
            pool.submit((now, due, n), b"%s%d\r\n\r\n%s" % (prefix, len(body), body))
        await pool.drain()
    finally:
        pool.close()
    res.connections = pool.connections_opened
    res.cpu_s = time.process_time() - cpu0
    return res


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _child(
    i: int,
    n: int,
    url: str,
    headers: dict[str, str],
    timeline: Timeline,
    connections: int,
    late_ms: float,
    start_q: Any,
    result_q: Any,
) -> None:
    start = start_q.get()
    if start is None:  # cancelled before the start
        return
    indices = range(i, len(timeline.bodies), n)
    res = _run_loop(send_requests(url, headers, timeline, indices, start, connections, late_ms))
    result_q.put(
        (i, res.answers, res.acked, res.sent, res.lags, res.late, res.connections, res.cpu_s)
    )


class SenderPool:
    """``n`` forked sender processes, idle until :meth:`start`; create it before any
    event loop runs in this process."""

    def __init__(
        self,
        n: int,
        url: str,
        headers: dict[str, str],
        timeline: Timeline,
        connections: int,
        late_ms: float,
    ) -> None:
        ctx = mp.get_context("fork")
        self._start_qs = [ctx.SimpleQueue() for _ in range(n)]
        self._results: Any = ctx.Queue()
        per = max(1, connections // n)
        self._procs = [
            ctx.Process(
                target=_child,
                args=(i, n, url, headers, timeline, per, late_ms, q, self._results),
                name=f"loadtest-sender-{i}",
                daemon=True,
            )
            for i, q in enumerate(self._start_qs)
        ]
        for p in self._procs:
            p.start()

    def start(self, at: float) -> None:
        """Every sender begins its schedule at ``at`` (``time.monotonic``)."""
        for q in self._start_qs:
            q.put(at)

    async def results(self, timeout: float) -> SendResult:
        """Wait for every sender's result (off the event loop; at most ``timeout`` s
        each) and merge them."""
        loop = asyncio.get_running_loop()
        merged = SendResult()
        for _ in self._procs:
            _, *fields = await loop.run_in_executor(
                None, lambda: self._results.get(timeout=timeout)
            )
            merged.merge(SendResult(*fields))
        for p in self._procs:
            p.join(timeout=10)
        return merged

    def close(self) -> None:
        """Stop senders that never started or did not finish."""
        for q, p in zip(self._start_qs, self._procs, strict=True):
            if p.is_alive():
                q.put(None)
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.terminate()
