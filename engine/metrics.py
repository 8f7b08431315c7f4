"""Prometheus metrics, all named ``nudge_*``. No customer ids in labels: label values are
event types (custom types folded into ``custom``), rule ids, variants, channels, outcomes,
reasons and routes, all bounded by the deployment's configuration."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine import __version__
from engine.events import KNOWN_TYPES

__all__ = ["Metrics", "SegmentMembers", "type_label"]

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the scrape size and nobody graphs them

# latency buckets: 0.5 ms .. 60 s
_LAT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# lateness buckets: up to a day (timers that came due while the process was down)
_LATE = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


def type_label(event_type: str) -> str:
    """Event type as a label value: vocabulary types as-is, custom types as ``custom``."""
    return event_type if event_type in KNOWN_TYPES else "custom"


class SegmentMembers(Collector):
    """``nudge_segment_members{segment}``, read on scrape from ``source`` (segment id ->
    members; the embedded runtime's segment index sets it): labels are exactly the
    segments of the running rule set, and keeping the index costs nothing more."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, int]] | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "nudge_segment_members", "Customers in each segment", labels=["segment"]
        )
        if self.source is not None:
            for segment, n in sorted(self.source().items()):
                family.add_metric([segment], n)
        yield family


class Metrics:
    """Every metric Nudge exports, registered on one registry (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.events_accepted = Counter(
            "nudge_events_accepted", "Events accepted (durable)", ["type"], registry=r
        )
        self.events_rejected = Counter(
            "nudge_events_rejected",
            "Events or requests rejected, by source (native, segment, shopify, sendgrid, twilio)",
            ["source", "reason"],
            registry=r,
        )
        self.events_suppressed = Counter(
            "nudge_events_suppressed",
            "Events dropped at the edge: their customer was erased with suppression",
            registry=r,
        )
        self.events_erased_skipped = Counter(
            "nudge_events_erased_skipped",
            "Events of an erased customer from before its erase, skipped when processed "
            "again (nudge run: journal entries replayed at start; nudge worker: events "
            "before the id's erase mark)",
            registry=r,
        )
        self.events_processed = Counter(
            "nudge_events_processed",
            "Events applied by the core (accepted minus processed = backlog)",
            registry=r,
        )
        self.events_duplicate = Counter(
            "nudge_events_duplicate", "Events ignored as duplicates (same event_id)", registry=r
        )
        self.events_too_late = Counter(
            "nudge_events_too_late", "Events later than allowed_lateness (no trigger)", registry=r
        )
        self.events_future = Counter(
            "nudge_events_future",
            "Events stamped beyond future_tolerance ahead of the clock (processed at the clock)",
            registry=r,
        )
        self.event_lateness = Histogram(
            "nudge_event_lateness_seconds",
            "Processing time minus event time",
            buckets=_LATE,
            registry=r,
        )
        self.processing = Histogram(
            "nudge_processing_seconds", "Core processing time per event", buckets=_LAT, registry=r
        )
        self.event_to_action = Histogram(
            "nudge_event_to_action_seconds",
            "From an event's acceptance to its action's delivery (event-triggered sends)",
            buckets=_LAT,
            registry=r,
        )
        self.timer_lateness = Histogram(
            "nudge_timer_lateness_seconds",
            "Timer fire time minus due time",
            buckets=_LATE,
            registry=r,
        )
        self.pending_timers = Gauge("nudge_pending_timers", "Timers waiting to fire", registry=r)
        self.customers = Gauge("nudge_customers", "Customers with state", registry=r)
        self.rule_fires = Counter(
            "nudge_rule_fires",
            "Send steps reached, by outcome (sent, holdout, suppressed_*)",
            ["rule", "variant", "outcome"],
            registry=r,
        )
        self.actions = Counter(
            "nudge_actions",
            "Action deliveries by channel and outcome (delivered, dead_lettered, expired)",
            ["channel", "outcome"],
            registry=r,
        )
        self.conversions = Counter(
            "nudge_goal_conversions", "Experiment goal conversions", ["rule", "variant"], registry=r
        )
        self.exposures = Counter(
            "nudge_goal_exposures",
            "Experiment goal windows opened (conversions count once per exposure)",
            ["rule", "variant"],
            registry=r,
        )
        self.expression_errors = Counter(
            "nudge_expression_errors", "Rule expressions that failed at run time", registry=r
        )
        self.admission_admitted = Counter(
            "nudge_admission_admitted_events",
            "Events admitted by the time-bounded admission, by request priority",
            ["priority"],
            registry=r,
        )
        self.admission_shed_early = Counter(
            "nudge_admission_shed_early_requests",
            "Requests refused (429) before their body was decoded: every priority over its "
            "limit (their events are not in nudge_admission_shed_events_total)",
            registry=r,
        )
        self.admission_shed = Counter(
            "nudge_admission_shed_events",
            "Events refused (429) by the time-bounded admission, by request priority",
            ["priority"],
            registry=r,
        )
        self.admission_drain = Gauge(
            "nudge_admission_drain_seconds",
            "Estimated seconds an accepted event waits: the queued events at the measured "
            "pace, plus the outbox's delivery wait",
            registry=r,
        )
        self.delivery_wait = Gauge(
            "nudge_outbox_delivery_wait_seconds",
            "Seconds the oldest due action has waited for a delivery task",
            registry=r,
        )
        self.admission_limit = Gauge(
            "nudge_admission_limit_events",
            "Queued events up to which a request of this priority is admitted",
            ["priority"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "nudge_queue_depth", "Accepted events waiting to be processed", registry=r
        )
        self.outbox_pending = Gauge(
            "nudge_outbox_pending", "Actions in the outbox not yet delivered", registry=r
        )
        self.dead_letters = Gauge(
            "nudge_dead_letters", "Actions in the dead-letter store", registry=r
        )
        # delivery through an outage (connectors/retry.py, breaker.py, deadline.py)
        self.sink_state = Gauge(
            "nudge_sink_state",
            "Circuit breaker of each sink: 0 closed, 1 half open (probing), 2 open",
            ["sink"],
            registry=r,
        )
        self.sink_attempts = Counter(
            "nudge_sink_attempts",
            "Sends to each sink by result (ok, retry: failed and will be retried, refused)",
            ["sink", "result"],
            registry=r,
        )
        self.journal_commit = Histogram(
            "nudge_journal_commit_seconds", "Journal group-commit time", buckets=_LAT, registry=r
        )
        self.journal_batch = Histogram(
            "nudge_journal_batch_events",
            "Events per journal group commit",
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
            registry=r,
        )
        self.checkpoint = Histogram(
            "nudge_checkpoint_seconds", "State checkpoint time", buckets=_LAT, registry=r
        )
        # the stages between an event's acceptance and its action's delivery, beside the
        # journal commit: where event-to-action latency goes
        self.outbox_flush = Histogram(
            "nudge_outbox_flush_seconds",
            "Outbox flush time (persist new actions and mark sent ones, one transaction)",
            buckets=_LAT,
            registry=r,
        )
        self.action_send = Histogram(
            "nudge_action_send_seconds",
            "Time to deliver one action to its sink, retries included",
            buckets=_LAT,
            registry=r,
        )
        self.http_requests = Counter(
            "nudge_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        # server side of a request, from its handler's start (body read included) to its
        # answer: what the engine adds to a client's latency (a 202 waits for the journal)
        self.http_request_seconds = Histogram(
            "nudge_http_request_seconds",
            "Time from a request's handler start to its answer, by route",
            ["route"],
            buckets=_LAT,
            registry=r,
        )
        # how late a short sleep on the event loop wakes: a loop turn's length, which
        # every HTTP answer, journal completion and delivery waits for a few of
        self.loop_lag = Histogram(
            "nudge_event_loop_lag_seconds",
            "How late the event loop runs a callback due now (sampled every 0.1 s)",
            buckets=_LAT,
            registry=r,
        )
        # how much of the time the loop's thread is on a CPU: the ingest-to-action p99
        # follows it, not the event rate (BENCHMARKS.md: it turns at 72-78% busy)
        self.loop_busy = Gauge(
            "nudge_event_loop_busy_ratio",
            "Share of the last second the event loop's thread ran on a CPU (0-1)",
            registry=r,
        )
        self.rule_deploys = Counter(
            "nudge_rule_deploys",
            "Rule set deploys by result (ok, rejected)",
            ["result"],
            registry=r,
        )
        self.ruleset_version = Gauge(
            "nudge_ruleset_version", "Version of the running rule set", registry=r
        )
        self.customers_erased = Counter(
            "nudge_customers_erased", "Customers erased through the API", registry=r
        )
        self.up = Gauge("nudge_up", "1 while the process is serving", ["role"], registry=r)
        # embedded runtime faults (engine/embedded/supervise.py, health.py)
        self.task_failures = Counter(
            "nudge_task_failures",
            "Background task failures by task (each one logged and restarted with backoff)",
            ["task"],
            registry=r,
        )
        self.storage_errors = Counter(
            "nudge_storage_errors",
            "Failed writes to the data directory by store and cause (disk_full, io)",
            ["store", "cause"],
            registry=r,
        )
        self.ready = Gauge(
            "nudge_ready", "1 while /readyz answers 200 (set by nudge run)", ["role"], registry=r
        )
        self.segment_members = SegmentMembers()
        r.register(self.segment_members)
        self.build = Info("nudge_build", "Build information", registry=r)
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.build.info({"version": __version__})
