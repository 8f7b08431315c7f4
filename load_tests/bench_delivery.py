"""Benchmark: delivery throughput of the embedded outbox to a healthy webhook receiver,
before and after the outage-proof delivery (issue 19), in the same run.

"before" is ``engine/embedded/outbox.py`` as of ``--before-rev`` (default: the commit
before the per-customer lanes, timer heap and breakers), loaded from git into a module of
its own; "after" is the current one. Both get the same SQLite store settings, the same
router (one webhook sink, no signing unless ``--sign``), the same ``--concurrency``
delivery tasks and the same actions: ``--customers`` customers with ``--per-customer``
actions each, all due at once. The receiver is an aiohttp server in another process that
answers 200 at once. Each round: add every action to a fresh outbox, time until the last
is delivered (nudge_actions_total{outcome=delivered}); rounds alternate before/after and
the median of ``--rounds`` is reported.

    python -m load_tests.bench_delivery --customers 2000 --per-customer 5 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from connectors.deadletter import DeadLetterStore
from connectors.routing import Router
from engine.clock import SystemClock
from engine.embedded.storage.sqlite import SqliteStore
from engine.metrics import Metrics
from engine.types import Action

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
BEFORE_REV = "3de56da^"


def _serve(port: int) -> None:  # the receiver process
    from aiohttp import web

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _old_outbox(rev: str) -> ModuleType:
    src = subprocess.run(
        ["git", "show", f"{rev}:engine/embedded/outbox.py"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="nudge-bench-")) / "outbox_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("outbox_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _actions(customers: int, per: int, now: int) -> list[Action]:
    return [
        Action("bench", 1, f"c{c}", "webhook", "t", {"i": i}, "a", f"k-{c}-{i}", now)
        for c in range(customers)
        for i in range(per)
    ]


async def _round(outbox_cls: Any, url: str, args: argparse.Namespace, sign: str | None) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="nudge-bench-delivery-"))
    hook: dict[str, Any] = {"type": "webhook", "url": url}
    env = {}
    if sign:
        hook["signing_secret_env"] = "BENCH_SECRET"
        env["BENCH_SECRET"] = sign
    router = Router.from_config({"default": "hook", "sinks": {"hook": hook}}, env=env)
    await router.start_all()
    store = SqliteStore(tmp / "data", "NORMAL")
    dead = DeadLetterStore(tmp / "dead.db")
    metrics = Metrics()
    pool = ThreadPoolExecutor(1)  # the runtime's one DB thread
    loop = asyncio.get_running_loop()

    async def db(fn: Any, *a: Any) -> Any:
        return await loop.run_in_executor(pool, fn, *a)

    clock = SystemClock()
    outbox = outbox_cls(db, store, router, dead, metrics, clock, concurrency=args.concurrency)
    outbox.start()
    actions = _actions(args.customers, args.per_customer, clock.now())
    n = len(actions)
    delivered = metrics.actions.labels("webhook", "delivered")
    t0 = time.perf_counter()
    for a in actions:
        outbox.add(a, False)
    while delivered._value.get() < n:
        await asyncio.sleep(0.005)
    took = time.perf_counter() - t0
    await outbox.close()
    await router.close_all()
    store.close()
    dead.close()
    pool.shutdown()
    return n / took


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.embedded.outbox import Outbox

    before = _old_outbox(args.before_rev).Outbox
    port = _free_port()
    proc = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}/hook"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        sign = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" if args.sign else None
        results: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            results["before"].append(await _round(before, url, args, None))
            results["after"].append(await _round(Outbox, url, args, None))
            if sign:
                results.setdefault("after_signed", []).append(await _round(Outbox, url, args, sign))
    finally:
        proc.terminate()
        proc.join()
    return {k: statistics.median(v) for k, v in results.items()} | {"raw": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--customers", type=int, default=2000)
    p.add_argument("--per-customer", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--before-rev", default=BEFORE_REV)
    p.add_argument("--sign", action="store_true", help="also time the current one, signing")
    args = p.parse_args(argv)
    out = asyncio.run(run(args))
    n = args.customers * args.per_customer
    print(f"actions per round: {n} ({args.customers} customers x {args.per_customer})")
    for name in ("before", "after", "after_signed"):
        if name in out:
            raw = ", ".join(f"{v:,.0f}" for v in out["raw"][name])
            print(f"{name:>13}: {out[name]:,.0f} actions/s (rounds: {raw})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
