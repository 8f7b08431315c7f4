"""Benchmark ``nudge worker`` (faust on Kafka, Redis for sends).

Throughput (default): N events are produced to the ``events`` topic before one worker
starts; events/s = events processed / time from the worker's first processed batch
until all N are processed (stats polled every 50 ms), and the same per CPU-second of the
worker process (utime + stime over that window). The worker delivers the actions of
those events (Redis claims, webhook POSTs) in the same process while it processes
(``--split``: a second worker, ``--role deliver``, delivers and the first only processes),
so also: events / time from the first batch until the last of their actions was
delivered. Then the latency phase: ``--rate`` events/s for ``--seconds``;
event-to-action latency = webhook arrival - the event's Kafka timestamp (set by the
producer as it sends; an order's "thanks" action fires at once, so its ``fire_at`` is
that timestamp). Timer actions
(cart "later", due 1 s after the event) are reported apart: arrival - due time.

Failover (``--failover``): two workers own the partitions; cart events whose 1 s waits
come due every 10 ms over the next minute are produced to explicit partitions; one
worker is killed with SIGKILL; failover time = the first webhook arrival of a timer
action from one of the dead worker's partitions that came due after the kill, minus
the kill time. The survivor's rebalance (all partitions owned, from its stats) is shown
too. ``--session-timeout`` bounds how long the group waits for the dead worker.

Campaign analytics (``--analytics off|on|both``, default off): the workers run with
``--analytics`` on or off; ``both`` runs the throughput measurement off and on on the
same servers, ``--repeat`` rounds (off-on, then on-off, ...), and prints every run and the
medians. With analytics on, the changelog's counts are
then folded into Redis by a :class:`~engine.distributed.analytics.ChangelogAggregator`
in this process (the workers stopped): its records/s, and the sends it folded against
the worker's actions.

Uses ``--broker``/``--redis`` when given, else starts the test servers
(tests/support/servers.py). Prints one JSON object.

    python -m load_tests.bench_worker --events 200000
    python -m load_tests.bench_worker --failover --session-timeout 10
    python -m load_tests.bench_worker --events 100000 --seconds 0 --analytics both --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
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
    """A worker's ``--stats-file`` ({} while it is missing, or caught mid-replace)."""
    try:
        return dict(orjson.loads(path.read_bytes()))
    except (OSError, orjson.JSONDecodeError):
        return {}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[int], q: float) -> int:
    return values[min(len(values) - 1, int(len(values) * q))]


@dataclass
class Arrival:
    at: int  # wall ms at the webhook
    fire_at: int
    customer_id: str
    template: str


