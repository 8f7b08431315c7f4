"""The embedded runtime's checkpoints: the changed states (and, analytics on, their
pending campaign counts) written to ``states.db`` with the replay positions, after the
actions they produced, then the journal trimmed behind them.

Two modes (``--checkpoint-mode``): ``paced`` packs the states on the loop a slice at a
time into a spool file and commits it from a spawned writer process
(engine/embedded/paced.py, spool.py); ``inline`` writes them from the runtime's state
thread in chunks. One checkpoint at a time (``_ckpt_lock``): an older round committing
after a newer one could overwrite newer states under newer positions.

Each round takes what changed from every partition (``Partition.begin``) and gives it
back if the write fails (``Partition.abort``), so the next round writes it again.
An erase (:meth:`Checkpoints.erase`) marks the customer in the round packing now, so the
writer deletes it after writing what was packed before, and waits for a running writer.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from engine.analytics.tally import ORPHAN, Taken
from engine.clock import Clock
from engine.embedded.config import RuntimeConfig
from engine.embedded.health import Health
from engine.embedded.outbox import Outbox
from engine.embedded.paced import PacedRound, run_writer, spool_path
from engine.embedded.spool import EXIT_DISK_FULL, EXIT_IO
from engine.embedded.storage.sqlite import SqliteStore
from engine.metrics import Metrics
from engine.partition import Changes, Partition
from state.analytics import Cell, DayTotals, Period, counter

__all__ = ["Checkpoints", "Host"]


class Host(Protocol):
    """What checkpoints need of the runtime (engine/embedded/runtime.py)."""

    cfg: RuntimeConfig
    clock: Clock
    metrics: Metrics
    health: Health
    parts: list[Partition]
    store: SqliteStore | None
    outbox: Outbox

    def db(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...

    def jdb(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]: ...

    def events_drained(self) -> Awaitable[None]: ...


logger = logging.getLogger(__name__)

_DAY = 86_400_000
_TRIM_PAGE = 100  # journal rows deleted per call of the journal thread


class Checkpoints:
    """The checkpoints of one runtime, and the analytics counts they carry."""

    def __init__(self, rt: Host) -> None:
        self.rt = rt
        self._no_writer = asyncio.Event()  # set while no checkpoint writer runs
        self._no_writer.set()
        # one checkpoint at a time: an older round committing after a newer one could
        # overwrite newer states under newer positions
        self._ckpt_lock = asyncio.Lock()
        self._round: PacedRound | None = None  # the paced checkpoint packing now
        self._writing: PacedRound | None = None  # the round whose writer runs now
        # analytics: counts a checkpoint took from the partitions that are not yet folded
        # into the stored totals, and how many folds happened (engine/analytics/)
        self._unfolded: list[tuple[Partition, Taken]] = []
        self.analytics_folds = 0
        # states.db's count of folds committed (storage/analytics.py ``folds``) that does
        # not include the round in ``_unfolded`` yet: read at each round's start
        self._stored_folds = 0

    async def erase(self, customer_id: str) -> None:
        """A customer erased: the round packing now deletes it after what it packed, and
        a writer still running finishes first if its spool holds the customer's state
        (the caller then deletes the stored rows; the next checkpoint deletes them again
        regardless). A writer without it is not waited for: its start alone (a process)
        took up to 1.5 s of an erase at 1M customers (load_tests/bench_erase.py)."""
        if self._round is not None:
            self._round.erased.add(customer_id)
        writing = self._writing
        if writing is not None and not any(
            customer_id in changes.dirty for _, changes in writing.taken
        ):
            return
        await self._no_writer.wait()

    async def checkpoint(self, chunk: int = 250, spread: float = 0.0) -> None:
        """Persist changed states in-process (at stop, and in "inline" mode): states are
        serialized and written in chunks of ``chunk``, spread over about ``spread``
        seconds. Each state carries the journal seq it includes, so a replay from the
        partitions' positions taken at the start skips what a state already has. Each
        chunk's states are committed after the actions produced up to their
        serialization, so none is lost between state and outbox."""
        async with self._ckpt_lock:
            await self._checkpoint_inline(chunk, spread)

    async def _checkpoint_inline(self, chunk: int, spread: float) -> None:
        await self._read_folds()
        taken = [(p, p.begin()) for p in self.rt.parts]
        unfolded = len(self._unfolded)
        actions: list[Any] = []
        try:
            await self._write_inline(taken, chunk, spread, actions)
        except BaseException:  # not written: all of it goes in the next one
            for p, changes in taken:
                p.abort(changes)
            if self._unfolded[unfolded:] and await self._is_folded():
                self._folded()  # the fold committed in its thread (a cancelled await)
            for p, counts in self._unfolded[unfolded:]:
                assert p.tally is not None
                p.tally.give_back(counts)
            del self._unfolded[unfolded:]
            self.rt.outbox.give_back(actions)
            raise

    async def _write_inline(
        self,
        taken: list[tuple[Partition, Changes]],
        chunk: int,
        spread: float,
        actions: list[Any],
    ) -> None:
        assert self.rt.store is not None
        t0 = time.perf_counter()
        seqs = {p.index: changes.position for p, changes in taken}
        dirty: list[tuple[Partition, str]] = []
        deleted: list[str] = []
        for p, changes in taken:
            dirty += [(p, cid) for cid in changes.dirty]
            deleted += changes.erased
        rows: list[tuple[str, bytes]] = []
        ser = 0.0
        pause = spread / max(1, len(dirty) // chunk)
        for i in range(0, len(dirty), chunk):
            t1 = time.perf_counter()
            rows = [
                (cid, body)
                for p, cid in dirty[i : i + chunk]
                if (body := p.store.row(cid)) is not None
            ]
            rows += self._take_counts(dirty[i : i + chunk], i + chunk >= len(dirty))
            ser += time.perf_counter() - t1
            if i + chunk < len(dirty):
                done = self.rt.outbox.rows(self.rt.outbox.unpersisted())  # their events' actions
                await self.rt.db(self.rt.store.write_states, rows, done)
                rows = []
                await asyncio.sleep(pause)  # pace it: ingest and timers keep their latency
        if not dirty:
            rows += self._take_counts([], True)
        actions += self.rt.outbox.take_buffer()
        await self.rt.db(
            self.rt.store.checkpoint, rows, deleted, seqs, self.rt.outbox.rows(actions)
        )
        del actions[:]  # committed: nothing to give back from here on
        await self._fold_counts()
        await self._checkpointed(seqs)
        await self.rt.outbox.dispatch_persisted(actions)
        # Customer states are long-lived and acyclic: move everything alive now out of the
        # cyclic GC's reach, or full collections over millions of objects stall the loop
        # for hundreds of milliseconds (seen as p99 latency spikes).
        gc.freeze()
        took = time.perf_counter() - t0
        self.rt.metrics.checkpoint.observe(took)
        logger.debug(
            "checkpoint: %d states (serialized in %.3fs), %d actions, %.3fs in all",
            len(dirty),
            ser,
            len(actions),
            took,
        )

    async def paced_checkpoint(self) -> bool:
        """Checkpoint by packing the changed states on the loop, a slice at a time, over
        ``checkpoint_spread`` of the interval, and committing them from a spawned writer
        (engine/embedded/paced.py). Returns whether it was written; if not, the customers
        it took are changed again for the next one and the previous checkpoint stands."""
        async with self._ckpt_lock:
            return await self._checkpoint_paced()

    async def _checkpoint_paced(self) -> bool:
        cfg = self.rt.cfg
        t0 = time.perf_counter()
        await self._read_folds()
        rnd = PacedRound(
            self.rt.parts,
            spool_path(cfg.data_dir, os.getpid()),
            spread=cfg.checkpoint_interval * cfg.checkpoint_spread,
            sealer=cfg.sealer,
            between=self.rt.events_drained,
        )
        self._round = rnd
        self._unfolded = rnd.counts  # analytics: read by reports until folded
        try:
            await rnd.pack(self.rt.outbox.persist_all)
        except BaseException:
            rnd.give_back()
            raise
        finally:
            self._round = None
        self._no_writer.clear()
        self._writing = rnd
        logger.debug("checkpoint: %d states packed; writer started", rnd.states)
        try:
            code = await run_writer(
                cfg.data_dir, cfg.synchronous, rnd.spool, cfg.checkpoint_timeout
            )
        except BaseException:  # the writer was killed (and reaped) first
            await self._writer_failed(rnd)
            raise
        finally:
            self._writing = None
            self._no_writer.set()
        if code != 0:
            await self._writer_failed(rnd)
            if code in (EXIT_DISK_FULL, EXIT_IO):  # the writer logged the cause
                cause = "database or disk is full" if code == EXIT_DISK_FULL else "disk I/O error"
                self.rt.health.failed("checkpoint", sqlite3.OperationalError(cause))
            else:
                logger.error(
                    "checkpoint writer exited with %d; its states go in the next one", code
                )
            return False
        self._folded()  # by the writer, in its last transaction
        await self._checkpointed(rnd.seqs)
        took = time.perf_counter() - t0
        self.rt.metrics.checkpoint.observe(took)
        logger.debug(
            "checkpoint: %d states packed in %.3fs of loop time, %.3fs in all",
            rnd.states,
            rnd.pack_seconds,
            took,
        )
        return True

    # --- analytics (engine/analytics/) ---------------------------------------------------
    def _take_counts(self, dirty: list[tuple[Partition, str]], last: bool) -> list[Any]:
        """Inline checkpoints: the pending counts of ``dirty`` customers as state rows
        (``last``: with the erased customers' counts too)."""
        rows: list[Any] = []
        for p in self.rt.parts:
            if p.tally is None:
                continue
            ids = [cid for q, cid in dirty if q is p]
            if last:
                ids.append(ORPHAN)
            taken = p.tally.take(ids)
            if taken:
                self._unfolded.append((p, taken))
                rows += p.tally.rows(taken)
        return rows

    async def _fold_counts(self) -> None:
        """After an inline checkpoint committed: its counts join the stored totals
        (``_folded``)."""
        assert self.rt.store is not None
        if self.rt.cfg.analytics:
            await self.rt.db(self.rt.store.analytics_fold)
        self._folded()

    def _folded(self) -> None:
        """The round's counts are in the stored totals: they leave memory."""
        self._unfolded = []
        self._stored_folds += 1
        self.analytics_folds += 1

    async def _read_folds(self) -> None:
        """A round starts (none runs): the stored count of folds, for the reports."""
        if self.rt.cfg.analytics and self.rt.store is not None:
            self._stored_folds = await self.rt.db(self.rt.store.analytics_folds)

    async def _writer_failed(self, rnd: PacedRound) -> None:
        """A paced round whose writer failed or was killed: its customers go into the
        next round. Its counts too, unless the writer's last transaction (positions and
        fold) committed before it failed: then they are in the totals already, and
        written again they would count twice."""
        folded = bool(rnd.counts) and await self._is_folded()
        rnd.give_back(counts=not folded)
        if folded:
            self._folded()
        else:
            self.analytics_folds += 1  # the round's counts moved back: reports retry

    async def _is_folded(self) -> bool:
        """Whether states.db committed a fold since the round started (called once
        nothing can fold any more: the writer is dead, the SQLite thread's queue is
        behind the fold)."""
        if not self.rt.cfg.analytics or self.rt.store is None:
            return False
        try:
            n: int = await self.rt.db(self.rt.store.analytics_folds)
        except Exception as err:  # cannot tell: pending again, as before the writer folded
            logger.error("checkpoint: fold count not read (%s); counts pending again", err)
            return False
        return n > self._stored_folds

    async def analytics_counts(
        self, hourly: bool, first: int, last: int, rule_id: str | None = None
    ) -> tuple[list[Period], Counter[Cell]]:
        """Every count so far for days (or hours) ``first``..``last``: the stored totals
        and the counts still in memory (by cell, all periods: the caller filters)."""
        store = self.rt.store
        assert store is not None
        while True:
            folds = self.analytics_folds
            stored, n = await self.rt.db(
                store.analytics_read, store.analytics_periods, hourly, first, last, rule_id
            )
            if folds == self.analytics_folds:  # no round ended meanwhile
                return stored, self._analytics_memory(n)

    async def analytics_totals(
        self, first: int, last: int
    ) -> tuple[list[DayTotals], Counter[Cell]]:
        """``analytics_counts`` for the all-rules report: the stored day totals of days
        ``first``..``last`` (engine/embedded/storage/analytics.py) and the counts still in
        memory."""
        store = self.rt.store
        assert store is not None
        while True:
            folds = self.analytics_folds
            stored, n = await self.rt.db(
                store.analytics_read, store.analytics_day_totals, first, last
            )
            if folds == self.analytics_folds:  # no round ended meanwhile
                return stored, self._analytics_memory(n)

    def _analytics_memory(self, stored_folds: int) -> Counter[Cell]:
        """The counts in memory now, beside stored totals read with ``stored_folds``
        folds committed: the round not yet seen folded is left out if its writer folded
        it before that read (computed after the read, with no await: each count is then
        either in those totals or here, once)."""
        mem: Counter[Cell] = Counter()
        for p in self.rt.parts:
            if p.tally is not None:
                mem.update(p.tally.totals())
        if stored_folds <= self._stored_folds:
            for p, taken in self._unfolded:
                assert p.tally is not None
                cells = p.tally.cells(taken).values()
                mem.update(counter(cell for counts in cells for cell in counts))
        return mem

    async def _checkpointed(self, seqs: dict[int, int]) -> None:
        """After a checkpoint committed: drop what it made redundant."""
        assert self.rt.store is not None
        trim = self.rt.clock.now() - int(self.rt.cfg.journal_retention_days * _DAY)
        upto = min(seqs.values(), default=0)
        # a page per call: the group commits queued meanwhile run in between (the rows hold
        # whole requests, so a page of 1,000 is ~15 MB of overflow pages to free, and
        # three of those in one call held the journal thread for 100 ms and more)
        while (
            await self.rt.jdb(self.rt.store.trim_journal, upto, trim, _TRIM_PAGE, 1) == _TRIM_PAGE
        ):
            pass
        await self.rt.db(self.rt.store.outbox_prune, self.rt.clock.now() - _DAY)
        if self.rt.cfg.analytics:
            await self.rt.db(
                self.rt.store.analytics_prune,
                self.rt.clock.now(),
                self.rt.cfg.analytics_retention_days,
            )
