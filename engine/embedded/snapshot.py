"""Checkpoints from a copy-on-write snapshot: a forked child writes them (Redis' BGSAVE).

The event loop's share of a checkpoint is the fork itself (copying page tables: a few
milliseconds per 100 MB resident) and the bookkeeping before it. At the fork the child
holds the whole process memory as of one instant: every partition's states, its applied
journal position and the actions produced so far. It serializes the states that changed
since the last checkpoint into a spool file and ``exec``s the spool writer
(engine/embedded/spool.py), which commits them through connections of its own
(``state.sqlite.write_snapshot``: the actions to the outbox, then the states in steps and
the positions last, in ``states.db``, a file the parent does not write meanwhile). The parent
goes on processing and only counts the checkpoint as done (journal trimmed up to its
positions) when that process exits 0. If it fails, the changed customers it took are
handed back to the partitions for the next checkpoint; the store still holds the previous
checkpoint's positions, and states at least as new.

Why spool and exec: while the child shares the parent's memory, every page the parent
writes is copied (2.4-2.6 us per fault here); after the exec only the write protection
is left, and the parent lifts it for the whole heap in one call from a thread
(engine/embedded/cow.py) instead of one fault per page. The exec closes the child's end
of a close-on-exec pipe, which is how the parent learns the memory is its own again.

Fork safety: the child never touches a connection, lock or thread of the parent. The
SQLite threads are parked (blocked in Python, outside SQLite) for the instant of the fork,
so no SQLite-internal mutex can be copied in a held state; the child and the writer die
with their parent (``PR_SET_PDEATHSIG``, kept across the exec), so a killed engine never
leaves a writer behind it; a child that fails before the exec leaves through ``os._exit``
(no atexit handlers, no flushing of the parent's buffers).
Linux only; elsewhere the runtime checkpoints in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from engine.embedded import spool as _spool
from engine.embedded.outbox import Outbox
from engine.embedded.partition import Partition
from engine.embedded.spool import can_die_with_parent, die_with_parent, write_spool, writer_env
from engine.types import Action

__all__ = [
    "WRITER",
    "Snapshot",
    "available",
    "fork_snapshot",
    "park",
    "remove_stale_spools",
    "wait_child",
]

# the program the child execs (engine/embedded/spool.py; tests swap it)
WRITER = _spool.WRITER


def available() -> bool:
    """Whether checkpoints can be written by a forked child here (Linux)."""
    return hasattr(os, "fork") and can_die_with_parent()


@dataclass
class Snapshot:
    """What the parent took at the fork: the child's pid, the partitions' positions and
    the changed/erased customers (given back if the child fails)."""

    pid: int
    seqs: dict[int, int]
    taken: list[tuple[Partition, list[str], list[str]]]
    states: int
    fork_seconds: float
    spool: Path
    handover: int  # read end of the pipe whose write end the child's exec closes

    def give_back(self) -> None:
        """A failed checkpoint: its customers go into the next one, and the spool its
        writer left (one that succeeded deleted it) is removed."""
        for p, dirty, deleted in self.taken:
            p.restore_dirty(dirty, deleted)
        with contextlib.suppress(FileNotFoundError):
            self.spool.unlink()

    async def handed_over(self, timeout: float) -> bool:
        """Wait until the child no longer shares this process's memory (it exec'd the
        writer, or died); False after ``timeout`` seconds. Closes the pipe either way."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            try:
                more = os.read(self.handover, 64)
            except BlockingIOError:
                return
            if not more and not done.done():
                done.set_result(None)

        loop.add_reader(self.handover, readable)
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(self.handover)
            os.close(self.handover)

    def kill(self) -> None:
        """Kill and reap the child (or the writer it became), if it still runs."""
        _kill(self.pid)