@dataclass
class Bench:
    """Servers, a webhook receiver, rule files and sinks shared by the workers of a run."""

    broker: str
    redis_url: str
    tmp: Path
    hook_url: str
    arrivals: list[Arrival] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def bootstrap(self) -> str:
        return self.broker.removeprefix("kafka://")

    @property
    def topic(self) -> str:
        return f"bench-events-{self.run_id}"

    def start_worker(
        self, name: str, args: argparse.Namespace, role: str = "all"
    ) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable, "-m", "engine.distributed.cli", "worker",
            "--broker", self.broker, "--redis", self.redis_url,
            "--app-id", f"bench-{self.run_id}", "--partitions", str(args.partitions),
            "--events-topic", self.topic, "--actions-topic", f"bench-actions-{self.run_id}",
            "--rules", str(self.tmp / "rules"), "--sinks", str(self.tmp / "sinks.json"),
            "--redis-prefix", f"bench{self.run_id}", "--batch-size", str(args.batch_size),
            "--session-timeout", str(getattr(args, "session_timeout", 10.0)),
            "--stats-file", str(self.stats_path(name)), "--stats-interval", "0.1",
            "--loglevel", "WARNING", "--role", role,
            "--analytics", "on" if getattr(args, "analytics_on", False) else "off",
        ]  # fmt: skip
        log = (self.tmp / f"{name}.log").open("wb")
        try:
            return subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ
            )
        finally:
            log.close()

    def stats_path(self, name: str) -> Path:
        return self.tmp / f"{name}.stats.json"

    def stats(self, name: str) -> dict[str, Any]:
        return stats(self.stats_path(name))

    def log_tail(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def bench_env(args: argparse.Namespace) -> AsyncIterator[Bench]:
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
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-"))
    rules = tmp / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / name).write_text(text)
    arrivals: list[Arrival] = []

    async def hook(request: web.Request) -> web.Response:
        at = int(time.time() * 1000)
        body = orjson.loads(await request.read())
        fire_ms = to_ms(datetime.fromisoformat(body["fire_at"].replace("Z", "+00:00")))
        arrivals.append(Arrival(at, fire_ms, body["customer_id"], body["template"]))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook_url = f"http://127.0.0.1:{port}/hook"
    (tmp / "sinks.json").write_bytes(
        orjson.dumps({"default": "h", "sinks": {"h": {"type": "webhook", "url": hook_url}}})
    )
    b = Bench(broker, redis_url, tmp, hook_url, arrivals)
    try:
        await create_topic(b.bootstrap, b.topic, args.partitions)
        yield b
    finally:
        await runner.cleanup()
        for srv in servers:
            srv.stop()


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def wait_for(cond: Any, b: Bench, procs: dict[str, Any], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"worker {name} exited: {b.log_tail(name)}")
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}: {[b.stats(n) for n in procs]}")
        await asyncio.sleep(0.05)


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    async with bench_env(args) as b:
        t0 = time.perf_counter()
        await produce(b.bootstrap, b.topic, args.events, "b", args.customers)
        result: dict[str, Any] = {
            "events": args.events,
            "produce_seconds": round(time.perf_counter() - t0, 2),
        }
        proc = b.start_worker("w1", args, "process" if args.split else "all")
        procs = {"w1": proc}
        sender = "w1"
        if args.split:
            sender = "d1"
            procs[sender] = b.start_worker(sender, args, "deliver")
        try:
            first: float | None = None
            first_n = 0
            cpu0 = 0.0
            while True:
                s = b.stats("w1").get("engine", {})
                n = s.get("events", 0)
                if first is None and n > 0:
                    first, first_n, cpu0 = time.monotonic(), n, cpu_seconds(proc.pid)
                if n >= args.events:
                    break
                await wait_for(lambda: True, b, procs, 1, "")
                await asyncio.sleep(0.05)
            assert first is not None
            wall = time.monotonic() - first
            cpu = cpu_seconds(proc.pid) - cpu0
            s = b.stats("w1")["engine"]
            done = args.events - first_n
            result["events_per_second_wall"] = round(done / max(wall, 1e-9))
            result["events_per_worker_cpu_second"] = round(done / max(cpu, 1e-9))
            result["events_per_second_processing"] = round(
                s["events"] / max(s["processing_seconds"], 1e-9)
            )
            result["events_per_second_core"] = round(s["events"] / max(s["core_seconds"], 1e-9))
            result["batches"] = s["batches"]

            def drained() -> bool:
                d = b.stats(sender).get("delivery", {})
                actions = b.stats("w1")["engine"]["actions"]
                return bool(d) and d["sent"] + d["skipped_done"] >= actions

            await wait_for(drained, b, procs, 300, "the backlog's actions to be delivered")
            delivered = time.monotonic() - first
            result["actions"] = b.stats("w1")["engine"]["actions"]
            result["events_per_second_to_last_action_delivered"] = round(done / delivered)
            if args.seconds > 0:
                result["latency_phase"] = await latency(args, b, procs)
        finally:
            stop(list(procs.values()))
        if getattr(args, "analytics_on", False):
            result["aggregator"] = await fold_changelog(b, result["actions"])
    return result


async def fold_changelog(b: Bench, actions: int) -> dict[str, Any]:
    """Fold the run's changelog into Redis with one aggregator (the workers stopped):
    records/s, and the sends folded (equal to the worker's actions)."""
    import redis.asyncio as aioredis

    from engine.distributed.analytics import ChangelogAggregator
    from engine.distributed.storage.analytics import RedisAnalytics

    client = aioredis.Redis.from_url(b.redis_url)
    try:
        store = RedisAnalytics(client, prefix=f"bench{b.run_id}")
        agg = ChangelogAggregator(b.broker, f"bench-{b.run_id}-customers-changelog", store)
        t0 = time.perf_counter()
        await agg.start()
        while agg.lag() != 0:
            await asyncio.sleep(0.02)
        took = time.perf_counter() - t0
        await agg.stop()
        day = int(time.time() * 1000) // 86_400_000
        totals = await store.day_totals(day - 1, day + 1)
        sends = sum(t[1] for _, _, _, t in totals)
    finally:
        await client.aclose()
    return {
        "records": agg.folded,
        "seconds": round(took, 2),
        "records_per_second": round(agg.folded / max(took, 1e-9)),
        "sends_folded": sends,
        "sends_equal_actions": sends == actions,
    }


async def compare_analytics(args: argparse.Namespace) -> dict[str, Any]:
    """The throughput run with analytics off, then on, on the same servers."""
    servers: list[Any] = []
    if args.broker is None or args.redis is None:
        sys.path.insert(0, str(ROOT))
        from tests.support.servers import start_kafka, start_redis

        if args.broker is None:
            servers.append(start_kafka())
            args.broker = servers[-1].url
        if args.redis is None:
            servers.append(start_redis())
            args.redis = servers[-1].url
    try:
        runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for i in range(args.repeat):  # off, on, on, off, ...: neither always goes first
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                args.analytics_on = mode == "on"
                runs[mode].append(await throughput(args))
        out: dict[str, Any] = {f"analytics_{m}": r for m, r in runs.items()}
        for k in ("events_per_second_wall", "events_per_worker_cpu_second"):
            off = statistics.median(r[k] for r in runs["off"])
            on = statistics.median(r[k] for r in runs["on"])
            out[f"{k}_median"] = {"off": off, "on": on, "on_vs_off": round(on / max(off, 1), 3)}
        return out
    finally:
        for srv in servers:
            srv.stop()


