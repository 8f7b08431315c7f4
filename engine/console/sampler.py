"""A small in-process ring of the runtime's counters for the overview's rates and charts.

Every ``every_s`` seconds (10 s) the sampler reads the events accepted, the actions
delivered and the segment sizes from :class:`~engine.metrics.Metrics` and the backend, and
keeps the last 24 h (8,640 samples, a few hundred kB). Rates are deltas between samples
over wall time; the ring starts empty at each start (Prometheus keeps the long history).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from engine.metrics import Metrics

__all__ = ["RING_S", "Sample", "Sampler", "counter_total", "labelled"]

RING_S = 24 * 3600
_FORWARD = "_forward"  # identity forwards (engine/embedded/outbox.py): not actions


def labelled(metric: Any) -> dict[tuple[str, ...], float]:
    """Label values -> value of a counter or gauge (the ``_total`` samples of a counter)."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[tuple(s.labels.values())] = s.value
    return out


def counter_total(metric: Any) -> float:
    return sum(labelled(metric).values())


def _actions_delivered(metrics: Metrics) -> float:
    return sum(
        v for (channel, outcome), v in labelled(metrics.actions).items()
        if outcome == "delivered" and channel != _FORWARD
    )  # fmt: skip


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the epoch
    events: float  # events accepted since start
    actions: float  # actions delivered since start
    segments: dict[str, int] = field(default_factory=dict)


class Sampler:
    """The ring; :meth:`take` reads the counters now (the loop calls it every ``every_s``)."""

    def __init__(
        self,
        metrics: Metrics,
        backend: Any,
        every_s: float = 10.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.backend = backend
        self.every_s = every_s
        self.now = now
        self.ring: deque[Sample] = deque(maxlen=int(RING_S / every_s))

    def current(self) -> Sample:
        sizes: dict[str, int] = {}
        source = getattr(self.backend, "segment_sizes", None)
        index = getattr(self.backend, "segment_index", None)
        try:
            if callable(source):
                sizes = dict(source())
            elif index is not None and hasattr(index, "sizes"):
                sizes = dict(index.sizes())
        except Exception:  # a backend starting or stopping: no sizes this time
            sizes = {}
        return Sample(
            self.now(),
            counter_total(self.metrics.events_accepted),
            _actions_delivered(self.metrics),
            sizes,
        )

    def take(self) -> Sample:
        s = self.current()
        self.ring.append(s)
        return s

    def rates_now(self, window_s: float = 60.0) -> tuple[float, float] | None:
        """(events/s, actions/s) over the last ``window_s`` (or since the oldest sample
        within it); None before the first sample."""
        if not self.ring:
            return None
        cur = self.current()
        base = self.ring[0]
        for s in reversed(self.ring):
            base = s
            if cur.at - s.at >= window_s:
                break
        dt = cur.at - base.at
        if dt <= 0:
            return None
        return (cur.events - base.events) / dt, (cur.actions - base.actions) / dt

    def series(self) -> dict[str, list[float]]:
        """Per-interval rates over the ring: ``{"at", "events", "actions"}`` (per second)."""
        at: list[float] = []
        ev: list[float] = []
        ac: list[float] = []
        prev = None
        for s in self.ring:
            if prev is not None and s.at > prev.at:
                dt = s.at - prev.at
                at.append(round(s.at))
                ev.append(max(0.0, (s.events - prev.events) / dt))
                ac.append(max(0.0, (s.actions - prev.actions) / dt))
            prev = s
        return {"at": at, "events": ev, "actions": ac}

    def segment_history(self, segment: str) -> list[int]:
        return [s.segments[segment] for s in self.ring if segment in s.segments]

    async def run(self) -> None:
        while True:
            self.take()
            await asyncio.sleep(self.every_s)

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        """An ``app.cleanup_ctx`` entry: runs :meth:`run` while the app serves."""
        task = asyncio.create_task(self.run(), name="console-sampler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
