"""The monitoring kit against a live distributed stack: an ingest and two workers, each
with ``--http-port`` as deploy/docker/docker-compose.yml runs them, scraped by a real
Prometheus with deploy/prometheus/alerts.yml loaded.

After a short trace every dashboard query returns data, except the panels only
``nudge run`` fills (its outbox, dead-letter store and checkpoints). Then the alert
rules: none fires on the healthy stack; each fires when its fault is injected: the
traffic stops (NudgeNoEventsReceived), the sink refuses every action
(NudgeDeadLettersGrowing, NudgeActionFailureRateHigh; NudgeSinkCircuitOpen may join
them), the analytics lease is taken by a process that does not fold
(NudgeAnalyticsNotFolding), a burst outruns the workers (NudgeEventBacklogHigh and
NudgeWorkerLagHigh), a worker is killed (NudgeProcessDown). NudgeAnalyticsLagHigh is not
fired here: the aggregator folds a fetch of up to 20,000 records at once and keeps up
with the burst (its largest lag is printed), and one that stops folding drops or freezes
its lag series (that case is NudgeAnalyticsNotFolding's); promtool unit tests cover it.

Overload at the ingest: it runs with an admission target its broker cannot meet
(``--admission-target 0.002``), and a flood of concurrent requests gets immediate 429s
with ``Retry-After`` (their answer times are printed), counted in
``nudge_admission_shed_events_total`` and firing NudgeIngestThrottled; a lone request
(the steady traffic) is still admitted.

To run in minutes, the alert file is loaded with its durations shortened (``for`` 3 s,
range windows and offsets 20 s), the backlog threshold lowered from 100,000 to
500 events and the lag threshold from 30 s to 2 s; the expressions are otherwise the
shipped ones. The workers run with ``--batch-size 5`` so that a burst of 60,000 events
builds a backlog on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, ClientTimeout

from engine.types import iso
from tests.deploy._support import ALERTS, GRAFANA_VARS, dashboard_exprs
from tests.deploy.test_live import _request
from tests.distributed.conftest import Cluster, produce
from tests.support.fixtures import PrometheusFactory
from tests.support.servers import free_port
from tests.support.traces import make_events
from tests.support.webhook import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

WRITE, ADMIN = "live-write-token", "live-admin-token"

EXPERIMENT_RULE = """id: page-exp
trigger: {event: page_viewed}
reentry: always
steps:
  - send: {channel: webhook, template: exp}
experiment:
  variants: {a: 50, b: 50}
  goal: {event: order_completed, within: 1d}
