"""``replay`` and ``loadtest`` against a real ``nudge run`` subprocess (stock recipes,
actions routed to the webhook port the load test listens on)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from load_tests.nudge_proc import start_nudge_run, wait_ready
from load_tests.traffic import TrafficConfig, generate
from tests.support.cli import ROOT, run_cli

pytestmark = pytest.mark.slow

WRITE = "lt-write-token"
ADMIN = "lt-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    def __init__(self, base: str, hook_port: int, log: Path) -> None:
        self.base = base
        self.hook_port = hook_port
        self.log = log


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("engine")
    hook_port = free_port()
    port = free_port()
    sinks = tmp / "sinks.json"
    sinks.write_bytes(
        orjson.dumps(
            {
                "default": "hook",
                "sinks": {
                    "hook": {
                        "type": "webhook",
                        "url": f"http://127.0.0.1:{hook_port}/hook",
                        "max_attempts": 2,
                        "base_delay": 0.05,
                    }
                },
            }
        )
    )
    log = tmp / "engine.log"
    proc = start_nudge_run(tmp / "data", port, sinks, tokens=(WRITE, ADMIN), log=log, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, proc, log)
        yield Engine(base, hook_port, log)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_replay_counts_acknowledged_and_malformed(engine: Engine, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    lines = [orjson.dumps(e) for e in generate(TrafficConfig(customers=200, events=2000, seed=7))]
    assert len(lines) == 2000
    lines.insert(1000, b'{"event_id": "broken", not json')
    lines.insert(1500, b"[1, 2, 3]")  # JSON, but not an event object
    trace.write_bytes(b"\n".join(lines) + b"\n\n")  # a blank line is not a line

    res = run_cli(
        "replay", str(trace), "--target", engine.base, "--rate", "2000/s", "--token", WRITE
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary: dict[str, Any] = orjson.loads(res.stdout)
    assert summary["lines"] == 2002
    assert summary["malformed"] == 2
    assert summary["sent"] == 2000
    assert summary["acknowledged"] == summary["lines"] - summary["malformed"]
    assert summary["rejected"] == 0
    assert summary["failed"] == 0
    assert summary["statuses"].get("202", 0) >= 20  # batches of at most 100
    assert summary["pacing"] == "2000/s"


def test_replay_rejects_bad_token_and_invalid_events(engine: Engine, tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    good = [orjson.dumps(e) for e in generate(TrafficConfig(customers=20, events=30, seed=8))]
    bad = orjson.dumps({"event_id": "x1", "type": "order_completed", "customer_id": "c1"})
    trace.write_bytes(b"\n".join([*good[:10], bad, *good[10:]]) + b"\n")
    res = run_cli(
        "replay", str(trace), "--target", engine.base, "--speed", "1000000x", "--token", WRITE
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = orjson.loads(res.stdout)
    assert (summary["lines"], summary["malformed"]) == (31, 0)
    assert (summary["acknowledged"], summary["rejected"]) == (30, 1)

    res = run_cli("replay", str(trace), "--target", engine.base, "--token", "wrong")
    summary = orjson.loads(res.stdout)
    assert summary["rejected"] == summary["refused"] == 31
    assert summary["acknowledged"] == 0
    # one 401 per request, never retried (requests: one per lane holding events)
    assert summary["statuses"] == {"401": summary["requests"]}
    assert res.returncode == 1  # refused: the operator must see it, statuses included
    assert f'statuses {{"401":{summary["requests"]}}}' in res.stderr


def test_replay_warns_of_a_stale_trace_and_restamps_it(engine: Engine, tmp_path: Path) -> None:
    """A trace stamped days ago is mostly too late to trigger: a warning says so;
    --restamp moves it to now, its gaps kept (the engine then fires on it)."""
    cfg = TrafficConfig(
        customers=20, events=60, seed=9, days=0.5, late_share=0.0, duplicate_share=0.0
    )
    events = list(generate(cfg))
    trace = tmp_path / "old.jsonl"
    trace.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    common = ("replay", str(trace), "--target", engine.base, "--token", WRITE)
    res = run_cli(*common)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = orjson.loads(res.stdout)
    assert summary["stale"] == 60
    assert "warning: 60 of 60 events were stamped more than 24h before" in res.stderr
    assert "--restamp" in res.stderr

    restamped = [{**e, "event_id": "r-" + e["event_id"]} for e in events]
    trace.write_bytes(b"\n".join(orjson.dumps(e) for e in restamped) + b"\n")
    res = run_cli(*common, "--restamp")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = orjson.loads(res.stdout)
    assert (summary["stale"], summary["acknowledged"], summary["restamped"]) == (0, 60, True)
    assert "warning" not in res.stderr


def test_loadtest_writes_report_and_plots(engine: Engine, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = run_cli(
        "loadtest",
        "--target",
        engine.base,
        "--rate",
        "500",
        "--duration",
        "3",
        "--customers",
        "300",
        "--batch",
        "25",
        "--token",
        WRITE,
        "--admin-token",
        ADMIN,
        "--hook-port",
        str(engine.hook_port),
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr[-3000:] + engine.log.read_text()[-2000:]
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["requests"]["scheduled"] == 60
    assert report["requests"]["sent"] == 60
    assert report["requests"]["events_sent"] == 1500
    assert report["requests"]["events_acknowledged"] == 1500
    assert 1 <= report["requests"]["connections"] <= 256  # keep-alive, at most --connections
    assert report["requests"]["sender_cpu_s"] is None  # sent from the receiver's process
    assert report["actions_received"] >= 60  # every probe reached the receiver
    assert report["errors"] == {}
    for key in ("ingest_latency_ms", "event_to_action_ms"):
        figures = report[key]
        assert figures["count"] > 0, key
        assert 0 < figures["p50"] <= figures["p99"] <= figures["max"], key
    assert report["ingest_latency_ms"]["count"] == 60
    assert report["event_to_action_ms"]["count"] == report["probes"]["received"]
    assert report["probes"]["received"] == report["probes"]["acknowledged"] == 60
    assert report["timer_lateness_s"]["available"] is True
    assert (out / "probe.yaml").read_text().startswith("# nudge loadtest")
    md = (out / "report.md").read_text()
    assert "event to action" in md
    assert md in res.stdout
    for name in ("latency_over_time.png", "latency_distribution.png", "throughput.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG"), name
    # the probe rule was deployed for the run only
    req = urllib.request.Request(
        engine.base + "/v1/rules", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        ids = [rule["id"] for rule in orjson.loads(r.read())["rules"]]
    assert "loadtest-probe" not in ids


def test_loadtest_from_sender_processes_with_a_recovery(engine: Engine, tmp_path: Path) -> None:
    """Two forked senders share the schedule; the run at --rate is followed by the
    recovery at --recover-rate; the report has every answer's latency, the refused
    count, the target's RSS and the recovery windows."""
    out = tmp_path / "overload"
    res = run_cli(
        "loadtest",
        "--target",
        engine.base,
        "--rate",
        "600",
        "--duration",
        "2",
        "--recover",
        "2",
        "--recover-rate",
        "300",
        "--senders",
        "2",
        "--overload",
        "--customers",
        "300",
        "--batch",
        "20",
        "--token",
        WRITE,
        "--admin-token",
        ADMIN,
        "--hook-port",
        str(engine.hook_port),
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr[-3000:] + engine.log.read_text()[-2000:]
    report = orjson.loads((out / "report.json").read_bytes())
    assert report["config"]["senders"] == 2
    req = report["requests"]
    assert req["scheduled"] == req["sent"] == 60 + 30
    assert req["events_sent"] == 1200 + 600
    assert req["sender_cpu_s"] > 0
    assert req["events_per_sender_cpu_s"] > 0
    assert req["connections"] >= 2  # each of the two sender processes opens its own
    answered = sum(v for k, v in report["statuses"].items() if k != "connection_error")
    assert report["ingest_all_answers_ms"]["count"] == answered == 90
    assert report["refused"]["requests"] == report["statuses"].get("429", 0)
    assert req["events_acknowledged"] + report["refused"]["events"] == 1800
    assert report["event_to_action_during_run_ms"]["count"] > 0
    assert report["rss_mb"]["max"] > 10
    rec = report["recovery"]
    assert rec["normal_p99_ms"] > 0
    assert [sec for sec, _ in rec["window_p99_ms"]] == [0, 1]
    assert rec["back_to_normal_s"] in (0, 1, None)
    md = (out / "report.md").read_text()
    assert "back to normal after the run" in md
    assert "every answer (429s too)" in md
    assert (out / "throughput.png").read_bytes().startswith(b"\x89PNG")
