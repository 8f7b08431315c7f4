"""Erase latency on `nudge run` with a large data directory (issue 24: p99 <= 1 s at 1M
customers).

The data directory is built once (kept under ``--dir``; rebuilt when the customer count
differs or with ``--rebuild``): every customer signs up with an email attribute and views
a product, and a rule sends each a welcome email through a JSONL file sink, so the
journal holds every event, the checkpoint every state, the outbox a sent row and the
actions file a line per customer. Then `nudge run` is restarted on it, given
``--settle`` seconds (the journal's customer index is built in the background after
start), and ``--erase`` customers picked at random are erased one after the other over
HTTP (``DELETE /v1/customers/{id}``); the client-side latency of each is reported (p50,
p99, max) with what the answers counted, and the data directory's sizes.

``--baseline DIR``: a checkout of the code before the erase indexes (``git archive
<commit> | tar -x -C DIR``) is run first on the same data directory ("off": its outbox
customer index dropped first, other customers erased), then this code ("on").

    python -m load_tests.bench_erase --customers 1000000 --erase 100 --dir /tmp/nudge-erase \
        --baseline /tmp/nudge-base
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector

from load_tests.nudge_proc import start_nudge_run, wait_ready

__all__ = ["main"]

TOKEN, ADMIN = "bench-erase-write", "bench-erase-admin"
RULE = """\
id: welcome-now
trigger: {event: customer_signed_up}
steps:
  - send: {channel: email, template: welcome}
"""
_BATCH = 1000  # events a request


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _iso(ms: int) -> str:
    from engine.types import iso

    return iso(ms)


def _events(first: int, last: int, at: str) -> bytes:
    out = []
    for c in range(first, last):
        cid = f"c{c}"
        out.append(
            {
                "event_id": f"s{c}",
                "type": "customer_signed_up",
                "customer_id": cid,
                "timestamp": at,
                "properties": {"attributes": {"email": f"{cid}@example.com"}},
            }
        )
        out.append(
            {
                "event_id": f"v{c}",
                "type": "product_viewed",
                "customer_id": cid,
                "timestamp": at,
                "properties": {"product_id": f"p{c % 500}"},
            }
        )
    return orjson.dumps(out)


async def _metric(session: ClientSession, base: str, name: str) -> float:
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


async def _build(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Post every customer's events, wait until processed and delivered, stop cleanly."""
    port = _port()
    base = f"http://127.0.0.1:{port}"
    proc = start_nudge_run(
        root / "data",
        port,
        root / "sinks.json",
        tokens=(TOKEN, ADMIN),
        log=root / "build.log",
        rules=root / "rules",
    )
    t0 = time.monotonic()
    try:
        await asyncio.to_thread(wait_ready, port, proc, root / "build.log")
        at = _iso(int(time.time() * 1000))
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        per = _BATCH // 2
        starts = iter(range(0, args.customers, per))

        async def poster(session: ClientSession) -> None:
            for s in starts:
                body = _events(s, min(s + per, args.customers), at)
                while True:
                    async with session.post(f"{base}/v1/events", data=body, headers=headers) as r:
                        await r.read()
                        if r.status == 202:
                            break
                        if r.status not in (429, 503, 507):
                            raise RuntimeError(f"ingest answered {r.status}")
                    await asyncio.sleep(0.1)

        async with ClientSession(connector=TCPConnector(limit=8)) as session:
            await asyncio.gather(*(poster(session) for _ in range(8)))
            posted = time.monotonic() - t0
            while await _metric(session, base, "nudge_events_processed_total") < 2 * args.customers:
                await asyncio.sleep(1)
            while await _metric(session, base, "nudge_outbox_pending") > 0:
                await asyncio.sleep(1)
    finally:
        proc.terminate()  # a final checkpoint
        proc.wait(timeout=600)
    return {"posted_s": round(posted, 1), "built_s": round(time.monotonic() - t0, 1)}


