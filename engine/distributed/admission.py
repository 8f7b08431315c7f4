"""Time-bounded admission toward the broker, for the distributed ingest (docs/
operations.md, "Overload").

The ingest answers a request once Kafka acknowledged every event of it (``acks=all``).
Its queue is the events handed to the producer and not yet acknowledged; a request is
admitted only if that queue drains within the target (times its priority's factor, the
same classes as ``nudge run``: engine/admission.py), else it gets an immediate 429 with
``Retry-After`` instead of waiting behind a producer buffer that cannot drain in time.

The drain time is the larger of

- ``queued events x seconds per acknowledged event``, the pace measured over windows in
  which events were awaiting acks (busy time / events acknowledged: a moving average,
  so it follows the broker, the network and the batch sizes); and
- the age of the oldest request still awaiting its acks: a paused or unreachable broker
  acknowledges nothing, so the pace says nothing new, but this grows by one second per
  second and refuses every class once it passes their limit.

When the broker catches up, the queue is short already (it was bounded in time): nothing
to drain.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.admission import Admission

__all__ = ["BrokerAdmission", "Pending"]


@dataclass(slots=True)
class Pending:
    """One request's events awaiting their acks (``at``: when handed to the producer)."""

    at: float
    events: int
    done: bool = False


@dataclass
class BrokerAdmission(Admission):
    """:class:`Admission` whose queue is the producer's unacknowledged events: call
    :meth:`sent` when a request's events go to the producer and :meth:`acked` when they
    are acknowledged (or failed)."""

    cost: float = 20e-6  # seconds per acknowledged event (a guess the acks replace)
    alpha: float = 0.2
    queued: int = 0
    _pending: deque[Pending] = field(default_factory=deque)
    _last: float = 0.0  # last time the busy time was accounted
    _busy_in_window: float = 0.0
    _acked_in_window: int = 0

    def drain_time(self, queued: int) -> float:
        paced = super().drain_time(queued)
        pending = self._pending
        if not pending:
            return paced
        return max(paced, self.clock() - pending[0].at)

    def oldest_age(self) -> float:
        """Seconds the oldest request still awaiting its acks has waited (0: none)."""
        return self.clock() - self._pending[0].at if self._pending else 0.0

    def sent(self, events: int) -> Pending:
        now = self._account()
        entry = Pending(now, events)
        self._pending.append(entry)
        self.queued += events
        return entry

    def acked(self, entry: Pending, ok: bool = True) -> None:
        """``entry``'s events are acknowledged (``ok``) or failed: out of the queue."""
        if entry.done:
            return
        now = self._account()
        entry.done = True
        self.queued -= entry.events
        if ok:
            self._acked_in_window += entry.events
        pending = self._pending
        while pending and pending[0].done:
            pending.popleft()
        self._measure(now)

    def _account(self) -> float:
        """Add the time since the last call to the busy time if events awaited acks."""
        now = self.clock()
        if not self._window_start:
            self._window_start = now
        if self.queued > 0 and self._last:
            self._busy_in_window += now - self._last
        self._last = now
        return now

    def _measure(self, now: float) -> None:
        """Close a window of ``window`` seconds: seconds per acknowledged event, from
        the busy time and the events acknowledged in it (windows mostly idle or with
        nothing acknowledged say nothing about the pace, and are skipped)."""
        elapsed = now - self._window_start
        if elapsed < self.window:
            return
        busy, acked = self._busy_in_window, self._acked_in_window
        if acked > 0 and busy >= 0.5 * elapsed:
            self.cost += self.alpha * (busy / acked - self.cost)
        self._window_start = now
        self._busy_in_window = 0.0
        self._acked_in_window = 0
