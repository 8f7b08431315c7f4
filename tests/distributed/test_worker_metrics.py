"""The worker's metrics collector, alone and merged into the HTTP API's registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine.distributed.lag import LagSeconds
from engine.distributed.metrics import WorkerCollector, serve_alongside, worker_metrics
from engine.metrics import Metrics

STATS: dict[str, Any] = {
    "engine": {"events": 7, "pending_timers": 3, "rules_version": 2, "partitions": [0, 2]},
    "delivery": {"sent": 5, "skipped_done": 1, "waited_busy": 0, "dead": 0},
    "redis_outages": 1,
}


def _families(metrics: Metrics) -> dict[str, dict[str, float]]:
    text = generate_latest(metrics.registry).decode()
    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        assert fam.name not in out, f"family {fam.name} exported twice"
        out[fam.name] = {
            ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())): s.value
            for s in fam.samples
            if not s.name.endswith("_created")
        }
    return out


def test_collector_replaces_the_runtime_members_in_the_api_registry() -> None:
    metrics = Metrics()
    metrics.http_requests.labels("/v1/events", "202").inc()  # the API's own
    serve_alongside(metrics, WorkerCollector(lambda: STATS, "process"))
    fams = _families(metrics)  # no family twice
    assert fams["nudge_events_processed"] == {"": 7}
    assert fams["nudge_pending_timers"] == {"": 3}
    assert fams["nudge_ruleset_version"] == {"": 2}
    assert fams["nudge_up"] == {"role=worker-process": 1}
    assert fams["nudge_worker_partitions"] == {"": 2}
    assert fams["nudge_worker_deliveries"]["outcome=sent"] == 5
    assert fams["nudge_worker_redis_outages"] == {"": 1}
    assert sum(fams["nudge_http_requests"].values()) == 1
    assert "nudge_journal_commit_seconds" in fams  # runtime members the worker lacks stay


def test_collector_names_cover_what_it_yields() -> None:
    collector = WorkerCollector(
        lambda: STATS, "all", lag=lambda: 12, lag_seconds=lambda: {0: 0.0, 2: 3.5}
    )
    yielded = {fam.name for fam in collector.collect()}
    assert yielded == WorkerCollector.names()


def test_worker_registry_has_nudge_runs_names_it_updates() -> None:
    """A worker's registry: nudge run's families, less the embedded-only ones (and the
    ingest's when it serves no HTTP); the lag is nudge_queue_depth."""
    plain, ingest = worker_metrics(ingest=False), worker_metrics(ingest=True)
    for m in (plain, ingest):
        serve_alongside(m, WorkerCollector(lambda: STATS, "all", lag=lambda: 12))
        m.rule_fires.labels("r", "a", "sent").inc()
    fams, with_http = _families(plain), _families(ingest)
    assert fams["nudge_queue_depth"] == {"": 12}
    assert fams["nudge_rule_fires"] == {"outcome=sent,rule=r,variant=a": 1}
    for name in (
        "nudge_timer_lateness_seconds",
        "nudge_event_to_action_seconds",
        "nudge_build_info",
    ):
        assert name in fams
    for name in (
        "nudge_checkpoint_seconds",
        "nudge_outbox_pending",
        "nudge_ready",
        "nudge_outbox_delivery_wait_seconds",  # never set on a worker: it would read 0 s
        "nudge_admission_shed_early_requests",
    ):
        assert name not in fams
        assert name not in with_http
    assert "nudge_events_accepted" not in fams
    assert "nudge_events_accepted" in with_http
    assert "nudge_journal_commit_seconds" in with_http


def test_lag_seconds_is_the_age_of_the_oldest_unprocessed_event() -> None:
    """Per partition: 0 when caught up; else now minus the later of the last processed
    record's timestamp and the last time it was seen caught up (first seen, if neither)."""
    wall = [1000.0]
    lags: dict[int, int] = {0: 0, 1: 0, 2: 40}
    processed: dict[int, int] = {}
    ages = LagSeconds(lambda: dict(lags), lambda: processed, wall=lambda: wall[0])
    assert ages() == {0: 0.0, 1: 0.0, 2: 0.0}  # 2: first seen with a backlog now
    wall[0] = 1004.0
    lags[0] = 500  # a burst after idling: caught up at 1000
    processed[0] = 990_000  # its last record: before the last scrape
    processed[1] = 1_003_500
    lags[1] = 3
    got = ages()
    assert got == {0: 4.0, 1: 0.5, 2: 4.0}
    wall[0] = 1010.0  # partition 0 stalls: its age grows with the wall clock
    processed[2] = 1_009_000  # partition 2 moves, its backlog steady
    assert ages() == {0: 10.0, 1: 6.5, 2: 1.0}
    collector = WorkerCollector(lambda: STATS, "all", lag=lambda: 543, lag_seconds=ages)
    metrics = worker_metrics(ingest=False)
    serve_alongside(metrics, collector)
    assert _families(metrics)["nudge_worker_lag_seconds"] == {
        "partition=0": 10.0,
        "partition=1": 6.5,
        "partition=2": 1.0,
    }
