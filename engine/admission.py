"""Admission bounded in time, not count: accept a request only if the work already queued
ahead of it drains within a target, at the processing rate measured now (docs/
operations.md, "Overload").

The queue's drain time is ``queued events x seconds per event``, where seconds per event
is the partitions' measured processing cost divided by the share of the event loop they
get while they have work (HTTP parsing, journal commits and deliveries take the rest):
both are moving averages, so the bound follows the machine, the rule set and the traffic
mix. Under overload the queue therefore stays near the target, every accepted event is
processed within about that time, and a refused client is told (``Retry-After``) how long
the queue needs. When the overload ends, the queue is short already: nothing to drain.

Shedding the least valuable first: each event type has a priority (``low`` for views that
only feed counters, ``high`` for what changes money, carts, consent and identity, and
provider feedback; ``normal`` otherwise). A request is classed by its most valuable event
and admitted while the drain time stays under the target times its class's factor: low
0.5, normal 1, high 4. So no order, cart or consent event is refused while views are
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
_FACTOR = {"low": 0.5, "normal": 1.0, "high": 4.0}

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
    # moving averages: processing seconds per event, and the partitions' share of the
    # loop while they have work (start: a guess the first measurements replace)
    cost: float = 20e-6
    share: float = 0.5
    alpha: float = 0.2
    _window_start: float = 0.0
    _busy: float = 0.0
    _saturated: bool = True

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
        return queued * self.cost / max(self.share, 0.05)

    def decide(self, queued: int, types: Iterable[str]) -> Decision:
        """Admit a request behind ``queued`` events, or say how long to wait."""
        priority = self.priority(types)
        drain = self.drain_time(queued)
        limit = self.target * _FACTOR[priority]
        if drain <= limit:
            return Decision(True, priority, drain)
        return Decision(False, priority, drain, max(1.0, math.ceil(drain - limit)))

    def limit_events(self, priority: str = "normal") -> int:
        """Events the queue may hold for a request of ``priority`` to be admitted."""
        per = self.cost / max(self.share, 0.05)
        return int(self.target * _FACTOR[priority] / per) if per > 0 else 0

    # --- measurements ------------------------------------------------------------
    def processed(self, events: int, seconds: float) -> None:
        """A partition processed ``events`` in ``seconds`` of loop time."""
        if events > 0 and seconds > 0:
            self.cost += self.alpha * (seconds / events - self.cost)
        self._busy += seconds

    def tick(self, backlog: bool, window: float = 0.5) -> None:
        """Call often (every loop turn of a partition, or a timer) with whether events
        were queued: over each ``window`` seconds spent with a backlog throughout, the
        partitions' busy share of the wall time updates ``share``."""
        now = self.clock()
        if not self._window_start:
            self._window_start = now
        if not backlog:
            self._saturated = False
        elapsed = now - self._window_start
        if elapsed < window:
            return
        if self._saturated and self._busy > 0:
            self.share += self.alpha * (min(1.0, self._busy / elapsed) - self.share)
        self._window_start = now
        self._busy = 0.0
        self._saturated = backlog
