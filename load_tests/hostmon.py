"""The host's own state while a benchmark runs, measured beside it in a process of its own.

This machine is a virtual one whose host has slow spells: for minutes, the engine's
benchmark p50 goes from 3 ms to 10-40 ms with nothing changed. This tells such a run from
a slow engine. Twenty times a second it times one 4 KB ``write`` + ``fsync`` in the
directory given (the engine's journal commits wait for the same disk), and ten times a
second a fixed piece of Python work (~0.2 ms; slower when the CPU is taken from this
virtual machine or shared). Its own load is about 0.5% of a core.

    python -m load_tests.hostmon DIR SECONDS  # prints one JSON object
"""

from __future__ import annotations

import os
import sys
import time

import orjson

__all__ = ["main", "summary"]

_WORK = 20_000  # loop steps of the fixed work


def _work() -> float:
    t = time.perf_counter()
    n = 0
    for i in range(_WORK):
        n += i
    return (time.perf_counter() - t) * 1000


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(p * len(s)))], 2) if s else 0.0


def summary(fsyncs: list[float], works: list[float]) -> dict[str, float]:
    """Percentiles of the fsync times and of the fixed work's time (ms)."""
    return {
        "host_fsync_p50_ms": _pct(fsyncs, 0.5),
        "host_fsync_p99_ms": _pct(fsyncs, 0.99),
        "host_fsync_max_ms": _pct(fsyncs, 1.0),
        "host_work_p50_ms": _pct(works, 0.5),
        "host_work_p99_ms": _pct(works, 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    directory, seconds = (argv if argv is not None else sys.argv[1:])[:2]
    path = os.path.join(directory, f"hostmon-{os.getpid()}.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    fsyncs: list[float] = []
    works: list[float] = []
    block = b"x" * 4096
    end = time.monotonic() + float(seconds)
    try:
        tick = 0
        while time.monotonic() < end:
            os.pwrite(fd, block, 0)
            t = time.perf_counter()
            os.fsync(fd)
            fsyncs.append((time.perf_counter() - t) * 1000)
            if tick % 2 == 0:
                works.append(_work())
            tick += 1
            time.sleep(0.05)
    finally:
        os.close(fd)
        os.unlink(path)
    print(orjson.dumps(summary(fsyncs, works)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