async def park(executors: Sequence[Executor]) -> threading.Event:
    """Occupy each single-thread executor with a job that blocks until the returned
    event is set; returns once every one is blocked there (all jobs queued before it are
    done, and none of these threads is inside SQLite). The caller must set the event."""
    loop = asyncio.get_running_loop()
    release = threading.Event()
    arrived = [loop.create_future() for _ in executors]

    def hold(fut: asyncio.Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(_resolve, fut)
        release.wait()

    for ex, fut in zip(executors, arrived, strict=True):
        loop.run_in_executor(ex, hold, fut)
    try:
        await asyncio.gather(*arrived)
    except BaseException:
        release.set()
        raise
    return release


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def fork_snapshot(
    parts: list[Partition],
    actions: list[tuple[Action, bool]],
    data_dir: Path,
    synchronous: str,
    *,
    chunk: int = 1000,
) -> Snapshot:
    """Fork a child that writes a checkpoint of ``parts`` as of now: the states changed
    since the last checkpoint, the erasures, ``actions`` (every action whose outbox
    insert may not have committed yet) and each partition's applied journal position.
    Call it with the SQLite threads parked (``park``). Returns at once in the parent."""
    t0 = time.perf_counter()
    seqs = {p.index: p.last_seq for p in parts}
    taken = [(p, *p.take_dirty()) for p in parts]
    # everything alive now leaves the cyclic GC's reach: the parent's collections then do
    # not write to (and so copy) every page the child shares, and do not stall the loop
    gc.freeze()
    parent = os.getpid()
    handover, closes_at_exec = os.pipe()  # both close-on-exec (PEP 446)
    pid = os.fork()
    if pid == 0:
        os.close(handover)
        _child(parent, data_dir, synchronous, actions, taken, seqs, chunk)
    os.close(closes_at_exec)
    os.set_blocking(handover, False)
    return Snapshot(
        pid,
        seqs,
        taken,
        sum(len(d) for _, d, _ in taken),
        time.perf_counter() - t0,
        spool_path(data_dir, pid),
        handover,
    )


def spool_path(data_dir: Path, pid: int) -> Path:
    return data_dir / f"checkpoint-{pid}.spool"


def remove_stale_spools(data_dir: Path) -> None:
    """Delete the spools (``spool_path``) that writers killed with an earlier engine left."""
    for spool in data_dir.glob("checkpoint-*.spool"):
        spool.unlink()


async def wait_child(pid: int, timeout: float, poll: float = 0.02) -> int:
    """Wait for the child to exit; its exit code (a signal: minus its number; -1 if its
    status was reaped elsewhere, so unknown). Past ``timeout`` seconds, or if the waiting
    task is cancelled, the child is killed first."""
    end = time.monotonic() + timeout
    try:
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return -1
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > end:
                break
            await asyncio.sleep(poll)
    except BaseException:
        _kill(pid)
        raise
    _kill(pid)
    return -int(signal.SIGKILL)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _child(
    parent: int,
    data_dir: Path,
    synchronous: str,
    actions: list[tuple[Action, bool]],
    taken: list[tuple[Partition, list[str], list[str]]],
    seqs: dict[int, int],
    chunk: int,
) -> NoReturn:
    try:
        gc.disable()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)  # the parent's event loop's: never write to it
        if not die_with_parent(parent):
            os._exit(1)
        deleted = [cid for _, _, gone in taken for cid in gone]
        spool = spool_path(data_dir, os.getpid())
        write_spool(spool, seqs, deleted, Outbox.rows(actions), _chunks(taken, chunk))
        os.execve(WRITER[0], [*WRITER, str(data_dir), synchronous, str(spool)], writer_env())
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, f"nudge checkpoint child failed:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(1)  # the exec did not happen


def _chunks(
    taken: list[tuple[Partition, list[str], list[str]]], size: int
) -> Iterator[list[tuple[str, bytes]]]:
    rows: list[tuple[str, bytes]] = []
    for p, dirty, _ in taken:
        row = p.store.row
        for cid in dirty:
            body = row(cid)
            if body is not None:
                rows.append((cid, body))
                if len(rows) >= size:
                    yield rows
                    rows = []
    if rows:
        yield rows
