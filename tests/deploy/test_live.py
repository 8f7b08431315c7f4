"""The monitoring kit against the real thing: ``nudge run`` as a subprocess, its /metrics,
and a real Prometheus scraping it with deploy/prometheus/alerts.yml loaded.

One ``nudge run`` serves the module. Traffic first (an accepted event, a rejected one, an
unauthorized request, an order that fires the vip-segment rule at once, an accepted and a
rejected rule deploy), so the labelled counters have samples. prometheus_client emits
``# HELP``/``# TYPE`` for every registered family, even a labelled one without samples, so
"the family exists" is checked against the ``# TYPE`` lines and "the query returns data" is
checked separately for the series the traffic creates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy._support import (
    ALERTS,
    DASHBOARD,
    GRAFANA_VARS,
    NUDGE_NAME,
    OPERATIONS,
    RECIPES,
    REPO,
    alert_exprs,
    alert_rules,
    dashboard_exprs,
)
from tests.support.fixtures import PrometheusFactory
from tests.support.servers import free_port

pytestmark = pytest.mark.integration

WRITE, ADMIN = "test-write-token", "test-admin-token"
T = TypeVar("T")


@dataclass
class Nudge:
    url: str
    port: int
    log: Path


def _request(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def _poll(what: str, probe: Callable[[], T | None], deadline_s: float = 60.0) -> T:
    """``probe()`` until it returns something other than None; fail after the deadline."""
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except OSError as exc:
            last, got = exc, None
        if got is not None:
            return got
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what} (last error: {last!r})")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def nudge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nudge]:
    """``nudge run`` on a free port: tokens from the environment, state in a temp dir, the
    stock recipes, every action to the log sink."""
    tmp = tmp_path_factory.mktemp("nudge-run")
    sinks = tmp / "sinks.json"
    sinks.write_text('{"default": "log"}', encoding="utf-8")
    port = free_port()
    exe = shutil.which("nudge")
    cmd = [exe] if exe else [sys.executable, "-m", "engine.cli"]
    cmd += ["run", "--data", str(tmp / "data"), "--port", str(port), "--sinks", str(sinks)]
    env = {**os.environ, "NUDGE_WRITE_TOKEN": WRITE, "NUDGE_ADMIN_TOKEN": ADMIN}
    log = tmp / "nudge.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    server = Nudge(f"http://127.0.0.1:{port}", port, log)
    try:

        def ready() -> bool | None:
            if proc.poll() is not None:
                pytest.fail(f"nudge run exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            return True if _request("GET", server.url + "/readyz")[0] == 200 else None

        _poll("nudge run /readyz", ready)
        _send_traffic(server)
        yield server
    finally:
        _stop(proc)


def _send_traffic(server: Nudge) -> None:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = [
        {
            "event_id": "deploy-e1",
            "type": "cart_item_added",
            "customer_id": "deploy-c1",
            "timestamp": now,
            "properties": {"product_id": "p1", "price": 30.0, "quantity": 1},
        },
        {  # LTV >= 500: vip-segment fires at once (a webhook action, to the log sink here)
            "event_id": "deploy-e2",
            "type": "order_completed",
            "customer_id": "deploy-c1",
            "timestamp": now,
            "properties": {"order_id": "o1", "total": 650.0},
        },
    ]
    ev_url = server.url + "/v1/events"
    assert _request("POST", ev_url, events, WRITE)[0] == 202
    assert _request("POST", ev_url, {"type": "page_viewed"}, WRITE)[0] == 400  # rejected
    assert _request("POST", ev_url, events[:1], "wrong-token")[0] == 401
    files = {p.name: p.read_text(encoding="utf-8") for p in sorted(RECIPES.glob("*.yaml"))}
    rules_url = server.url + "/v1/rules"
    assert _request("PUT", rules_url, {"files": files}, ADMIN)[0] == 200
    bad = {"bad.yaml": "id: broken\ntrigger: {event: order_completed}\nsteps: 3\n"}
    assert _request("PUT", rules_url, {"files": bad}, ADMIN)[0] == 400

    def delivered() -> bool | None:
        text = _request("GET", server.url + "/metrics")[1].decode()
        sample = 'nudge_actions_total{channel="webhook",outcome="delivered"}'
        return True if sample in text else None

    _poll("the vip-segment action to be delivered", delivered)


# --------------------------------------------------------------------------- /metrics


@dataclass
class Scrape:
    families: dict[str, str]  # family name as in `# TYPE` -> type
    series: set[str]  # sample names present
    labels: set[str]  # label names present on any sample
    text: str

    def valid_series_names(self) -> set[str]:
        """Names a PromQL selector may use: present samples, plus what each family's
        type produces even before its first sample (labelled families)."""
        names = set(self.series)
        for fam, kind in self.families.items():
            names |= {
                "counter": {f"{fam}_total"},
                "histogram": {f"{fam}_bucket", f"{fam}_sum", f"{fam}_count"},
                "info": {f"{fam}_info"},
            }.get(kind, {fam})
        return names


def _scrape(server: Nudge) -> Scrape:
    status, body = _request("GET", server.url + "/metrics")
    assert status == 200
    text = body.decode()
    families, series, labels = {}, set(), set()
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam.type
        for sample in fam.samples:
            series.add(sample.name)
            labels |= set(sample.labels)
    return Scrape(families, series, labels, text)


def test_every_metric_the_dashboard_and_alerts_query_exists(nudge: Nudge) -> None:
    scrape = _scrape(nudge)
    # nudge_* plus the standard process_* collector (CPU, memory, file descriptors)
    assert all(name.startswith(("nudge_", "process_")) for name in scrape.families)
    # ... or by a distributed worker (tests/distributed/test_live_stack.py checks them live)
    valid = scrape.valid_series_names() | _worker_series()
    exprs = dashboard_exprs() + alert_exprs()
    used = {name for expr in exprs for name in NUDGE_NAME.findall(expr)}
    assert len(used) >= 20
    assert used - valid == set(), f"queried but not exported: {sorted(used - valid)}"
    # every metric family name mentioned anywhere (descriptions, runbooks, the ops doc);
    # the ops doc also names what `nudge worker --metrics-port` exports
    mentionable = valid | set(scrape.families)
    for path in (DASHBOARD, ALERTS, OPERATIONS):
        known = mentionable | (_worker_series() if path == OPERATIONS else set())
        mentioned = set(NUDGE_NAME.findall(path.read_text(encoding="utf-8")))
        assert mentioned - known == set(), f"{path.name}: {sorted(mentioned - known)}"


def _worker_series() -> set[str]:
    """The series names a worker's /metrics has (its collector over every counter)."""
    return {s.name for fam in _worker_families() for s in fam.samples}


