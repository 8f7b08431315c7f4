"""Benchmark: what a fork costs the parent afterwards (copy-on-write page faults).

The embedded runtime checkpoints from a forked child (engine/embedded/snapshot.py). After
a fork, the first write to each page of the parent's heap faults (and copies the page
while the child still shares it). This builds ``--objects`` small dicts (a stand-in for
customer states), writes one field of each, forks a child that sleeps, writes them again
and once more after that: the difference is the fork's cost to the parent, per page
fault. ``--pin`` first pins the parent's threads to one CPU (rules out cross-CPU TLB
shootdowns as the cost). ``--child exited`` lets the child exit before the writes (what a
fault costs once nothing shares the page), ``--child populate`` then also lifts the write
protection in one call (engine/embedded/cow.py) and times it.

    python -m load_tests.bench_fork_faults --objects 400000
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time

import orjson

from engine.embedded.cow import populate_heap

__all__ = ["main"]


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=400_000)
    p.add_argument("--threads", type=int, default=2, help="idle threads (the SQLite ones)")
    p.add_argument("--pin", action="store_true", help="pin every thread to one CPU first")
    p.add_argument(
        "--child",
        choices=["sleeps", "exited", "populate"],
        default="sleeps",
        help="sleeps: the child lives while the parent writes (each fault copies a page); "
        "exited: it has exited (a fault only re-enables writing); populate: it has "
        "exited and one madvise(MADV_POPULATE_WRITE) over the heap clears the faults "
        "before the writes",
    )
    args = p.parse_args(argv)
    gc.disable()
    objs: list[dict[str, object]] = [
        {"a": i, "b": [i, i + 1], "c": str(i)} for i in range(args.objects)
    ]
    stop = threading.Event()

    def idle() -> None:  # wakes now and then, on whichever CPU
        while not stop.wait(0.001):
            pass

    threads = [threading.Thread(target=idle, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    if args.pin:
        one = {min(os.sched_getaffinity(0))}
        for t in threads:
            assert t.native_id is not None
            os.sched_setaffinity(t.native_id, one)
        os.sched_setaffinity(0, one)

    def touch() -> tuple[float, int]:
        f0, t0 = _faults(), time.perf_counter()
        for o in objs:
            o["a"] = 1  # a write: the dict's page is dirtied
        return (time.perf_counter() - t0) * 1000, _faults() - f0

    base_ms, _ = touch()
    pid = os.fork()
    if pid == 0:
        if args.child == "sleeps":
            time.sleep(5)
        os._exit(0)
    populate_ms = 0.0
    if args.child != "sleeps":
        os.waitpid(pid, 0)
        if args.child == "populate":
            t0 = time.perf_counter()
            populate_heap()
            populate_ms = (time.perf_counter() - t0) * 1000
    fork_ms, faults = touch()
    again_ms, _ = touch()
    if args.child == "sleeps":
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    stop.set()
    extra = fork_ms - (base_ms + again_ms) / 2
    report = {
        "objects": args.objects,
        "threads": args.threads,
        "pinned": args.pin,
        "child": args.child,
        "populate_ms": round(populate_ms, 1),
        "touch_ms_before_fork": round(base_ms, 1),
        "touch_ms_first_after_fork": round(fork_ms, 1),
        "touch_ms_second_after_fork": round(again_ms, 1),
        "page_faults_first_after_fork": faults,
        "us_per_fault": round(extra * 1000 / faults, 2) if faults >= 100 else None,
    }
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
