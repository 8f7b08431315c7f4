"""Prometheus metrics of one ``nudge worker``: on ``/metrics`` of ``--metrics-port``, and
of ``--http-port`` when the worker also serves the HTTP API.

One vocabulary with ``nudge run``: the process keeps an :class:`engine.metrics.Metrics`
(same names, labels, buckets) without the members only the embedded runtime has
(checkpoints, outbox, supervisor, storage; and the ingest's when it serves no HTTP):

- the ingest (:class:`MeteredIngest`) counts ``nudge_events_accepted_total{type}`` and
  observes the Kafka acknowledgement of each request (``acks=all``: its durable write) as
  ``nudge_journal_commit_seconds`` / ``nudge_journal_batch_events``, the journal being the
  ``events`` topic here; the HTTP layer counts rejections, requests and deploys;
- processing (:class:`MeteredEngine`) observes each output as ``nudge run`` does: rule
  fires, goal exposures and conversions, timer lateness, event lateness, too-late events,
  core time per event;
- delivery (engine/distributed/delivery.py) counts ``nudge_actions_total{channel,
  outcome}`` and observes event-to-action latency and the send time.

A collector reads the worker's counters (:meth:`WorkerApp.stats`, the same numbers as
``--stats-file``) at scrape time, on the worker's event loop (the ``/metrics`` handler runs
there, so nothing is read while a batch changes it): ``nudge_events_processed_total``,
``nudge_pending_timers``, ``nudge_customers``, ``nudge_ruleset_version``, ``nudge_up``,
``nudge_queue_depth`` (the consumer lag of the owned partitions: accepted events not yet
processed), ``nudge_worker_lag_seconds{partition}`` (the age of each owned partition's
oldest unprocessed event, engine/distributed/lag.py) and the worker's own
``nudge_worker_*``.

The ingest's time-bounded admission toward the broker (engine/distributed/admission.py)
counts ``nudge_admission_admitted_events`` / ``nudge_admission_shed_events{priority}`` and
sets ``nudge_admission_drain_seconds`` / ``nudge_admission_limit_events`` as ``nudge run``
does, its queue being the events awaiting the broker's acknowledgement.

With campaign analytics (``--analytics on``), the ingest's changelog aggregator
(:class:`AggregatorCollector`): ``nudge_analytics_folding`` (1 while this process folds,
0 standing by), ``nudge_analytics_lag_records{partition}`` and
``nudge_analytics_lag_seconds{partition}`` (how far the reports trail the changelog; only
the folding process has them), ``nudge_analytics_folded_records_total`` and
``nudge_analytics_gaps_total`` (compacted runs lost before they were folded).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from engine.admission import PRIORITIES, Decision
from engine.distributed.analytics import ChangelogAggregator
from engine.distributed.ingest import Batch, KafkaIngest
from engine.distributed.lag import consumer_lag
from engine.distributed.processing import Flush, PartitionEngine, Record
from engine.driver import OutputHandler
from engine.metrics import Metrics, type_label
from engine.output import Output
from rules.ruleset import RuleSet

__all__ = [
    "AggregatorCollector",
    "MeteredEngine",
    "MeteredIngest",
    "OutputMeter",
    "WorkerCollector",
    "consumer_lag",
    "metrics_app",
    "serve_alongside",
    "worker_metrics",
]

# members of engine.metrics.Metrics a worker process never updates
_EMBEDDED_ONLY = (
    "checkpoint",
    "outbox_flush",
    "outbox_pending",
    "dead_letters",
    "task_failures",
    "storage_errors",
    "ready",
    "delivery_wait",  # the outbox's (admission of nudge run)
    "admission_shed_early",  # refused before decoding: nudge run's admission only
)
# ... and those only its HTTP ingest (--http-port) updates
_INGEST_ONLY = (
    "events_accepted",
    "events_rejected",
    "journal_commit",
    "journal_batch",
    "http_requests",
    "rule_deploys",
    "customers_erased",
    "segment_members",
    "admission_admitted",
    "admission_shed",
    "admission_drain",
    "admission_limit",
)

# stats()["engine"] key -> (metric name, help); counters
_ENGINE_COUNTERS = {
    "events": ("nudge_events_processed", "Events applied by the core"),
    "duplicates": ("nudge_events_duplicate", "Events ignored as duplicates (same event_id)"),
    "future": ("nudge_events_future", "Events stamped beyond future_tolerance ahead"),
    "skipped": ("nudge_worker_events_skipped", "Reprocessed events a restored state held"),
    "erased_skipped": (
        "nudge_events_erased_skipped",
        "Events of an erased customer from before its erase mark, skipped when processed again",
    ),
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
_LAG = "nudge_queue_depth"
_LAG_SECONDS = "nudge_worker_lag_seconds"


class WorkerCollector(Collector):
    """Metric families from ``stats()`` (the worker's counters) at each scrape."""

    def __init__(
        self,
        stats: Callable[[], dict[str, Any]],
        role: str,
        lag: Callable[[], int | None] | None = None,
        lag_seconds: Callable[[], dict[int, float] | None] | None = None,
    ) -> None:
        self._stats = stats
        self._role = role
        self._lag = lag
        self._lag_seconds = lag_seconds

    @staticmethod
    def names() -> set[str]:
        """Every metric family name this collector can yield."""
        tables = (_ENGINE_COUNTERS, _ENGINE_GAUGES)
        names = {name for t in tables for name, _ in t.values()}
        return names | {*_OTHER, _OUTAGES, _LAG, _LAG_SECONDS}

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        up = GaugeMetricFamily("nudge_up", "1 while the process is serving", labels=["role"])
        up.add_metric([f"worker-{self._role}"], 1)
        yield up
        engine = stats.get("engine")
        lag = self._lag() if self._lag is not None and engine is not None else None
        if lag is not None:
            yield GaugeMetricFamily(
                _LAG,
                "Accepted events waiting to be processed (worker: consumer lag of the "
                "owned events partitions)",
                value=lag,
            )
        ages = None
        if self._lag_seconds is not None and engine is not None:
            ages = self._lag_seconds()
        if ages is not None:
            gauge = GaugeMetricFamily(
                _LAG_SECONDS,
                "Age of the oldest accepted event not yet processed, per owned events "
                "partition (an upper bound; 0 when caught up)",
                labels=["partition"],
            )
            for p, age in sorted(ages.items()):
                gauge.add_metric([str(p)], age)
            yield gauge
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


class AggregatorCollector(Collector):
    """The changelog aggregator's progress (engine/distributed/analytics.py), read at
    each scrape on the ingest's event loop."""

    def __init__(self, aggregator: ChangelogAggregator) -> None:
        self._agg = aggregator

    def collect(self) -> Iterator[Metric]:
        agg = self._agg
        yield GaugeMetricFamily(
            "nudge_analytics_folding",
            "1 while this process folds the changelog into the reports (holds the lease)",
            value=1 if agg.leading else 0,
        )
        records, seconds = agg.lag_records(), agg.lag_seconds()
        if records is not None and seconds is not None:
            lag = GaugeMetricFamily(
                "nudge_analytics_lag_records",
                "Changelog records not yet folded into the reports, per changelog partition",
                labels=["partition"],
            )
            age = GaugeMetricFamily(
                "nudge_analytics_lag_seconds",
                "Age of the oldest changelog record not yet folded into the reports, per "
                "changelog partition (an upper bound; 0 when caught up)",
                labels=["partition"],
            )
            for p in sorted(records):
                lag.add_metric([str(p)], records[p])
                age.add_metric([str(p)], seconds[p])
            yield lag
            yield age
        yield CounterMetricFamily(
            "nudge_analytics_folded_records",
            "Changelog records folded into the reports by this process",
            value=agg.folded,
        )
        yield CounterMetricFamily(
            "nudge_analytics_gaps",
            "Compacted changelog runs found before they were folded (counts may be missing)",
            value=agg.gaps,
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


def metrics_app(source: WorkerCollector | CollectorRegistry) -> web.Application:
    """An aiohttp app serving a registry (or a collector alone) on ``/metrics``."""
    if isinstance(source, CollectorRegistry):
        registry = source
    else:
        registry = CollectorRegistry()
        registry.register(source)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


def worker_metrics(ingest: bool) -> Metrics:
    """``nudge run``'s metrics without the members a worker never updates (``ingest``:
    it serves the HTTP API, whose members stay)."""
    metrics = Metrics()
    for attr in _EMBEDDED_ONLY + (() if ingest else _INGEST_ONLY):
        metrics.registry.unregister(getattr(metrics, attr))
    return metrics


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class OutputMeter:
    """What one core output counts, as the embedded runtime counts it (its
    ``_on_output``): fires, exposures, conversions, timer lateness (wall clock minus due
    time), event lateness and too-late events. Duplicates count nowhere."""

    def __init__(self, metrics: Metrics, wall_ms: Callable[[], int] = _wall_ms) -> None:
        self.metrics = metrics
        self._wall_ms = wall_ms

    def __call__(self, out: Output) -> None:
        m = self.metrics
        if out.timer_due is not None:
            m.timer_lateness.observe(max(0, self._wall_ms() - out.timer_due) / 1000)
        elif not out.duplicate:
            m.event_lateness.observe(out.lateness / 1000)
            if out.too_late:
                m.events_too_late.inc()
        for f in out.fires:
            m.rule_fires.labels(f.rule_id, f.variant, f.outcome).inc()
        for c in out.conversions:
            m.conversions.labels(c.rule_id, c.variant).inc()
        for rule_id, variant in out.exposures:
            m.exposures.labels(rule_id, variant).inc()


class MeteredEngine(PartitionEngine):
    """A :class:`PartitionEngine` whose outputs also go to ``meter`` (None: none), whose
    batches observe ``nudge_processing_seconds`` (core time per event), and which keeps
    the timestamp (ms) of the last record processed on each partition (``processed_at``,
    for ``nudge_worker_lag_seconds``)."""

    def __init__(
        self, ruleset: RuleSet, rules_version: int, flush: Flush, meter: OutputMeter | None
    ) -> None:
        self._meter = meter
        self.processed_at: dict[int, int] = {}
        super().__init__(ruleset, rules_version, flush)

    def _output_handler(self, index: int) -> OutputHandler:
        inner = super()._output_handler(index)
        meter = self._meter
        if meter is None:
            return inner

        def on_output(out: Output) -> None:
            inner(out)
            meter(out)

        return on_output

    async def process(self, records: Iterable[Record]) -> Any:
        stats = self.stats
        events, core = stats.events, stats.core_seconds
        records = list(records)
        durable = await super().process(records)
        last = self.processed_at
        for rec in records:  # offset order within a partition: the last one stays
            last[rec.partition] = rec.timestamp
        n = stats.events - events
        if n and self._meter is not None:
            self._meter.metrics.processing.observe((stats.core_seconds - core) / n)
        return durable


class MeteredIngest(KafkaIngest):
    """The distributed ingest, counting what it accepted and how long the broker took
    to acknowledge it (``metrics``: the process's)."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    async def accept(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        dropped = self.suppressed
        await super().accept(batch)
        m = self.metrics
        if self.suppressed > dropped:  # erased with suppression: counted, not accepted
            m.events_suppressed.inc(self.suppressed - dropped)
        events = batch[0]
        m.journal_commit.observe(time.perf_counter() - t0)
        m.journal_batch.observe(len(events))
        for etype, n in Counter(type_label(ev.type) for ev in events).items():
            m.events_accepted.labels(etype).inc(n)

    def _judged(self, decision: Decision, events: int) -> None:
        m = self.metrics
        counter = m.admission_admitted if decision.admitted else m.admission_shed
        counter.labels(decision.priority).inc(events)
        m.admission_drain.set(decision.drain)
        for prio in PRIORITIES:
            m.admission_limit.labels(prio).set(self.admission.limit_events(prio))

    async def erase(self, customer_id: str, suppress: bool = False) -> dict[str, Any]:
        erased = await super().erase(customer_id, suppress)
        self.metrics.customers_erased.inc()
        return erased
