"""Where reports read counts from (engine/http/reports.py): one interface, two backends.

- ``nudge run``: the embedded runtime itself (engine/embedded/runtime.py): the counts
  folded into ``states.db`` (engine/embedded/storage/analytics.py) plus those still held
  per customer until the next checkpoint;
- the distributed runtime: :class:`~engine.distributed.storage.analytics.RedisAnalytics`,
  the counts the changelog aggregator folded (engine/distributed/analytics.py); nothing
  in memory.

Both answer with the stored periods (or day totals) and a Counter of cells still in
memory; engine/analytics/report.py builds the same bodies from either.

The console's customer timeline reads a :class:`HistorySource` the same way: what each
runtime still holds of one customer's recent events and actions (``nudge run``: its
journal and outbox, engine/embedded/history.py, handed to the app by the embedded
server; the distributed ingest: the tail of the customer's partition of the ``events``
and ``actions`` topics with each action's delivery status in Redis,
engine/distributed/history.py, served by the ingest itself). Neither keeps a per-customer
history: ``covers`` says in words what the timeline covers. :class:`RecentEvents` is the
rule editor's preview source (``nudge run``'s journal; the distributed ingest has none).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from state.analytics import Cell, DayTotals, Period

__all__ = [
    "AnalyticsSource",
    "CustomerHistory",
    "HistorySource",
    "RecentEvents",
    "history_of",
    "source_of",
]


@runtime_checkable
class AnalyticsSource(Protocol):
    async def analytics_counts(
        self, hourly: bool, first: int, last: int, rule_id: str | None = None
    ) -> tuple[list[Period], Counter[Cell]]:
        """Counts of days (or hours, ``hourly``) ``first``..``last``, one rule or all:
        (stored periods, in-memory cells of any period: the caller filters)."""
        ...

    async def analytics_totals(
        self, first: int, last: int
    ) -> tuple[list[DayTotals], Counter[Cell]]:
        """The all-rules report's figures of days ``first``..``last`` (stored day
        totals, in-memory cells)."""
        ...


def source_of(backend: Any) -> AnalyticsSource | None:
    """The report source of an HTTP backend: the backend itself (``nudge run``) or its
    ``analytics_source`` (the distributed ingest with analytics on); None: it keeps no
    campaign analytics."""
    if isinstance(backend, AnalyticsSource):
        return backend
    source = getattr(backend, "analytics_source", None)
    return source if isinstance(source, AnalyticsSource) else None


@dataclass
class CustomerHistory:
    """One customer's recent past, newest first. ``events``: ``{"type", "event_id",
    "timestamp", "accepted_at"}`` (the event's own RFC 3339 time, acceptance in epoch ms;
    no properties); ``actions``: ``{"rule_id", "channel", "template", "variant",
    "fire_at", "status"}`` (``fire_at`` epoch ms); ``covers``: what was searched, in
    words, for the page."""

    events: list[dict[str, Any]] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    covers: str = ""


@runtime_checkable
class HistorySource(Protocol):
    async def customer_history(self, customer_id: str, scan: int) -> CustomerHistory:
        """``customer_id``'s events and actions among the last ``scan`` records the
        runtime holds (its journal, or the customer's topic partitions), newest first;
        nothing from before an erase of the id."""
        ...


@runtime_checkable
class RecentEvents(Protocol):
    async def recent_events(self, n: int) -> list[bytes]:
        """The last ``n`` events accepted, oldest first, one JSON object each (the
        console's rule preview); a runtime that keeps no journal does not offer it."""
        ...


def history_of(backend: Any) -> HistorySource | None:
    """The timeline source of an HTTP backend that serves one itself (the distributed
    ingest); None: the app was given one (``nudge run``: its data directory's, by
    ``create_app(history=...)``) or has none."""
    return backend if isinstance(backend, HistorySource) else None