"""

# metrics only nudge run has: its outbox, dead-letter store and checkpoints
NUDGE_RUN_ONLY = ("nudge_outbox_pending", "nudge_dead_letters", "nudge_checkpoint_seconds")
NUDGE_RUN_ONLY += ("nudge_outbox_flush_seconds",)


def fast_alerts(text: str) -> str:
    """alerts.yml with its durations shortened and the backlog threshold lowered."""
    text = re.sub(r"(?m)^(\s+for:) \d+m$", r"\1 3s", text)
    text = re.sub(r"\[\d+m\]", "[20s]", text)
    text = re.sub(r"offset \d+m", "offset 20s", text)
    text = text.replace("> 100000", "> 500")
    lag = 'nudge_worker_lag_seconds{job=~"nudge.*"}) > 30'
    assert lag in text
    text = text.replace(lag, lag.replace("> 30", "> 2"))
    assert "[10m]" not in text
    assert "for: 10m" not in text
    return text


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = _request("GET", url)
        answer = json.loads(body)
        assert status == 200, (promql, answer)
        assert answer["status"] == "success", (promql, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def firing(self) -> dict[str, list[dict[str, str]]]:
        """alert name -> the label sets of its firing alerts."""
        status, body = _request("GET", self.url + "/api/v1/alerts")
        assert status == 200
        out: dict[str, list[dict[str, str]]] = {}
        for a in json.loads(body)["data"]["alerts"]:
            if a["state"] == "firing":
                out.setdefault(a["labels"]["alertname"], []).append(a["labels"])
        return out

    def fired_since(self, seconds: int) -> set[str]:
        """Alerts that were firing at any evaluation in the last ``seconds``."""
        got = self.query(f'max_over_time(ALERTS{{alertstate="firing"}}[{seconds}s])')
        return {s["metric"]["alertname"] for s in got}


async def wait_for(what: str, probe: Any, timeout: float, c: Cluster) -> Any:
    end = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(probe)
        if got:
            return got
        for name, proc in c.procs.items():
            if proc.poll() is not None and name not in c.killed:
                raise AssertionError(f"{name} exited:\n{c.log_tail(name)}")
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


class Traffic:
    """A few events every half second through the ingest while ``on``."""

    def __init__(self, session: ClientSession, url: str) -> None:
        self.session, self.url, self.on, self.n = session, url, True, 0

    async def run(self) -> None:
        auth = {"Authorization": f"Bearer {WRITE}"}
        while True:
            if self.on:
                self.n += 1
                now = int(time.time() * 1000)
                events = make_events(4, now, customers=5, prefix=f"t{self.n}-")
                with contextlib.suppress(OSError, TimeoutError):
                    async with self.session.post(self.url, json=events, headers=auth) as r:
                        assert r.status == 202, await r.text()
            await asyncio.sleep(0.5)


async def test_dashboard_and_alerts_on_a_live_distributed_stack(
    cluster_factory: Any,
    prometheus_factory: PrometheusFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("NUDGE_WRITE_TOKEN", WRITE)
    monkeypatch.setenv("NUDGE_ADMIN_TOKEN", ADMIN)
    hook = WebhookReceiver()
    await hook.start()
    c: Cluster = cluster_factory(hook.url)
    (c.rules_dir / "exp.yaml").write_text(EXPERIMENT_RULE)
    hook_sink = {"type": "webhook", "url": hook.url, "max_attempts": 1}
    c.sinks_file.write_text(json.dumps({"default": "hook", "sinks": {"hook": hook_sink}}))
    ports = {name: free_port() for name in ("ingest", "w1", "w2")}
    for name, port in ports.items():
        admission = ("--admission-target", "0.002") if name == "ingest" else ()
        c.start_worker(
            name,
            "--analytics",  # the campaign counts' panels (the ingests' aggregator)
            "on",
            "--http-port",
            str(port),
            "--data",
            str(c.tmp / name),
            "--batch-size",
            "5",
            *admission,
        )
    alerts = tmp_path / "alerts.yml"
    alerts.write_text(fast_alerts(ALERTS.read_text(encoding="utf-8")), encoding="utf-8")
    workers = ", ".join(f"'127.0.0.1:{ports[n]}'" for n in ("w1", "w2"))
    prom = Prom(
        prometheus_factory(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {alerts}\n"
            "scrape_configs:\n"
            "  - job_name: nudge-ingest\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{ports['ingest']}']\n"
            "  - job_name: nudge-worker\n"
            f"    static_configs:\n      - targets: [{workers}]\n"
        ).url
    )
    base = f"http://127.0.0.1:{ports['ingest']}"
    timeout = ClientTimeout(total=30)
    async with ClientSession(timeout=timeout) as session:
        traffic_task: asyncio.Task[None] | None = None
        try:
            await wait_for(
                "all three serving",
                lambda: len(prom.query('nudge_up{job=~"nudge.*"} == 1')) == 3,
                120,
                c,
            )
            # --- a short trace: accepted, rejected, unauthorized, too late, a deploy
            auth = {"Authorization": f"Bearer {WRITE}"}
            now = int(time.time() * 1000)
            trace = make_events(400, now - 5_000)
            old = make_events(1, now - 3 * 86_400_000, prefix="old")  # past allowed lateness
            for body, token, want in (
                (trace, WRITE, 202),
                (old, WRITE, 202),
                ({"type": "page_viewed"}, WRITE, 400),
                (trace[:1], "wrong-token", 401),
            ):
                headers = {"Authorization": f"Bearer {token}"}
                async with session.post(base + "/v1/events", json=body, headers=headers) as r:
                    assert r.status == want, await r.text()
            files = {p.name: p.read_text() for p in sorted(c.rules_dir.iterdir())}
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with session.put(base + "/v1/rules", json={"files": files}, headers=admin) as r:
                assert r.status == 200, await r.text()
            # --- overload at the ingest: concurrent floods get fast 429s
            answers: list[tuple[int, float, str | None]] = []

            async def flood(k: int) -> None:
                for j in range(5):  # rounds 1 s apart: the 429 series spans scrapes
                    if j:
                        await asyncio.sleep(1.0)
                    stamp = iso(int(time.time() * 1000))
                    events = [
                        {
                            "event_id": f"flood-{k}-{j}-{i}",
                            "type": "flood_probe",
                            "customer_id": f"f{i % 100}",
                            "timestamp": stamp,
                        }
                        for i in range(200)
                    ]
                    t0 = time.perf_counter()
                    async with session.post(base + "/v1/events", json=events, headers=auth) as r:
                        await r.read()
                        answers.append(
                            (r.status, time.perf_counter() - t0, r.headers.get("Retry-After"))
                        )

            await asyncio.gather(*(flood(k) for k in range(8)))
            refused = sorted(t for status, t, _ in answers if status == 429)
            assert {status for status, _, _ in answers} <= {202, 429}, answers
            assert refused, answers
            assert all(int(ra or 0) >= 1 for status, _, ra in answers if status == 429)
            print(
                f"flood: {len(answers) - len(refused)} admitted, {len(refused)} refused; "
                f"429 answer times p50 {refused[len(refused) // 2] * 1000:.1f} ms, "
                f"max {refused[-1] * 1000:.1f} ms"
            )
            shed_query = 'sum(nudge_admission_shed_events_total{job="nudge-ingest"})'

            def shed() -> float:
                got = prom.query(shed_query)
                return float(got[0]["value"][1]) if got else 0.0

            await wait_for("the shed events scraped", lambda: shed() >= 200 * len(refused), 30, c)
            assert shed() == 200 * len(refused)
            await wait_for(
                "NudgeIngestThrottled",
                lambda: "NudgeIngestThrottled" in prom.fired_since(60),
                60,
                c,
            )
            await wait_for("the throttling alert resolved", lambda: not prom.firing(), 90, c)

            traffic = Traffic(session, base + "/v1/events")
            traffic_task = asyncio.create_task(traffic.run())

            # --- every dashboard query returns data (but nudge run's own panels)
            exprs = [e for e in dashboard_exprs(GRAFANA_VARS) if not e.startswith("label_")]
            expected_empty = {e for e in exprs if any(m in e for m in NUDGE_RUN_ONLY)}
            assert expected_empty
            assert len(exprs) - len(expected_empty) >= 40

            def missing() -> set[str]:
                return {e for e in exprs if not prom.query(e)} - expected_empty

            left: set[str] = set(exprs)

            def all_there() -> bool:
                nonlocal left
                left = missing()
                return not left

            try:
                await wait_for("every dashboard query to return data", all_there, 90, c)
            except AssertionError:
                raise AssertionError(f"no data: {sorted(left)}") from None
            for e in expected_empty:
                assert prom.query(e) == [], e

            # --- healthy: no alert fires (the shortened windows have passed meanwhile)
            await asyncio.sleep(25)
            assert prom.firing() == {}
            assert prom.fired_since(20) == set()

            # --- fault: no traffic
            traffic.on = False
            got = await wait_for(
                "NudgeNoEventsReceived", lambda: prom.firing().get("NudgeNoEventsReceived"), 90, c
            )
            assert set(prom.firing()) == {"NudgeNoEventsReceived"}, prom.firing()
            print("no events:", got)
            traffic.on = True
            await wait_for("traffic again", lambda: not prom.firing(), 90, c)

            # --- fault: the sink refuses every action
            hook.fail_next = 10**9
            await wait_for(
                "the dead-letter alerts",
                lambda: (
                    {"NudgeDeadLettersGrowing", "NudgeActionFailureRateHigh"} <= set(prom.firing())
                ),
                90,
                c,
            )
            # the sink's circuit breaker may open too (connectors/breaker.py): right as well
            also = set(prom.firing()) - {"NudgeDeadLettersGrowing", "NudgeActionFailureRateHigh"}
            assert also <= {"NudgeSinkCircuitOpen"}, prom.firing()
            print("dead letters:", prom.firing())
            hook.fail_next = 0
            await wait_for("the sink back", lambda: not prom.firing(), 90, c)

            # --- fault: the analytics lease held by a process that does not fold (another
            # deployment on the same Redis prefix): the workers write rows, none is folded
            lease = f"{c.prefix}:analytics:lease"
            rc = aioredis.Redis.from_url(c.redis_url)
            try:
                await rc.set(lease, "elsewhere:1:test", px=300_000)
                got = await wait_for(
                    "NudgeAnalyticsNotFolding",
                    lambda: prom.firing().get("NudgeAnalyticsNotFolding"),
                    90,
                    c,
                )
                assert set(prom.firing()) == {"NudgeAnalyticsNotFolding"}, prom.firing()
                folding = prom.query('sum(nudge_analytics_folding{job=~"nudge.*"})')
                assert float(folding[0]["value"][1]) == 0  # every ingest stands by
                print("not folding:", got)
            finally:
                await rc.delete(lease)  # an ingest takes it within 2 s and catches up
                await rc.aclose()
            await wait_for("folding again", lambda: not prom.firing(), 90, c)

            # --- fault: a burst the workers cannot keep up with
            stamp = iso(int(time.time() * 1000))
            burst: list[dict[str, Any] | bytes] = [
                {
                    "event_id": f"burst-{i}",
                    "type": "lag_probe",
                    "customer_id": f"b{i % 500}",
                    "timestamp": stamp,
                }
                for i in range(60_000)
            ]
            await produce(c.kafka.bootstrap, c.events_topic, burst)
            await wait_for(
                "NudgeEventBacklogHigh and NudgeWorkerLagHigh",
                lambda: {"NudgeEventBacklogHigh", "NudgeWorkerLagHigh"} <= prom.fired_since(90),
                150,
                c,
            )
            ages = prom.query(
                'max_over_time(max(nudge_worker_lag_seconds{job=~"nudge.*"})[90s:1s])'
            )
            print("backlog: max lag in seconds", ages[0]["value"][1])
            lag = prom.query('max_over_time(max(nudge_queue_depth{job=~"nudge.*"})[60s:1s])')
            print("backlog: max lag", lag[0]["value"][1])
            folds = prom.query(
                'max_over_time(max(nudge_analytics_lag_seconds{job=~"nudge.*"})[150s:1s])'
            )
            print("backlog: max analytics lag in seconds", folds[0]["value"][1] if folds else "-")
            await wait_for(
                "the backlog drained",
                lambda: (
                    float(prom.query('sum(nudge_queue_depth{job=~"nudge.*"})')[0]["value"][1]) == 0
                ),
                180,
                c,
            )
            await wait_for("the backlog alert resolved", lambda: not prom.firing(), 30, c)

            # --- fault: a worker dies
            c.kill("w2")
            down = await wait_for(
                "NudgeProcessDown", lambda: prom.firing().get("NudgeProcessDown"), 60, c
            )
            assert [a["instance"] for a in down] == [f"127.0.0.1:{ports['w2']}"]
            print("worker down:", down, "also firing:", sorted(prom.firing()))
        finally:
            if traffic_task is not None:
                traffic_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await traffic_task
            c.stop_all()
            await hook.stop()
