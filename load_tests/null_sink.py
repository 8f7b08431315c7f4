"""A trivial HTTP sink: answers every request at once, for benchmarking the load test's
sending side without an engine behind it.

It reads each request whole (parsed by :mod:`load_tests.http1`), answers
``202`` with a two-byte JSON body (``429`` with ``Retry-After: 1`` for every
``--refuse-every``-th request, 0: never), keeps connections alive and pipelined
requests in order. It counts requests, body bytes and events (a body's ``"event_id"``
occurrences) and prints them as one JSON line on SIGTERM/SIGINT or after ``--seconds``.
Nothing is parsed beyond that: it costs a few microseconds a request, so the sender is
what a benchmark measures. ::

    taskset -c 0 python -m load_tests.null_sink --port 8181
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import orjson

from load_tests.http1 import Headers, ServerConnection, response

__all__ = ["NullSink", "main"]

_OK = response(202, b"Accepted", b"{}")
_REFUSED = response(429, b"Too Many Requests", b"{}", b"Retry-After: 1\r\n")


class NullSink:
    """The counters, shared by every connection."""

    def __init__(self, refuse_every: int = 0) -> None:
        self.refuse_every = refuse_every
        self.requests = 0
        self.refused = 0
        self.body_bytes = 0
        self.events = 0

    def answer(self, method: bytes, headers: Headers, body: bytes) -> bytes:
        self.requests += 1
        self.body_bytes += len(body)
        self.events += body.count(b'"event_id"')
        if self.refuse_every and self.requests % self.refuse_every == 0:
            self.refused += 1
            return _REFUSED
        return _OK

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "refused": self.refused,
            "events": self.events,
            "body_bytes": self.body_bytes,
        }


async def serve(host: str, port: int, sink: NullSink, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: ServerConnection(sink.answer), host, port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"null sink listening on {host}:{port}", file=sys.stderr, flush=True)
    try:
        if seconds > 0:
            await asyncio.wait_for(stop.wait(), seconds)
        else:
            await stop.wait()
    except TimeoutError:
        pass
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m load_tests.null_sink", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8181)
    ap.add_argument("--refuse-every", type=int, default=0, help="answer 429 to every Nth")
    ap.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    args = ap.parse_args(argv)
    sink = NullSink(args.refuse_every)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(args.host, args.port, sink, args.seconds))
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        asyncio.run(serve(args.host, args.port, sink, args.seconds))
    sys.stdout.write(orjson.dumps(sink.figures()).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
