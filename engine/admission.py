"""Admission bounded in time, not count: accept a request only if the work already queued
ahead of it drains within a target, at the processing rate measured now (docs/
operations.md, "Overload").

The queue's drain time is ``queued events x seconds per event``, where seconds per event
is the wall time the partitions took per event over recent windows in which a backlog
lasted throughout (a moving average): everything else the loop does meanwhile (HTTP
parsing, journal commits, deliveries, timers, checkpoints) is inside that time, so the
bound follows the machine, the rule set and the traffic mix without a model of them. To
it is added how long the outbox's delivery queue holds actions that are due now
(``waiting``): an accepted event's action waits there too, so an engine whose deliveries
fall behind refuses work instead of letting event-to-action grow. Under overload the
queue therefore stays near the target, every accepted event is processed within about
that time, and a refused client is told (``Retry-After``) how long the queue needs. When
the overload ends, the queue is short already: nothing to drain.

Shedding the least valuable first: each event type has a priority (``low`` for views that
only feed counters, ``high`` for what changes money, carts, consent and identity, and
provider feedback; ``normal`` otherwise). A request is classed by its most valuable event
and admitted while the drain time stays under the target times its class's factor: low
0.5, normal 1, high 2 (with the default 0.25 s target, a high-priority request waits
behind at most ~0.5 s of work). So no order, cart or consent event is refused while views are
still admitted, and a request is admitted or refused whole (a client never has to find
which of its events were dropped).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_PRIORITIES", "PRIORITIES", "Admission", "Decision", "parse_priority"]

PRIORITIES = ("low", "normal", "high")
_FACTOR = {"low": 0.5, "normal": 1.0, "high": 2.0}

DEFAULT_PRIORITIES: dict[str, str] = {
    "page_viewed": "low",
    "product_viewed": "low",
    **dict.fromkeys(
        (
            "order_completed",
            "order_refunded",
            "order_delivered",
            "checkout_started",
            "cart_item_added",
            "cart_item_removed",
            "cart_replaced",
            "customer_signed_up",
            "customer_updated",
            "customer_aliased",
            "customer_merged",
            "email_unsubscribed",
            "email_spam_reported",
            "email_resubscribed",
            "email_bounced",
            "email_dropped",
            "email_delivered",
            "email_opened",
            "email_clicked",
            "sms_unsubscribed",
            "sms_resubscribed",
            "sms_delivered",
            "sms_failed",
            "sms_clicked",
            "push_opened",
            "back_in_stock_requested",
        ),
        "high",
    ),
}
"""Event type -> priority; types not named are ``normal``."""


def parse_priority(text: str) -> tuple[str, str]:
    """``TYPE=low|normal|high`` (a command-line override) -> (type, priority); raises
    ValueError otherwise."""
    etype, _, prio = text.partition("=")
    if not etype or prio not in PRIORITIES:
        raise ValueError(f"expected TYPE=low|normal|high, not {text!r}")
    return etype, prio


@dataclass
class Decision:
    """``admitted``, else how long to wait (``retry_after`` seconds); ``priority`` of
    the request, ``drain`` the queue's estimated drain time (seconds) it was judged on."""

    admitted: bool
    priority: str
    drain: float
    retry_after: float = 0.0


@dataclass
class Admission:
    """``target``: seconds of queued work a request may wait behind (its class's factor
    times this); ``priorities``: event type -> ``low``/``normal``/``high``."""

    target: float = 0.25
    priorities: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    clock: Callable[[], float] = time.monotonic
    # wall seconds per event drained while a backlog lasted (a moving average; the
    # start is a guess the first measured window replaces)
    cost: float = 50e-6
    alpha: float = 0.3
    window: float = 0.25
    _window_start: float = 0.0
    _done: int = 0
    _saturated: bool = True
    _measured: bool = False

    def priority(self, types: Iterable[str]) -> str:
        """The class of a request: its most valuable event's."""
        best = 0
        prio = self.priorities
        for t in types:
            rank = PRIORITIES.index(prio.get(t, "normal"))
            if rank > best:
                best = rank
                if best == 2:
                    break
        return PRIORITIES[best]

    def drain_time(self, queued: int) -> float:
        """Seconds the partitions need for ``queued`` events at the measured pace."""
        return queued * self.cost

    def decide(self, queued: int, types: Iterable[str], waiting: float = 0.0) -> Decision:
        """Admit a request behind ``queued`` events, or say how long to wait.
        ``waiting``: seconds its output would wait further downstream (the outbox's
        delivery queue), added to the queue's drain time."""
        priority = self.priority(types)
        drain = self.drain_time(queued) + waiting
        limit = self.target * _FACTOR[priority]
        if drain <= limit:
            return Decision(True, priority, drain)
        return Decision(False, priority, drain, max(1.0, math.ceil(drain - limit)))

    def refuse_all(self, queued: int, waiting: float = 0.0) -> float | None:
        """``Retry-After`` seconds if no class would be admitted now (the wait is over
        even the high class's limit), else None: a request can then be refused before
        its body is decoded, so refusing under a heavy overload costs little."""
        drain = self.drain_time(queued) + waiting
        limit = self.target * _FACTOR["high"]
        return max(1.0, math.ceil(drain - limit)) if drain > limit else None

    def limit_events(self, priority: str = "normal") -> int:
        """Events the queue may hold for a request of ``priority`` to be admitted."""
        return int(self.target * _FACTOR[priority] / self.cost) if self.cost > 0 else 0

    # --- measurements ------------------------------------------------------------
    def processed(self, events: int) -> None:
        """The partitions processed ``events`` more."""
        self._done += events

    def tick(self, backlog: bool) -> None:
        """Call often (every loop turn of a partition) with whether events were queued.
        A window of ``window`` seconds with a backlog throughout measures the pace: its
        wall time over the events processed in it. Everything else the loop did meanwhile
        (HTTP, journal commits, deliveries, timers, checkpoints) is in that time, which
        is what a queued event waits behind. Windows that were idle at some point say
        nothing about the pace and are skipped."""
        now = self.clock()
        if not self._window_start:
            self._window_start = now
        if not backlog:
            self._saturated = False
        elapsed = now - self._window_start
        if elapsed < self.window:
            return
        if self._saturated and self._done > 0:
            pace = elapsed / self._done
            if self._measured:
                self.cost += self.alpha * (pace - self.cost)
            else:
                self.cost, self._measured = pace, True
        self._window_start = now
        self._done = 0
        self._saturated = backlog
