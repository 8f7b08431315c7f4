"""Benchmark one ``nudge worker`` (faust on Kafka, Redis for sends).

Phase 1 (throughput): N events are produced to the ``events`` topic before the worker
starts; events/s = N / time from the worker's first processed batch until all N are
processed (stats polled every 0.2 s). Phase 2 (latency): ``--rate`` events/s for
``--seconds`` once caught up; event-to-action latency = webhook arrival - acceptance
time (the Kafka timestamp, which is the immediate actions' ``fire_at``).

Uses ``--broker``/``--redis`` when given, else starts the test servers
(tests/support/servers.py). Prints one JSON object.

    python -m load_tests.bench_worker --events 100000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from engine.types import to_ms

ROOT = Path(__file__).resolve().parents[1]
RULES = {
    "settings.yaml": "kind: settings\ndefault_consent: {email: true, sms: true, webhook: true}\n",
    "order.yaml": (
        "id: order-thanks\ntrigger: {event: order_completed}\n"
        "steps:\n  - send: {channel: webhook, template: thanks}\n"
    ),
    "cart.yaml": (
        "id: cart-later\ntrigger: {event: cart_item_added}\nreentry: once\n"
        "steps:\n  - wait: 1s\n  - send: {channel: webhook, template: later}\n"
    ),
}
KINDS = [
    ("product_viewed", b'{"product_id":"p1"}'),
    ("cart_item_added", b'{"product_id":"p2","price":5.0}'),
    ("page_viewed", b"{}"),
    ("product_viewed", b'{"product_id":"p3"}'),
    ("page_viewed", b"{}"),
    ("product_viewed", b'{"product_id":"p4"}'),
    ("page_viewed", b"{}"),
    ("product_viewed", b'{"product_id":"p5"}'),
    ("page_viewed", b"{}"),
    ("order_completed", b'{"order_id":"o","total":12.0}'),
]


def event(i: int, prefix: str, customers: int, ts_iso: str) -> tuple[bytes, bytes]:
    etype, props = KINDS[i % len(KINDS)]
    cid = f"{prefix}{i % customers}"
    body = (
        b'{"event_id":"%s-%d","type":"%s","customer_id":"%s","timestamp":"%s","properties":%s}'
        % (prefix.encode(), i, etype.encode(), cid.encode(), ts_iso.encode(), props)
    )
    return cid.encode(), body


async def produce(bootstrap: str, topic: str, n: int, prefix: str, customers: int) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    try:
        now = int(time.time() * 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000))
        futs = []
        for i in range(n):
            key, value = event(i, prefix, customers, ts)
            futs.append(await producer.send(topic, value, key=key, timestamp_ms=now))
            if len(futs) >= 20_000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def paced(bootstrap: str, topic: str, rate: int, seconds: float, prefix: str) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    try:
        i = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            now = int(time.time() * 1000)
            ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now / 1000))
            due = int((time.monotonic() - t0) * rate)
            while i < due:
                key, value = event(i, prefix, 5000, ts)
                await producer.send(topic, value, key=key, timestamp_ms=now)
                i += 1
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()


def stats(path: Path) -> dict[str, Any]:
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    servers: list[Any] = []
    broker, redis_url = args.broker, args.redis
    if broker is None or redis_url is None:
        sys.path.insert(0, str(ROOT))
        from tests.support.servers import start_kafka, start_redis

        if broker is None:
            servers.append(start_kafka())
            broker = servers[-1].url
        if redis_url is None:
            servers.append(start_redis())
            redis_url = servers[-1].url
    bootstrap = broker.removeprefix("kafka://")
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
    rules = tmp / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text)
    arrivals: list[tuple[int, int]] = []  # (arrival ms, fire_at ms) of phase-2 actions

    async def hook(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if body["customer_id"].startswith("lat"):
            fire_ms = to_ms(datetime.fromisoformat(body["fire_at"].replace("Z", "+00:00")))
            arrivals.append((int(time.time() * 1000), fire_ms))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sinks = tmp / "sinks.json"
    hook_url = f"http://127.0.0.1:{port}/hook"
    sinks.write_bytes(
        orjson.dumps({"default": "h", "sinks": {"h": {"type": "webhook", "url": hook_url}}})
    )
    run_id = uuid.uuid4().hex[:8]
    topic = f"bench-events-{run_id}"
    t0 = time.perf_counter()
    await produce(bootstrap, topic, args.events, "b", args.customers)
    produce_s = time.perf_counter() - t0
    stats_file = tmp / "stats.json"
    cmd = [
        sys.executable, "-m", "engine.distributed.cli", "worker",
        "--broker", broker, "--redis", redis_url, "--app-id", f"bench-{run_id}",
        "--partitions", str(args.partitions), "--events-topic", topic,
        "--actions-topic", f"bench-actions-{run_id}", "--rules", str(rules),
        "--sinks", str(sinks), "--redis-prefix", f"bench{run_id}",
        "--batch-size", str(args.batch_size), "--stats-file", str(stats_file),
        "--stats-interval", "0.2", "--loglevel", "WARNING",
    ]  # fmt: skip
    log = (tmp / "worker.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
    result: dict[str, Any] = {"events": args.events, "produce_seconds": round(produce_s, 2)}
    try:
        first: float | None = None
        first_n = 0
        while True:
            s = stats(stats_file).get("engine", {})
            n = s.get("events", 0)
            if first is None and n > 0:
                first, first_n = time.monotonic(), n
            if n >= args.events:
                break
            if proc.poll() is not None:
                raise SystemExit("worker exited: " + (tmp / "worker.log").read_text()[-2000:])
            await asyncio.sleep(0.05)
        assert first is not None
        wall = time.monotonic() - first
        s = stats(stats_file)["engine"]
        result["events_per_second_wall"] = round((args.events - first_n) / max(wall, 1e-9))
        result["events_per_second_processing"] = round(
            s["events"] / max(s["processing_seconds"], 1e-9)
        )
        result["actions"] = s["actions"]
        if args.seconds > 0:
            await paced(bootstrap, topic, args.rate, args.seconds, "lat")
            await asyncio.sleep(3)
            lat = sorted(a - f for a, f in arrivals)
            if lat:
                result["latency_phase"] = {
                    "rate": args.rate,
                    "seconds": args.seconds,
                    "actions": len(lat),
                    "event_to_action_ms_p50": lat[len(lat) // 2],
                    "event_to_action_ms_p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
                }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        await runner.cleanup()
        for srv in servers:
            srv.stop()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--broker")
    p.add_argument("--redis")
    args = p.parse_args()
    print(orjson.dumps(asyncio.run(run(args))).decode())


if __name__ == "__main__":
    main()