def _sizes(root: Path) -> dict[str, float]:
    out = {}
    for p in sorted((root / "data").iterdir()):
        if p.is_file() and p.stat().st_size > 1_000_000:
            out[p.name] = round(p.stat().st_size / 1e6, 1)
    out["actions.jsonl"] = round((root / "actions.jsonl").stat().st_size / 1e6, 1)
    return out


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _erase(
    args: argparse.Namespace, root: Path, ids: list[int], cwd: Path | None
) -> dict[str, Any]:
    port = _port()
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    proc = start_nudge_run(
        root / "data",
        port,
        root / "sinks.json",
        tokens=(TOKEN, ADMIN),
        log=root / "erase.log",
        rules=root / "rules",
        cwd=cwd,
    )
    try:
        await asyncio.to_thread(wait_ready, port, proc, root / "erase.log", 900.0)
        ready = time.monotonic() - t0
        await asyncio.sleep(args.settle)
        headers = {"Authorization": f"Bearer {ADMIN}"}
        times: list[float] = []
        counts: dict[str, int] = {}
        async with ClientSession() as session:
            for c in ids:
                t = time.perf_counter()
                async with session.delete(f"{base}/v1/customers/c{c}", headers=headers) as r:
                    body = await r.json()
                times.append(time.perf_counter() - t)
                if r.status != 200:
                    raise RuntimeError(f"erase c{c}: {r.status} {body}")
                for k, v in body["erased"].items():
                    if isinstance(v, bool | int):
                        counts[k] = counts.get(k, 0) + int(v)
    finally:
        proc.terminate()
        proc.wait(timeout=600)
    return {
        "ready_s": round(ready, 1),
        "erased": len(times),
        "p50_ms": round(_pct(times, 0.50) * 1000, 1),
        "p90_ms": round(_pct(times, 0.90) * 1000, 1),
        "p99_ms": round(_pct(times, 0.99) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        # (position in the run, ms) of the slowest: a tail at regular positions is the
        # paced checkpoint's writer, which an erase waits for (docs/operations.md)
        "slowest": sorted(((i, round(t * 1000)) for i, t in enumerate(times)), key=lambda x: -x[1])[
            :5
        ],
        "counted": counts,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.dir)
    meta = root / "bench-erase.json"
    built: dict[str, Any] = {}
    fresh = meta.exists() and orjson.loads(meta.read_bytes()).get("customers") == args.customers
    if args.rebuild or not fresh:
        if root.exists():
            import shutil

            shutil.rmtree(root)
        (root / "rules").mkdir(parents=True)
        (root / "rules" / "welcome.yaml").write_text(RULE)
        sinks = {
            "default": "file",
            # fsynced at close only: the build's speed, not the erase's, depends on it
            "sinks": {
                "file": {"type": "jsonl", "path": str(root / "actions.jsonl"), "fsync_every": 0}
            },
        }
        (root / "sinks.json").write_bytes(orjson.dumps(sinks))
        built = await _build(args, root)
        meta.write_bytes(orjson.dumps({"customers": args.customers, **built}))
    sizes = _sizes(root)
    done_file = root / "erased.json"  # erased by earlier runs: not picked again
    done = set(orjson.loads(done_file.read_bytes())) if done_file.exists() else set()
    rng = random.Random(args.seed)
    picks = rng.sample(range(args.customers), 2 * args.erase + len(done))
    ids = [c for c in picks if c not in done][: 2 * args.erase]
    done_file.write_bytes(orjson.dumps(sorted(done | set(ids))))
    out: dict[str, Any] = {"customers": args.customers, "build": built or "reused"}
    out["sizes_mb"] = sizes
    if args.baseline:
        db = sqlite3.connect(root / "data" / "state.db")
        db.execute("DROP INDEX IF EXISTS outbox_customer")  # as the earlier code has it
        db.close()
        out["off"] = await _erase(args, root, ids[: args.erase], Path(args.baseline))
    out["on"] = await _erase(args, root, ids[args.erase :], None)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--erase", type=int, default=100, help="customers erased, one at a time")
    p.add_argument("--dir", default="/tmp/nudge-bench-erase", help="kept between runs")
    p.add_argument("--rebuild", action="store_true")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--settle", type=float, default=30.0,
                   help="seconds after start first (the journal index is built)")  # fmt: skip
    p.add_argument("--baseline", help="a checkout of the earlier code, run first (off)")
    args = p.parse_args(argv)
    out = asyncio.run(run(args))
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