def _worker_families() -> list[Any]:
    """A worker's /metrics families (its collector over every counter)."""
    from prometheus_client import CollectorRegistry, generate_latest

    from engine.distributed.analytics import ChangelogAggregator
    from engine.distributed.metrics import AggregatorCollector, WorkerCollector

    stats: dict[str, Any] = {"engine": {}, "delivery": {}, "redis_outages": 0}
    registry = CollectorRegistry()
    collector = WorkerCollector(lambda: stats, "all", lag=lambda: 0, lag_seconds=lambda: {0: 0.0})
    registry.register(collector)
    # ... and its ingest's changelog aggregator (--analytics on), folding
    aggregator = ChangelogAggregator("kafka://unused:9092", "changelog", None)  # type: ignore[arg-type]
    aggregator.leading, aggregator.hw, aggregator.behind = True, {0: 5}, {0: 0}
    registry.register(AggregatorCollector(aggregator))
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


def test_label_names_used_by_queries_are_exported(nudge: Nudge) -> None:
    scrape = _scrape(nudge)
    exprs = dashboard_exprs() + alert_exprs()
    used: set[str] = set()
    for expr in exprs:
        for group in re.findall(r"\b(?:by|on|without)\s*\(([^)]*)\)", expr):
            used |= {label.strip() for label in group.split(",") if label.strip()}
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!~|!=|=)", expr))
    target_labels = {"job", "instance", "le"}  # added by Prometheus / histograms
    worker = {label for fam in _worker_families() for s in fam.samples for label in s.labels}
    assert used - target_labels - scrape.labels - worker == set()


def test_non_nudge_metrics_on_the_dashboard_exist(nudge: Nudge) -> None:
    """prometheus_client's process_* / python_* metrics come from collectors on the
    default registry only; engine/metrics.py uses its own registry, so they must not be
    queried unless they appear in the scrape."""
    scrape = _scrape(nudge)
    others = {
        name
        for expr in dashboard_exprs() + alert_exprs()
        for name in re.findall(r"\b(?:process|python)_[a-z_]+", expr)
    }
    assert others <= scrape.series


