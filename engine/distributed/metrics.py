"""Prometheus metrics of one ``nudge worker``: on ``/metrics`` of ``--metrics-port``, and
of ``--http-port`` when the worker also serves the HTTP API.

A collector reads the worker's counters (:meth:`WorkerApp.stats`, the same numbers as
``--stats-file``) at scrape time, on the worker's event loop (the ``/metrics`` handler runs
there, so nothing is read while a batch changes it). Names follow the embedded runtime's
where they mean the same (``nudge_events_processed_total``, ``nudge_pending_timers``,
``nudge_customers``, ``nudge_ruleset_version``, ``nudge_up``), so the dashboard's panels
work for both; the rest are ``nudge_worker_*``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from engine.metrics import Metrics

__all__ = ["WorkerCollector", "metrics_app", "serve_alongside"]

# stats()["engine"] key -> (metric name, help); counters
_ENGINE_COUNTERS = {
    "events": ("nudge_events_processed", "Events applied by the core"),
    "duplicates": ("nudge_events_duplicate", "Events ignored as duplicates (same event_id)"),
    "future": ("nudge_events_future", "Events stamped beyond future_tolerance ahead"),
    "skipped": ("nudge_worker_events_skipped", "Reprocessed events a restored state held"),
    "undecodable": ("nudge_worker_events_undecodable", "Event records skipped: not a valid event"),
    "timers_fired": ("nudge_worker_timers_fired", "Timers fired"),
    "actions": ("nudge_worker_actions_produced", "Actions produced to the actions topic"),
    "batches": ("nudge_worker_batches", "Batches of event records processed"),
    "rows_written": ("nudge_worker_changelog_rows", "Customer rows produced to the changelog"),
    "expression_errors": ("nudge_expression_errors", "Rule expressions that failed"),
}
_ENGINE_GAUGES = {
    "pending_timers": ("nudge_pending_timers", "Timers waiting to fire"),
    "customers": ("nudge_customers", "Customers with state in the owned partitions"),
    "rules_version": ("nudge_ruleset_version", "Version of the rule set in use"),
}
_DELIVERY_OUTCOMES = ("sent", "skipped_done", "waited_busy", "dead")
_OUTAGES = "nudge_worker_redis_outages"
_OTHER = ("nudge_up", "nudge_worker_partitions", "nudge_worker_deliveries")


class WorkerCollector(Collector):
    """Metric families from ``stats()`` (the worker's counters) at each scrape."""

    def __init__(self, stats: Callable[[], dict[str, Any]], role: str) -> None:
        self._stats = stats
        self._role = role

    @staticmethod
    def names() -> set[str]:
        """Every metric family name this collector can yield."""
        tables = (_ENGINE_COUNTERS, _ENGINE_GAUGES)
        return {name for t in tables for name, _ in t.values()} | {*_OTHER, _OUTAGES}

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        up = GaugeMetricFamily("nudge_up", "1 while the process is serving", labels=["role"])
        up.add_metric([f"worker-{self._role}"], 1)
        yield up
        engine = stats.get("engine")
        if engine is not None:
            for key, (name, doc) in _ENGINE_COUNTERS.items():
                yield CounterMetricFamily(name, doc, value=engine.get(key, 0))
            for key, (name, doc) in _ENGINE_GAUGES.items():
                yield GaugeMetricFamily(name, doc, value=engine.get(key, 0))
            yield GaugeMetricFamily(
                "nudge_worker_partitions",
                "Events topic partitions this worker owns",
                value=len(engine.get("partitions", ())),
            )
        delivery = stats.get("delivery")
        if delivery is not None:
            fam = CounterMetricFamily(
                "nudge_worker_deliveries",
                "Actions settled by delivery, by outcome (skipped_done: sent before, a "
                "redelivery; waited_busy: waits on a claim held by another sender)",
                labels=["outcome"],
            )
            for outcome in _DELIVERY_OUTCOMES:
                fam.add_metric([outcome], delivery.get(outcome, 0))
            yield fam
        if "redis_outages" in stats:
            yield CounterMetricFamily(
                _OUTAGES,
                "Times Redis became unreachable (calls wait and retry)",
                value=stats["redis_outages"],
            )


def serve_alongside(metrics: Metrics, collector: WorkerCollector) -> None:
    """Expose ``collector`` in ``metrics``' registry (the one a worker's HTTP API serves on
    ``/metrics``), in place of the members with the same names: those belong to the
    embedded runtime, and a worker never updates them."""
    names = collector.names()
    for member in list(vars(metrics).values()):
        if isinstance(member, MetricWrapperBase) and {f.name for f in member.describe()} & names:
            metrics.registry.unregister(member)
    metrics.registry.register(collector)


def metrics_app(collector: WorkerCollector) -> web.Application:
    """An aiohttp app serving ``collector`` on ``/metrics``."""
    registry = CollectorRegistry()
    registry.register(collector)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
