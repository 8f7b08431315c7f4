"""The load test's own cost: its sender against a trivial sink, its webhook receiver
under a stream of actions. CPU seconds, not wall clock, are the figures to compare (the
machine is shared); each side is pinned to its own core.

Sender (default): ``nudge loadtest``'s timeline (load_tests/traffic.py events, batches of
``--batch``, one probe each) sent by :func:`load_tests.sender.send_requests` at
``--rate`` for ``--seconds`` to :mod:`load_tests.null_sink` in another process. Prints
the offered rate, late sends and the sender's CPU (user + system): events per
CPU-second is what one core can offer. ::

    python -m load_tests.bench_sender --rate 60000 --seconds 10 --batch 100

The sink runs from this file's tree; the sender from whatever ``load_tests`` is first on
the path, so a previous revision is measured with ``PYTHONPATH=/tmp/before python
/work/main/load_tests/bench_sender.py ...`` (it needs ``send_requests`` and
``loadtest.make_timeline`` with today's signatures).

Receiver (``--receiver raw|aiohttp``): this process runs the webhook receiver (``raw``:
load_tests/receiver.py; ``aiohttp``: an aiohttp app that parses every body, as the load
test did before) while a blaster process posts one action a request, as the engine's
webhook sink does, at ``--rate`` actions/s over ``--connections`` keep-alive
connections, one in 100 a probe. Prints the receiver's CPU per action. ::

    python -m load_tests.bench_sender --receiver raw --rate 20000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the helper process exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _helper(args: list[str], cpu: int | None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, *args]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    lines = out.decode().strip().splitlines()
    return dict(orjson.loads(lines[-1])) if lines else {}


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _loop_run(coro: Any) -> Any:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# -- sender ------------------------------------------------------------------------------


def bench_sender(args: argparse.Namespace) -> dict[str, Any]:
    from load_tests.loadtest import LoadtestOptions, make_timeline
    from load_tests.sender import send_requests

    port = _free_port()
    sink = _helper(["-m", "load_tests.null_sink", "--port", str(port)], args.sink_cpu)
    try:
        _wait_port(port, sink)
        opts = LoadtestOptions(
            target=f"http://127.0.0.1:{port}",
            token="bench",
            rate=args.rate,
            duration=args.seconds,
            customers=args.customers,
            out=Path("."),
            batch=args.batch,
            connections=args.connections,
        )
        t0 = time.process_time()
        timeline = make_timeline(opts, "ltbench00")
        built = time.process_time() - t0
        headers = {"Authorization": "Bearer bench", "Content-Type": "application/json"}
        start = time.monotonic() + 0.2
        u0, s0 = _cpu()
        res = _loop_run(
            send_requests(
                opts.target + "/v1/events",
                headers,
                timeline,
                range(len(timeline.bodies)),
                start,
                args.connections,
                10.0,
            )
        )
        u1, s1 = _cpu()
    finally:
        figures = _stop(sink)
    events = sum(n for _, n in res.sent)
    span = max((t for t, _ in res.sent), default=0.0) or 1e-9
    lags = sorted(res.lags)
    cpu = (u1 - u0) + (s1 - s0)
    statuses: dict[int, int] = {}
    for _, _, status, _ in res.answers:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "mode": "sender",
        "sender_module": sys.modules[send_requests.__module__].__file__,
        "rate": args.rate,
        "seconds": args.seconds,
        "batch": args.batch,
        "events": events,
        "requests": len(res.sent),
        "timeline_cpu_s": round(built, 2),
        "offered_events_per_s": round(events / max(span, args.seconds - args.batch / args.rate)),
        "late_requests": res.late,
        "lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 3) if lags else None,
        "statuses": statuses,
        "cpu_user_s": round(u1 - u0, 3),
        "cpu_sys_s": round(s1 - s0, 3),
        "events_per_cpu_s": round(events / cpu) if cpu else None,
        "cpu_us_per_request": round(cpu / max(1, len(res.sent)) * 1e6, 1),
        "sink": figures,
    }


# -- receiver ----------------------------------------------------------------------------


def _action(k: int, probe: bool) -> bytes:
    """A webhook body shaped like connectors/sinks/base.py action_payload."""
    return orjson.dumps(
        {
            "fire_at": "2026-12-04T16:40:00.123Z",
            "rule_id": "loadtest-probe" if probe else "abandoned-cart",
            "rule_version": 3,
            "customer_id": f"cus-{k % 100_000:07d}",
            "channel": "webhook" if probe else "email",
            "template": "loadtest_probe" if probe else "cart_reminder",
            "params": {"sent_at": "@@SENT@@"} if probe else {"discount_pct": 10},
            "variant": "a",
            "idempotency_key": f"{k:032x}",
        }
    )


async def _blast(port: int, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    from load_tests.http1 import ClientPool

    statuses: dict[int, int] = {}

    def on_answer(ctx: int, status: int, done: float) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    pool = ClientPool("127.0.0.1", port, connections, on_answer)
    total = int(rate * seconds)
    start = time.monotonic()
    k = 0
    while k < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while k < due:
            probe = k % 100 == 0
            body = _action(k, probe)
            if probe:
                body = body.replace(b'"@@SENT@@"', b"%.3f" % (time.time() * 1000))
            head = (
                b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Idempotency-Key: %032x\r\nContent-Length: %d\r\n\r\n" % (k, len(body))
            )
            pool.submit(k, head + body)
            k += 1
        await asyncio.sleep(0.001)
    sent_for = time.monotonic() - start
    await pool.drain()
    pool.close()
    return {"sent": total, "seconds": round(sent_for, 3), "statuses": statuses}


async def _receive(args: argparse.Namespace, port: int) -> dict[str, Any]:
    from hdrh.histogram import HdrHistogram

    from load_tests.receiver import WebhookReceiver

    hdr = HdrHistogram(1, 3_600_000_000, 3)
    recv = WebhookReceiver(hdr, "loadtest-probe", "loadtest_probe")
    runner: Any = None
    if args.receiver == "raw":
        await recv.listen("127.0.0.1", port)
    else:
        from aiohttp import web

        async def hook(request: Any) -> Any:  # the load test's receiver until 2026-12
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                return web.Response(status=400)
            if not isinstance(body, dict):
                return web.Response(status=400)
            headers = [(b"Idempotency-Key", request.headers.get("Idempotency-Key", "").encode())]
            now_ms = time.time() * 1000
            recv.actions += 1
            recv.arrivals.append(time.monotonic() - recv.start)
            if body.get("rule_id") == "loadtest-probe":
                recv._probe(headers, body, time.monotonic() - recv.start, now_ms)
            return web.Response()

        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", hook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    recv.restart(time.monotonic())
    blaster = _helper(
        [
            "-m",
            "load_tests.bench_sender",
            "--blast",
            str(port),
            "--rate",
            str(args.rate),
            "--seconds",
            str(args.seconds),
            "--connections",
            str(args.connections),
        ],
        args.sink_cpu,
    )
    u0, s0 = _cpu()
    loop = asyncio.get_running_loop()
    out, _ = await loop.run_in_executor(None, blaster.communicate)
    u1, s1 = _cpu()
    if runner is not None:
        await runner.cleanup()
    recv.close()
    cpu = (u1 - u0) + (s1 - s0)
    blast = orjson.loads(out.decode().strip().splitlines()[-1])
    return {
        "mode": "receiver",
        "receiver": args.receiver,
        "rate": args.rate,
        "seconds": args.seconds,
        "blaster": blast,
        "actions_received": recv.actions,
        "received_per_s": round(recv.actions / max(1e-9, blast["seconds"])),
        "probes_measured": len(recv.samples),
        "probe_latency_ms": {
            "p50": hdr.get_value_at_percentile(50) / 1000,
            "p99": hdr.get_value_at_percentile(99) / 1000,
        },
        "cpu_user_s": round(u1 - u0, 3),
        "cpu_sys_s": round(s1 - s0, 3),
        "cpu_us_per_action": round(cpu / max(1, recv.actions) * 1e6, 1),
        "core_share_at_rate": round(cpu / max(1, recv.actions) * args.rate, 3),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m load_tests.bench_sender",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--rate", type=float, default=60_000, help="events (or actions) per s")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=100, help="events per request (sender)")
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=256)
    ap.add_argument("--cpu", type=int, default=1, help="core of this process (-1: any)")
    ap.add_argument("--sink-cpu", type=int, default=0, help="core of the other (-1: any)")
    ap.add_argument("--receiver", choices=("raw", "aiohttp"), help="measure the receiver")
    ap.add_argument("--blast", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.blast is not None:  # the receiver benchmark's action source
        res = _loop_run(_blast(args.blast, args.rate, args.seconds, args.connections))
        sys.stdout.write(orjson.dumps(res, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        return 0
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    if args.sink_cpu < 0:
        args.sink_cpu = None
    res = _loop_run(_receive(args, _free_port())) if args.receiver else bench_sender(args)
    sys.stdout.write(orjson.dumps(res, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
