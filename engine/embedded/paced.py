"""Paced checkpoints: the event loop packs the changed states a few at a time over most of
the checkpoint interval into a spool file, and a spawned writer process commits it.

A checkpoint is fuzzy: each state is packed when its turn comes, not all as of one
instant. That is safe because every state records the journal position of the last event
it includes (``CustomerState.seq``; engine/shard.py) and a replay skips the events a
restored state already holds. The round's replay positions are the partitions' applied
positions at its start: every customer changed up to then is packed during the round,
after that position. Customers changed during the round are packed again in the next one.

The loop's share is packing (~4 us per state; one slice of at least 50 states every
``tick``, sized to finish in ``spread`` seconds: ~170 states, under 1 ms, at 100,000
changed states over 6 s), and appending the bytes to a buffered file. The SQLite work
(``engine.embedded.storage.sqlite.write_snapshot``: states in steps of ~1 MB, the positions last)
runs in a separate process (engine/embedded/spool.py), started with ``posix_spawn``, so the
engine's memory is never shared copy-on-write. Against a fork at each checkpoint (the mode
this replaced, removed 2026-11-24) it trades one burst of page-table copying and
copy-on-write faults (the p99 tail of ``nudge run`` under load, BENCHMARKS.md) for a few
per cent of loop time spread evenly.

Ordering against the outbox: once the last state is packed, the outbox's own flush commits
every action produced so far, before the writer is started, so a stored state never
includes an event whose actions could be lost. The writer so never takes ``state.db``'s
lock, which the outbox's flushes need hundreds of times a second (an action the flush
could not commit goes in the spool's trailer; the writer commits it first).
Erasures: customers erased while the round packs are deleted by the writer after the
states, so a state packed before its erasure is never left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.analytics.tally import ORPHAN, Taken
from engine.embedded.outbox import Outbox
from engine.embedded.spool import WRITER, SpoolWriter, writer_env
from engine.embedded.storage.crypt import Sealer
from engine.partition import Changes, Partition
from engine.types import Action

__all__ = ["PacedRound", "remove_stale_spools", "run_writer", "spool_path", "wait_child"]


@dataclass
class PacedRound:
    """One paced checkpoint: the partitions' positions and changed customers taken at its
    start, packed into ``spool`` over ``spread`` seconds, a slice every ``tick``. A slice
    holds at most ``max_slice`` states (~2 ms): with more changed customers than that
    allows in ``spread`` (a restart, a campaign touching everyone), the round takes longer
    instead of taking over the loop."""

    parts: list[Partition]
    spool: Path
    spread: float
    tick: float = 0.01
    max_slice: int = 500
    sealer: Sealer | None = None  # encryption at rest: states sealed into the spool
    # awaited after each slice's tick: the runtime's wait until no event is queued (the
    # packing goes between the events' slices, not in their way), bounded
    between: Callable[[], Awaitable[None]] | None = None
    seqs: dict[int, int] = field(default_factory=dict)
    taken: list[tuple[Partition, Changes]] = field(default_factory=list)
    erased: set[str] = field(default_factory=set)  # customers erased during the round
    # analytics: the packed customers' pending counts, written beside their states
    # (engine/analytics/tally.py); given back if the round fails
    counts: list[tuple[Partition, Taken]] = field(default_factory=list)
    notes_sent: dict[int, int] = field(default_factory=dict)  # per partition, to the spool
    states: int = 0
    pack_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.taken = [(p, p.begin()) for p in self.parts]
        self.seqs = {p.index: changes.position for p, changes in self.taken}

    async def pack(self, persist: Callable[[], Awaitable[list[tuple[Action, bool]]]]) -> None:
        """Pack the taken states into the spool, paced; then commit every action produced
        so far (``persist``: the outbox's own flush) and write the trailer, with the
        erasures and whatever actions ``persist`` could not commit."""
        total = sum(len(changes.dirty) for _, changes in self.taken)
        ticks = max(1.0, self.spread / self.tick)
        per_tick = min(self.max_slice, max(50, math.ceil(total / ticks)))
        with SpoolWriter(self.spool, self.sealer) as out:
            for p, changes in self.taken:
                dirty = changes.dirty
                row = p.store.row
                for i in range(0, len(dirty), per_tick):
                    t0 = time.perf_counter()
                    rows = [(cid, body) for cid in dirty[i : i + per_tick] if (body := row(cid))]
                    self.states += len(rows)
                    if p.tally is not None:  # analytics: in the same chunk as their states
                        rows += self._take_counts(p, dirty[i : i + per_tick])
                    out.rows(rows)
                    took = time.perf_counter() - t0
                    self.pack_seconds += took
                    await asyncio.sleep(self.tick)
                    if self.between is not None:
                        await self.between()
                if p.tally is not None and (orphans := self._take_counts(p, [ORPHAN])):
                    out.rows(orphans)  # erased customers' counts
            deleted = [cid for _, changes in self.taken for cid in changes.erased]
            left = await persist()
            out.trailer(self.seqs, deleted, Outbox.rows(left), sorted(self.erased))

    def _take_counts(self, p: Partition, ids: list[str]) -> list[tuple[str, bytes]]:
        """The counts of ``ids`` as spool rows: under note ids for the writer to resolve
        (``Tally.id_rows``); as pending rows when sealed (the writer holds no key)."""
        assert p.tally is not None
        taken = p.tally.take(ids)
        if not taken:
            return []
        self.counts.append((p, taken))
        if self.sealer is not None:
            return p.tally.rows(taken)
        rows, self.notes_sent[p.index] = p.tally.id_rows(taken, self.notes_sent.get(p.index, 0))
        return rows

    def give_back(self, counts: bool = True) -> None:
        """A failed round: its customers go into the next one, and its campaign counts
        unless not ``counts`` (its writer folded them before it failed:
        engine/embedded/checkpoints.py); its spool is removed."""
        for p, changes in self.taken:
            p.abort(changes)
        for p, taken in self.counts if counts else ():
            assert p.tally is not None
            p.tally.give_back(taken)
        self.counts.clear()  # in place: the runtime reads it until folded
        with contextlib.suppress(FileNotFoundError):
            self.spool.unlink()


async def run_writer(data_dir: Path, synchronous: str, spool: Path, timeout: float) -> int:
    """Run the spool writer as a process of its own (``posix_spawn``: never a copy of this
    process's memory) and wait for it; its exit code (``wait_child``: killed after
    ``timeout`` seconds or if the waiting task is cancelled)."""
    pid = os.posix_spawn(
        WRITER[0],
        [*WRITER, str(data_dir), synchronous, str(spool), str(os.getpid())],
        writer_env(),
        file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
    )
    return await wait_child(pid, timeout)


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
