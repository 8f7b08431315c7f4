"""``nudge replay`` and ``nudge loadtest``: argparse wiring only.

``add_loadtest_parsers(sub)`` registers both on the main ``nudge`` parser; the handlers
import aiohttp, rich, hdrh and matplotlib only when they run. Also runnable alone::

    python -m load_tests.cli replay trace.jsonl --target http://127.0.0.1:8080 --rate 2000/s
    python -m load_tests.cli loadtest --target http://127.0.0.1:8080 --rate 10000 \\
        --duration 60 --customers 100000 --out lt-report --admin-token ADMIN
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["add_loadtest_parsers", "main"]


def _cmd_replay(args: argparse.Namespace) -> int:
    from load_tests.replay import run_replay

    return run_replay(args)


def _cmd_loadtest(args: argparse.Namespace) -> int:
    from load_tests.loadtest import run_loadtest

    return run_loadtest(args)


def add_loadtest_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``replay`` and ``loadtest`` at the top level of ``nudge``."""
    rp = sub.add_parser(
        "replay",
        help="send a JSONL trace to a running engine over HTTP or Kafka (paced, with retries)",
        description=(
            "Send a JSONL trace (python -m load_tests.traffic) to TARGET: http://HOST:PORT "
            "posts to /v1/events; kafka://HOST:PORT[/TOPIC] produces to the events topic "
            "of nudge worker (default topic: events)."
        ),
    )
    rp.add_argument("file", help="JSONL trace, one event per line")
    rp.add_argument(
        "--target",
        required=True,
        help="http://127.0.0.1:8080 (HTTP ingest) or kafka://127.0.0.1:9092[/events]",
    )
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", help="follow event timestamps, X times faster (e.g. 100x)")
    pace.add_argument("--rate", help="fixed rate in events per second (e.g. 2000/s)")
    rp.add_argument("--token", help="write token for HTTP (else NUDGE_WRITE_TOKEN)")
    rp.add_argument(
        "--batch", type=int, default=100, help="events per request or produce batch (max 1000)"
    )
    rp.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    rp.add_argument("--max-attempts", type=int, default=20, help="tries per batch")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.add_argument(
        "--restamp",
        action="store_true",
        help="shift every timestamp by one offset so the newest event is stamped now (gaps "
        "kept): an old trace triggers rules instead of arriving too late",
    )
    rp.set_defaults(func=_cmd_replay)

    lt = sub.add_parser(
        "loadtest",
        help="open-loop load with ingest and event-to-action latency reports",
        description=(
            "Open-loop load against TARGET. The engine must route actions to the webhook "
            "this command starts (--hook-port) and run the probe rule written to "
            "OUT/probe.yaml (or pass --admin-token to deploy it for the run)."
        ),
    )
    lt.add_argument("--target", required=True, help="engine base URL")
    lt.add_argument("--rate", type=float, required=True, help="events per second")
    lt.add_argument("--duration", type=float, required=True, help="seconds")
    lt.add_argument("--customers", type=int, required=True, help="distinct customers")
    lt.add_argument("--token", help="write token (else NUDGE_WRITE_TOKEN)")
    lt.add_argument("--admin-token", help="deploy the probe rule for the run (PUT /v1/rules)")
    lt.add_argument("--out", default="loadtest-report", help="report directory")
    lt.add_argument("--hook-port", type=int, default=8099, help="webhook receiver port")
    lt.add_argument("--hook-host", default="127.0.0.1")
    lt.add_argument("--batch", type=int, default=100, help="events per request (one probe)")
    lt.add_argument("--seed", type=int, default=1, help="traffic generator seed")
    lt.add_argument("--connections", type=int, default=256, help="HTTP connections at most")
    lt.add_argument("--drain", type=float, default=15.0, help="seconds to wait for probes")
    lt.add_argument("--late-ms", type=float, default=10.0, help="a send this late is late")
    lt.add_argument(
        "--senders",
        type=int,
        default=0,
        help="send from N forked processes (0: this one); pin them apart from the engine "
        "with taskset so the generator does not take the engine's core",
    )
    lt.add_argument(
        "--recover",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after --duration at --rate, go on for this long at --recover-rate and report "
        "the time back to normal event-to-action p99",
    )
    lt.add_argument("--recover-rate", type=float, help="events per second during --recover")
    lt.add_argument(
        "--normal-p99-ms",
        type=float,
        help="the normal event-to-action p99 (default: the recovery's second half)",
    )
    lt.add_argument(
        "--overload",
        action="store_true",
        help="an overload run: 429 answers are expected (reported as refused, exit 0)",
    )
    lt.set_defaults(func=_cmd_loadtest)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nudge", description="Nudge load testing kit")
    sub = p.add_subparsers(dest="command", required=True)
    add_loadtest_parsers(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
