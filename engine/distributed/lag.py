"""Consumer lag of a worker's owned ``events`` partitions, in events and in seconds.

In events: the broker's high watermark (as of the consumer's last fetch) minus the next
offset to process. In seconds (``nudge_worker_lag_seconds{partition}``): **the age of the
oldest accepted event not yet processed**, bounded from above. Every ``events`` record
carries its acceptance time (the ingest stamps it), and the oldest unprocessed one was
accepted after both

- the last record the worker processed on that partition (its timestamp), and
- the last time the partition was seen caught up (lag 0 at a scrape),

so the lag in seconds is ``now - max(those two)`` while the partition has lag, else 0.
With a steady backlog the first is the oldest unprocessed event's neighbour, so the bound
is tight; when a worker stalls it grows by one second per second, which is what an alert
wants. After an idle partition receives a burst, it overstates by at most the time since
the previous scrape. A partition this process has seen neither processed nor caught up
(just assigned with a backlog) counts from the moment it was first seen.

The alternative, lag divided by the measured processing rate, needs a rate, and a stalled
worker has none; this one needs nothing but the timestamps (docs/operations.md,
"Overload").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["LagSeconds", "consumer_lag", "partition_lag"]


def partition_lag(worker_app: Any) -> dict[int, int] | None:
    """Unprocessed events of each owned ``events`` partition (None before the engine
    runs: a delivery-only worker has no engine). A partition whose high watermark the
    consumer has not fetched yet is left out."""
    from faust.types import TP

    from engine.distributed.faust_adapter import committed_offsets

    engine = worker_app.engine
    if engine is None:
        return None
    consumer = worker_app.app.consumer
    committed = committed_offsets(consumer)
    topic = worker_app.cfg.events_topic
    out: dict[int, int] = {}
    for index, part in list(engine.parts.items()):
        tp = TP(topic, index)
        try:
            hw = consumer.highwater(tp)
        except Exception:
            hw = None
        if hw is None:
            continue
        done = max(part.position, committed.get(tp) or 0)
        out[index] = max(0, int(hw) - done)
    return out


def consumer_lag(worker_app: Any) -> int | None:
    """Events of the worker's owned partitions not yet processed (``nudge_queue_depth``)."""
    lags = partition_lag(worker_app)
    return None if lags is None else sum(lags.values())


class LagSeconds:
    """Age of each partition's oldest unprocessed event, from the lag in events and the
    timestamps (ms) of the last records processed (``processed_at``: partition -> ms,
    which the worker's engine keeps up to date)."""

    def __init__(
        self,
        lags: Callable[[], dict[int, int] | None],
        processed_at: Callable[[], dict[int, int]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._lags = lags
        self._processed_at = processed_at
        self._wall = wall
        self._caught_up: dict[int, float] = {}  # partition -> wall seconds, lag 0 seen

    def __call__(self) -> dict[int, float] | None:
        lags = self._lags()
        if lags is None:
            return None
        now = self._wall()
        seen = self._processed_at()
        out: dict[int, float] = {}
        for p, lag in lags.items():
            if lag <= 0:
                self._caught_up[p] = now
                out[p] = 0.0
                continue
            since = self._caught_up.setdefault(p, now)  # first seen with a backlog
            last = seen.get(p)
            if last is not None:
                since = max(since, last / 1000)
            out[p] = max(0.0, now - since)
        for p in set(self._caught_up) - lags.keys():  # revoked: forget
            del self._caught_up[p]
        return out
