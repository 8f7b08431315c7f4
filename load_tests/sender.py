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
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

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

    def merge(self, other: SendResult) -> None:
        self.answers += other.answers
        self.acked += other.acked
        self.sent += other.sent
        self.lags += other.lags
        self.late += other.late


async def send_requests(
    url: str,
    headers: dict[str, str],
    timeline: Timeline,
    indices: range,
    start: float,
    connections: int,
    late_ms: float,
) -> SendResult:
    """Send ``timeline``'s requests at ``indices``, each at ``start + due``
    (``time.monotonic``), as its own task; returns once every one is answered."""
    from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector

    res = SendResult()
    late_s = late_ms / 1000
    tasks: set[asyncio.Task[None]] = set()
    async with ClientSession(
        connector=TCPConnector(limit=max(1, connections)), timeout=ClientTimeout(total=60)
    ) as session:

        async def post(due: float, body: bytes, n: int) -> None:
            t0 = time.monotonic()
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    status = r.status
                    await r.read()
            except (TimeoutError, ClientError, OSError):
                status = 0
            t1 = time.monotonic()
            res.answers.append((t0 - start, (t1 - t0) * 1000, status, n))
            if status == 202:
                res.acked.append((due - start, t1 - start))

        bodies, counts, dues = timeline.bodies, timeline.counts, timeline.dues
        for k in indices:
            due = start + dues[k]
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            lag = now - due
            res.lags.append(lag)
            if lag > late_s:
                res.late += 1
            wall = time.time()
            data = bodies[k].replace(_NOW, _iso(wall)).replace(_SENT, b"%.3f" % (wall * 1000))
            res.sent.append((now - start, counts[k]))
            task = asyncio.create_task(post(due, data, counts[k]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
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
    result_q.put((i, res.answers, res.acked, res.sent, res.lags, res.late))


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
            _, answers, acked, sent, lags, late = await loop.run_in_executor(
                None, lambda: self._results.get(timeout=timeout)
            )
            merged.merge(SendResult(answers, acked, sent, lags, late))
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
