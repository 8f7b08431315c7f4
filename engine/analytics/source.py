"""Where reports read counts from (engine/http/reports.py): one interface, two backends.

- ``nudge run``: the embedded runtime itself (engine/embedded/runtime.py): the counts
  folded into ``states.db`` (engine/embedded/storage/analytics.py) plus those still held
  per customer until the next checkpoint;
- the distributed runtime: :class:`~engine.distributed.storage.analytics.RedisAnalytics`,
  the counts the changelog aggregator folded (engine/distributed/analytics.py); nothing
  in memory.

Both answer with the stored periods (or day totals) and a Counter of cells still in
memory; engine/analytics/report.py builds the same bodies from either.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, runtime_checkable

from state.analytics import Cell, DayTotals, Period

__all__ = ["AnalyticsSource", "source_of"]


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
