"""Benchmark: how long a checkpoint writer's commit holds up another file's fsync.

The engine's journal and outbox commit with an fsync each (``--synchronous FULL``), on the
same file system as ``states.db``, where the checkpoint writer commits ~100,000 states
every 10 s under load. ext4 orders commits, so a small fsync issued while the writer's
big one runs waits for it. This runs ``engine.embedded.storage.sqlite.write_snapshot`` over N
states of 500 bytes, ``--step`` states per transaction (0: all in one, as before 2026-11-24), while
a thread fsyncs 4 KB every millisecond in the same directory, and prints the small
fsyncs' worst times.

    python -m load_tests.bench_writer_stalls --states 100000 --step 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from engine.embedded.storage.sqlite import STATES_PER_COMMIT, SqliteStore, write_snapshot

__all__ = ["main"]


def _small_fsyncs(directory: Path, stop: threading.Event, out: list[float]) -> None:
    fd = os.open(directory / "small", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while not stop.is_set():
            os.pwrite(fd, b"x" * 4096, 0)
            t = time.perf_counter()
            os.fsync(fd)
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.001)
    finally:
        os.close(fd)


def run(states: int, step: int, rounds: int) -> list[dict[str, float]]:
    rows = [(f"c{i}", os.urandom(500)) for i in range(states)]
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="nudge-stalls-", dir=".") as d:
        data = Path(d)
        SqliteStore(data, "FULL").close()
        for r in range(rounds):
            times: list[float] = []
            stop = threading.Event()
            th = threading.Thread(target=_small_fsyncs, args=(data, stop, times))
            th.start()
            time.sleep(0.1)
            chunks = (rows[i : i + 500] for i in range(0, states, 500))
            t0 = time.perf_counter()
            write_snapshot(data, "FULL", [], [], chunks, {0: r}, per_commit=step or states + 1)
            took = time.perf_counter() - t0
            time.sleep(0.1)
            stop.set()
            th.join()
            times.sort()
            out.append(
                {
                    "write_ms": round(took * 1000),
                    "small_fsyncs": len(times),
                    "p99_ms": round(times[int(0.99 * len(times))], 2),
                    "max_ms": round(times[-1], 2),
                    "over_10ms": sum(1 for x in times if x > 10),
                }
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--states", type=int, default=100_000)
    p.add_argument("--step", type=int, default=STATES_PER_COMMIT)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    for r in run(args.states, args.step, args.rounds):
        print(orjson.dumps(r).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