def test_traffic_created_the_series_the_alerts_select(nudge: Nudge) -> None:
    text = _scrape(nudge).text
    for sample in (
        'nudge_rule_fires_total{outcome="sent",rule="vip-segment",variant="default"}',
        'nudge_actions_total{channel="webhook",outcome="delivered"}',
        'nudge_events_accepted_total{type="order_completed"}',
        'nudge_events_rejected_total{reason="unauthorized",source="native"}',
        'nudge_rule_deploys_total{result="rejected"}',
        'nudge_rule_deploys_total{result="ok"}',
        'nudge_http_requests_total{route="/v1/events",status="202"}',
        'nudge_up{role="embedded"} 1.0',
    ):
        assert sample in text, sample


# --------------------------------------------------------------------------- Prometheus


def _query(prom_url: str, promql: str) -> dict[str, Any]:
    url = f"{prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, body = _request("GET", url)
    answer: dict[str, Any] = json.loads(body)
    assert status == 200, answer
    assert answer["status"] == "success", answer
    return answer


def test_real_prometheus_scrapes_nudge_and_loads_the_alerts(
    nudge: Nudge, prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    alerts = tmp_path / "alerts.yml"
    shutil.copyfile(ALERTS, alerts)
    config = (
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {alerts}\n"
        "scrape_configs:\n"
        "  - job_name: nudge\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{nudge.port}']\n"
    )
    prom = prometheus_factory(config)

    def series(promql: str) -> list[dict[str, Any]] | None:
        result: list[dict[str, Any]] = _query(prom.url, promql)["data"]["result"]
        return result or None

    fires = _poll(
        "nudge_rule_fires_total in Prometheus",
        lambda: series('nudge_rule_fires_total{job="nudge", rule="vip-segment"}'),
    )
    assert fires[0]["metric"]["outcome"] == "sent"
    assert float(fires[0]["value"][1]) >= 1
    count = _poll(
        "nudge_processing_seconds_count in Prometheus",
        lambda: series('nudge_processing_seconds_count{job="nudge"}'),
    )
    assert float(count[0]["value"][1]) >= 1
    e2a = _poll(
        "nudge_event_to_action_seconds_count in Prometheus",
        lambda: series('nudge_event_to_action_seconds_count{job="nudge"}'),
    )
    assert float(e2a[0]["value"][1]) >= 1
    up = _query(prom.url, 'up{job="nudge"}')["data"]["result"]
    assert [float(s["value"][1]) for s in up] == [1.0]

    # the alert groups are loaded and every rule evaluates without error
    expected_groups = [g["name"] for g in yaml.safe_load(ALERTS.read_text("utf-8"))["groups"]]

    def rules_evaluated() -> list[dict[str, Any]] | None:
        status, body = _request("GET", prom.url + "/api/v1/rules")
        assert status == 200
        groups: list[dict[str, Any]] = json.loads(body)["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if len(rules) < len(alert_rules()) or any(r["health"] == "unknown" for r in rules):
            return None
        return groups

    groups = _poll("the alert rules to be evaluated", rules_evaluated)
    assert sorted(g["name"] for g in groups) == sorted(expected_groups)
    for group in groups:
        assert group["file"] == str(alerts)
        for rule in group["rules"]:
            assert rule["type"] == "alerting"
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
            assert not rule.get("lastError"), rule["name"]
    loaded = {r["name"] for g in groups for r in g["rules"]}
    assert loaded == {r["alert"] for r in alert_rules()}
    firing = {r["name"] for g in groups for r in g["rules"] if r["state"] == "firing"}
    assert "NudgeProcessDown" not in firing

    # every dashboard query is valid PromQL for this Prometheus, and the main panels have data
    for expr in dashboard_exprs(GRAFANA_VARS):
        if expr.startswith("label_values("):
            continue  # a Grafana function, not PromQL
        _query(prom.url, expr)
    for metric in ("nudge_events_accepted_total", "nudge_rule_fires_total", "nudge_actions_total"):
        panel = next(e for e in dashboard_exprs(GRAFANA_VARS) if metric in e)
        _poll(f"data for the panel query {panel}", lambda panel=panel: series(panel))