async def latency(args: argparse.Namespace, b: Bench, procs: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(2)  # the backlog's last 1 s timers fire and are delivered
    t0 = int(time.time() * 1000)
    await paced(b.bootstrap, b.topic, args.rate, args.seconds, "lat")
    await asyncio.sleep(3)
    mine = [a for a in b.arrivals if a.customer_id.startswith("lat") and a.at >= t0]
    now_ = sorted(a.at - a.fire_at for a in mine if a.template == "thanks")
    timers = sorted(a.at - a.fire_at for a in mine if a.template == "later")
    out: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds}
    if now_:
        out["event_to_action_ms"] = {
            "n": len(now_), "p50": pct(now_, 0.5), "p99": pct(now_, 0.99), "max": now_[-1]
        }  # fmt: skip
    if timers:
        out["due_to_action_ms"] = {
            "n": len(timers), "p50": pct(timers, 0.5), "p99": pct(timers, 0.99),
            "max": timers[-1],
        }  # fmt: skip
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """The throughput run (and latency phase when ``args.seconds``): used by
    load_tests/peers/compare.py."""
    return await throughput(args)


def iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


async def failover(args: argparse.Namespace) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    async with bench_env(args) as b:
        procs = {"w1": b.start_worker("w1", args), "w2": b.start_worker("w2", args)}
        try:

            def spread() -> bool:
                parts = [b.stats(n).get("engine", {}).get("partitions", []) for n in procs]
                return all(parts) and sum(len(p) for p in parts) == args.partitions

            await wait_for(spread, b, procs, 120, "both workers to own partitions")
            victim = set(b.stats("w2")["engine"]["partitions"])
            # cart events now, each due 1 s after its own time: one every 10 ms for 60 s
            producer = AIOKafkaProducer(bootstrap_servers=b.bootstrap, acks="all", linger_ms=5)
            await producer.start()
            now = int(time.time() * 1000)
            n = 6000
            try:
                for i in range(n):
                    cid = f"fo{i}"
                    body = orjson.dumps(
                        {
                            "event_id": f"fo-{i}",
                            "type": "cart_item_added",
                            "customer_id": cid,
                            "timestamp": iso_ms(now + 2000 + 10 * i),
                            "properties": {"product_id": "p", "price": 5.0},
                        }
                    )
                    part = i % args.partitions
                    await producer.send(b.topic, body, key=cid.encode(), partition=part)
                await producer.flush()
            finally:
                await producer.stop()

            def fired_both() -> bool:
                fired = {int(a.customer_id[2:]) % args.partitions for a in b.arrivals}
                return bool(len(fired) == args.partitions)

            await wait_for(fired_both, b, procs, 60, "timers firing on both workers")
            await asyncio.sleep(args.kill_after)
            w2 = procs.pop("w2")
            kill_at = int(time.time() * 1000)
            w2.send_signal(signal.SIGKILL)
            w2.wait()

            def owns_all() -> bool:
                owned = b.stats("w1").get("engine", {}).get("partitions", [])
                return bool(len(owned) == args.partitions)

            await wait_for(owns_all, b, procs, 120, "the survivor to own every partition")
            owned_at = int(time.time() * 1000)

            def taken_over() -> list[Arrival]:
                return [
                    a
                    for a in b.arrivals
                    if a.template == "later"
                    and int(a.customer_id[2:]) % args.partitions in victim
                    and a.fire_at > kill_at
                ]

            await wait_for(lambda: bool(taken_over()), b, procs, 120, "a taken-over timer")
            first = min(a.at for a in taken_over())
            restored = b.stats("w1")["engine"]["timers_restored"]
            return {
                "partitions": args.partitions,
                "session_timeout_s": args.session_timeout,
                "killed_partitions": sorted(victim),
                "survivor_owns_all_after_ms": owned_at - kill_at,
                "failover_ms_kill_to_first_taken_over_timer_at_sink": first - kill_at,
                "survivor_timers_restored": restored,
            }
        finally:
            stop(list(procs.values()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument(
        "--split",
        action="store_true",
        help="process events in one worker (--role process), deliver in another (--role deliver)",
    )
    p.add_argument("--failover", action="store_true")
    p.add_argument(
        "--analytics",
        choices=("off", "on", "both"),
        default="off",
        help="workers count campaign analytics; both: off and on, same servers",
    )
    p.add_argument("--repeat", type=int, default=1, help="with --analytics both: rounds")
    p.add_argument("--kill-after", type=float, default=3.0, help="s after timers start")
    p.add_argument("--broker")
    p.add_argument("--redis")
    args = p.parse_args()
    args.analytics_on = args.analytics == "on"
    run = failover if args.failover else throughput
    if args.analytics == "both" and not args.failover:
        run = compare_analytics
    print(orjson.dumps(asyncio.run(run(args))).decode())


if __name__ == "__main__":
    main()
