"""Peers side by side: the abandoned-cart recipe in Nudge, faust-streaming and quixstreams
on one trace and one real Kafka broker.

Generates one trace with :mod:`load_tests.traffic`, produces it (key = customer id, JSON
value) to a fresh 4-partition topic, then runs each peer as a subprocess over it, one after
the other (``faust_cart``, ``quix_cart``). A peer's events/s is measured inside the peer:
events / (time of its last processed event - time of its first consumed event).
Nudge's reference is ``engine.backtest`` over the same trace (all stock recipes loaded; the
count is filtered to rule ``abandoned-cart``, channel ``email``); ``emails_due_by_last_event``
counts only the emails whose ``fire_at`` is not after the trace's last clock — the
backtest drains timers 400 days past the end, which no peer does. Prints one JSON object.

    python -m load_tests.peers.compare --events 50000

``--broker`` reuses a running broker (``host:port``), else ``tests/support/servers.
start_kafka()`` starts one. ``--nudge-worker`` also runs ``nudge worker`` over the same
topic with the same recipe (:mod:`load_tests.peers.nudge_worker`; it starts a Redis). The
trace is stamped from the moment it is generated (the peers run on event time, so this
changes nothing for them; the worker processes events at their acceptance time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from load_tests.traffic import TrafficConfig, generate

__all__ = ["compare", "main"]

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("faust", "quix")
PARTITIONS = 4


async def _produce(bootstrap: str, topic: str, lines: list[bytes], keys: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        futs = []
        for key, line in zip(keys, lines, strict=True):
            futs.append(await producer.send(topic, line, key=key))
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def nudge_reference(lines: list[bytes]) -> dict[str, Any]:
    from engine.backtest import backtest
    from rules.ruleset import load_ruleset

    t0 = time.perf_counter()
    result = backtest(load_ruleset(), lines)
    secs = time.perf_counter() - t0
    mine = [a for a in result.actions if a.rule_id == "abandoned-cart"]
    last = max(_ts(line) for line in lines)
    emails = [a for a in mine if a.channel == "email"]
    return {
        "emails": len(emails),
        "emails_due_by_last_event": sum(1 for a in emails if a.fire_at <= last),
        "sms": sum(1 for a in mine if a.channel == "sms"),
        "backtest_events_per_second_all_recipes": round(len(lines) / max(secs, 1e-9)),
    }


def _ts(line: bytes) -> int:
    from load_tests.peers.cart_rule import ts_ms

    return ts_ms(orjson.loads(line)["timestamp"])


def run_peer(
    name: str, bootstrap: str, topic: str, expected: int, tmp: Path, timeout: float
) -> dict[str, Any]:
    app_id = f"peer-{name}-{uuid.uuid4().hex[:8]}"
    result_file = tmp / f"{name}.json"
    argv = [bootstrap, topic, app_id, str(expected), str(result_file)]
    if name == "quix":
        argv.append(str(tmp / "quix-state"))
    cmd = [sys.executable, "-m", f"load_tests.peers.{name}_cart", *argv]
    log_path = tmp / f"{name}.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
    if not result_file.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"peer {name} produced no result (rc={rc}); log tail:\n{tail}")
    out: dict[str, Any] = json.loads(result_file.read_text())
    out["wall_seconds_incl_startup"] = round(time.monotonic() - started, 2)
    out["exit_code"] = rc
    return out


def compare(
    events: int = 50_000,
    customers: int | None = None,
    seed: int = 1,
    broker: str | None = None,
    nudge_worker: bool = False,
    timeout: float = 600.0,
) -> dict[str, Any]:
    cfg = TrafficConfig(
        customers=customers or max(100, events // 10),
        events=events,
        seed=seed,
        start=time.time_ns() // 1_000_000,
    )
    trace = list(generate(cfg))
    lines = [orjson.dumps(ev) for ev in trace]
    keys = [str(ev["customer_id"]).encode() for ev in trace]
    servers: list[Any] = []
    if broker is None:
        sys.path.insert(0, str(ROOT))
        from tests.support.servers import start_kafka

        servers.append(start_kafka())
        broker = str(servers[0].bootstrap)
    bootstrap = broker.removeprefix("kafka://")
    tmp = Path(tempfile.mkdtemp(prefix="nudge-peers-"))
    result: dict[str, Any] = {
        "trace": {"events": len(lines), "customers": cfg.customers, "seed": seed},
        "partitions": PARTITIONS,
    }
    try:
        topic = f"peers-events-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        asyncio.run(_produce(bootstrap, topic, lines, keys))
        result["produce_seconds"] = round(time.perf_counter() - t0, 2)
        result["nudge_backtest"] = nudge_reference(lines)
        for name in PEERS:
            result[name] = run_peer(name, bootstrap, topic, len(lines), tmp, timeout)
        if nudge_worker:
            from load_tests.peers.nudge_worker import run_nudge_worker

            result["nudge_worker"] = run_nudge_worker(
                bootstrap, topic, len(lines), PARTITIONS, tmp, timeout
            )
            for name in PEERS:
                if result["nudge_worker"]["events_per_second"]:
                    result[f"ratio_nudge_worker_to_{name}"] = round(
                        result["nudge_worker"]["events_per_second"]
                        / max(1, result[name]["events_per_second"]),
                        2,
                    )
        result["note"] = (
            "the peers fire a timer only when a later event arrives (faust: any event on the "
            "same partition; quix: the same customer's next event) and never after the last "
            "event, while the engine fires on time and drains 400 days past the end: compare "
            "faust with emails_due_by_last_event; quix misses every abandoned cart whose "
            "customer sends nothing more. quiet_hours and the cross-rule channel caps are not "
            "modelled in the peers, so small differences either way are expected."
        )
    finally:
        for srv in servers:
            srv.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m load_tests.peers.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--customers", type=int, help="default: events / 10")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--broker", help="host:port of a running Kafka (else one is started)")
    ap.add_argument(
        "--nudge-worker", action="store_true", help="also run nudge worker on the same topic"
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="per peer, seconds")
    args = ap.parse_args(argv)
    res = compare(args.events, args.customers, args.seed, args.broker, args.nudge_worker,
                  args.timeout)  # fmt: skip
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
