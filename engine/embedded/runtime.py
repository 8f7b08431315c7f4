"""The embedded runtime: journal, partitions, timers, checkpoints and the outbox, wired.

``Runtime`` owns the parts of one process and wires them; each concept is its own module:
start-up recovery of rules, states and the journal (engine/embedded/recovery.py); the
group commit (engine/embedded/ingest.py); the per-partition queues and processing loops
(engine/embedded/queues.py); the checkpoint rounds and compaction
(engine/embedded/upkeep.py, engine/embedded/checkpoints.py); the process-level loops,
GC freeze and storage probe (engine/embedded/samplers.py), the event loop's lag and busy
share (engine/loop_samplers.py); the customer
operations, view, export and erase (engine/embedded/customers.py). Admission, the
partitions' outputs, deploys and the readiness stay here.

Faults (docs/operations.md, "Faults"): the data directory is locked for the process's
life (engine/embedded/lock.py); every background task runs under a supervisor that logs,
counts and restarts it (engine/embedded/supervise.py); failed writes to the data
directory are recorded by store (engine/embedded/health.py) and retried by their owners.
``unready_reasons`` is what ``/readyz`` answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from connectors.deadletter import DeadLetterStore
from connectors.routing import Router
from engine import loop_samplers
from engine.admission import DEFAULT_PRIORITIES, PRIORITIES, Admission
from engine.clock import Clock, SystemClock
from engine.embedded import customers, recovery, samplers
from engine.embedded.checkpoints import Checkpoints
from engine.embedded.config import RuntimeConfig
from engine.embedded.exceptions import DataDirError
from engine.embedded.health import Health
from engine.embedded.ingest import Batch, GroupCommitWriter
from engine.embedded.lock import DataDirLock, os_reason, secure_data_dir
from engine.embedded.models import Models
from engine.embedded.outbox import Outbox, forward_action
from engine.embedded.paced import remove_stale_spools
from engine.embedded.queues import PartitionQueues, partition_of
from engine.embedded.segment_backfill import SegmentBackfill
from engine.embedded.storage.sqlite import SqliteStore
from engine.embedded.storage.suppression import Suppression
from engine.embedded.supervise import Supervisor
from engine.embedded.upkeep import Upkeep
from engine.events import encode_events
from engine.exceptions import Backpressure, NotReady, StorageUnavailable
from engine.intelligence.population import Population
from engine.metrics import Metrics, type_label
from engine.output import Output
from engine.partition import Partition
from engine.segment_index import SegmentIndex
from engine.send_policy import quiet_hold, rule_within
from engine.types import Event
from rules.ruleset import RuleSet, load_texts
from state.analytics import Cell, DayTotals, Period

__all__ = ["Runtime", "RuntimeConfig"]

logger = logging.getLogger(__name__)


class Runtime:
    """One process: ingest -> journal -> partitions -> outbox -> sinks."""

    def __init__(self, cfg: RuntimeConfig, metrics: Metrics, clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.ready = False
        self.ruleset: RuleSet | None = None
        self.rules_version = 0
        self.rules_files: dict[str, str] = {}
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-state-db")
        self._jexec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nudge-journal-db")
        self.store: SqliteStore | None = None
        self.parts: list[Partition] = []
        self.admission = Admission(cfg.admission_target_s, {**DEFAULT_PRIORITIES, **cfg.priorities})
        # the events journaled and not yet applied, and the partition loops (queues.py)
        self.queues = PartitionQueues(
            self.clock,
            metrics,
            self.admission,
            self.safe_time,
            slice_events=cfg.slice_events,
            slice_seconds=cfg.slice_seconds,
        )
        self._tasks: list[str] = []  # the supervised tasks stop cancels
        self._starting: set[asyncio.Task[None]] = set()  # backfill (re)starts in flight
        self._stopping = False
        self.observers: list[Callable[[Output], None]] = []
        # segment id -> members, for the segments API and gauge (built at recovery)
        self.segment_index: SegmentIndex | None = None
        # RFM boundaries and CLV parameters for the processors (engine/embedded/models.py)
        self.models: Models | None = None
        # segments evaluated for existing customers after start and deploys
        self.segment_backfill = SegmentBackfill(self)
        self.checkpoints = Checkpoints(self)  # engine/embedded/checkpoints.py
        # faults: the data directory's lock, the background tasks, failed writes
        self.lock = DataDirLock(cfg.data_dir)
        self.supervisor = Supervisor(metrics, first=cfg.task_backoff_s, cap=cfg.task_backoff_max_s)
        self.health = Health(metrics)
        metrics.ready.labels("embedded").set_function(
            lambda: 0.0 if self.unready_reasons() else 1.0
        )

    @property
    def queued(self) -> int:
        """Events journaled and not yet applied by their partitions."""
        return self.queues.queued

    def events_drained(self) -> Awaitable[None]:
        """Background work's turn: once no event is queued for the partitions, or after
        ``background_wait_s`` (engine/embedded/queues.py ``drained``)."""
        return self.queues.drained(self.cfg.background_wait_s)

    def _live_gauges(self) -> None:
        """Gauges read when scraped (the scrape runs on the loop): queue, drain time,
        admission limits, outbox, timers, customers. Set by the checkpoint loop they were
        up to an interval (10 s) stale, and an overload's queue could not be seen."""
        m = self.metrics

        def backlog() -> float:
            return float(self.queued + self.writer.buffered)

        m.queue_depth.set_function(backlog)
        m.admission_drain.set_function(
            lambda: self.admission.drain_time(int(backlog())) + self.outbox.delivery_wait()
        )

        def limit(prio: str) -> Callable[[], float]:
            return lambda: float(self.admission.limit_events(prio))

        for prio in PRIORITIES:
            m.admission_limit.labels(prio).set_function(limit(prio))
        m.outbox_pending.set_function(lambda: float(self.outbox.pending))
        m.delivery_wait.set_function(self.outbox.delivery_wait)
        m.pending_timers.set_function(lambda: float(sum(len(p.timers) for p in self.parts)))
        m.customers.set_function(lambda: float(sum(len(p.store) for p in self.parts)))

    def unready_reasons(self) -> list[str]:
        """Why ``/readyz`` answers 503 (empty: ready): starting or stopping, a vital
        background task down (waiting to restart), a storage fault."""
        reasons = [] if self.ready else ["starting, recovering or stopping"]
        reasons += [f"task {r}" for r in self.supervisor.unhealthy()]
        return reasons + self.health.reasons()

    def lock_data_dir(self) -> None:
        """Create the data directory (0700) and take its lock (engine/embedded/lock.py):
        DataDirLocked if another engine holds it, DataDirError if it cannot be used."""
        data = self.cfg.data_dir
        try:
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as err:
            raise DataDirError(data, os_reason(err)) from err

    async def db(self, fn: Any, *args: Any) -> Any:
        """Run a state.db call on its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._exec, fn, *args)

    async def jdb(self, fn: Any, *args: Any) -> Any:
        """Run a journal.db call on its thread."""
        return await asyncio.get_running_loop().run_in_executor(self._jexec, fn, *args)

    # --- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Lock the data directory, open the stores, recover, start the tasks. Raises
        DataDirLocked or DataDirError (start-up errors ``nudge run`` prints in one line)
        before touching anything in a data directory it cannot use."""
        self.lock_data_dir()
        try:
            await self._start()
        except BaseException:
            if self.store is None:  # nothing opened: let another try
                self.lock.release()
            raise

    async def _start(self) -> None:
        cfg = self.cfg
        try:
            secure_data_dir(cfg.data_dir)
            remove_stale_spools(cfg.data_dir)
            store = await self.db(SqliteStore, cfg.data_dir, cfg.synchronous, cfg.sealer)
            dead = functools.partial(DeadLetterStore, sealer=cfg.sealer)
            self.dead = await self.db(dead, cfg.data_dir / "deadletter.db")
            self.suppression = await self.db(Suppression, cfg.data_dir / "suppressed.db")
        except (OSError, sqlite3.Error) as err:
            raise DataDirError(cfg.data_dir, os_reason(err)) from err
        self.store = store
        self.router = Router.from_config(cfg.sinks)
        await self.router.start_all()
        await self._load_rules()
        assert self.ruleset is not None
        self.segment_index = SegmentIndex(self.ruleset)
        self.metrics.segment_members.source = self.segment_index.sizes
        n = cfg.partitions
        self.parts = [Partition(i, self.ruleset, self._on_output, cfg.analytics) for i in range(n)]
        for p in self.parts:
            p.driver.idle_ms = int(cfg.compact_idle_s * 1000)
            p.store.compact_limit = cfg.compact_slice  # the driver's sweeps: one slice each
        self.queues.attach(self.parts)
        self.outbox = Outbox(
            self.db,
            store,
            self.router,
            self.dead,
            self.metrics,
            self.clock,
            concurrency=cfg.delivery_concurrency,
            forward=self._forward,
            supervisor=self.supervisor,
            health=self.health,
            deadlines=self.router.deadlines(rule_within(lambda: self.ruleset)),
            hold=quiet_hold(lambda: self.ruleset, self._timezone_of),
        )
        self.writer = GroupCommitWriter(
            self.clock,
            self._append,
            self.queues.deliver,
            max_queue=cfg.max_queue,
            queued=lambda: self.queued,
            on_commit=self._on_commit,
            on_error=self._on_journal_error,
            on_rows=store.journal_index.note,
        )
        self._live_gauges()
        await recovery.recover(
            self.parts,
            store,
            self.db,
            self.jdb,
            self.segment_index,
            self.outbox,
            self.metrics,
            self.clock,
        )
        self.upkeep = Upkeep(
            cfg,
            self.clock,
            self.metrics,
            self.health,
            self.checkpoints,
            self.parts,
            store,
            functools.partial(self.db, self.dead.count),
        )
        self.models = Models(self)
        await self.models.start()
        self.outbox.start()
        await self.outbox.load_pending()
        sup = self.supervisor
        for i in range(n):
            sup.spawn(f"part-{i}", functools.partial(self.queues.run, i), kind="partition")
            self._tasks.append(f"part-{i}")
        sup.spawn("checkpoint", self.upkeep.loop)
        sup.spawn("journal-index", self.upkeep.index_loop, vital=False)
        sup.spawn(
            "gc-freeze",
            functools.partial(samplers.gc_freeze_loop, cfg.gc_freeze_interval),
            vital=False,
        )
        sup.spawn(
            "loop-lag",
            functools.partial(loop_samplers.lag_loop, self.metrics.loop_lag.observe),
            vital=False,
        )
        sup.spawn(
            "loop-busy",
            functools.partial(loop_samplers.busy_loop, self.metrics.loop_busy.set),
            vital=False,
        )
        probe = functools.partial(
            samplers.probe_loop, cfg.probe_interval, self.health, cfg.data_dir, self.jdb
        )
        sup.spawn("storage-probe", probe, vital=False)
        self._tasks += [
            "checkpoint",
            "journal-index",
            "gc-freeze",
            "loop-lag",
            "loop-busy",
            "storage-probe",
        ]
        self.ready = True
        self.metrics.up.labels("embedded").set(1)
        await self.segment_backfill.start(self.ruleset)

    async def stop(self) -> None:
        """Graceful: stop intake, process what is queued, checkpoint, close."""
        self.ready = False
        self._stopping = True
        await self.writer.close()
        while self.queued:
            await asyncio.sleep(0.01)
        await self.segment_backfill.stop()
        if self.models is not None:
            await self.models.stop()
        await self.supervisor.cancel(self._tasks)
        try:
            await self.checkpoints.checkpoint()
        except Exception:  # a full disk at stop: the journal still holds everything
            logger.exception("final checkpoint failed; the next start replays the journal")
        await self.outbox.close()
        await self.router.close_all()
        assert self.store is not None
        await self.db(self.store.close)
        await self.db(self.dead.close)
        await self.db(self.suppression.close)
        self._exec.shutdown(wait=True)
        self._jexec.shutdown(wait=True)
        self.metrics.up.labels("embedded").set(0)
        self.lock.release()

    async def _load_rules(self) -> None:
        assert self.store is not None
        self.rules_version, self.rules_files, self.ruleset = await recovery.load_rules(
            self.store, self.db, self.router, self.cfg.rules, self.clock
        )
        self.metrics.ruleset_version.set(self.rules_version)

    # --- ingest --------------------------------------------------------------------
    async def accept(self, batch: Batch, *, admit: bool = True) -> None:
        """Journal one request's events durably, then queue them for processing.
        ``batch`` is the validated events and their JSON array (kept as sent). Raises
        Backpressure when admission refuses it (``admit``: judge it; the engine's own
        identity forwards are not)."""
        if not self.ready:
            raise NotReady("starting or stopping")
        if admit and len(self.suppression):  # erased with suppression: dropped, counted
            batch = self._unsuppressed(batch)
            if not batch[0]:
                return
        if admit:
            queued = self.queued + self.writer.buffered
            types = (ev.type for ev in batch[0])
            d = self.admission.decide(queued, types, self.outbox.delivery_wait())
            m = self.metrics
            if not d.admitted:
                m.admission_shed.labels(d.priority).inc(len(batch[0]))
                raise Backpressure(d.retry_after, queued)
            m.admission_admitted.labels(d.priority).inc(len(batch[0]))
        await self.writer.accept(batch)
        for etype, n in Counter(type_label(ev.type) for ev in batch[0]).items():
            self.metrics.events_accepted.labels(etype).inc(n)

    def early_refusal(self) -> Backpressure | None:
        """Backpressure if no request would be admitted now whatever its events (the
        HTTP layer then answers 429 without decoding the body), else None."""
        if not self.ready:
            return None
        queued = self.queued + self.writer.buffered
        retry = self.admission.refuse_all(queued, self.outbox.delivery_wait())
        if retry is None:
            return None
        self.metrics.admission_shed_early.inc()
        return Backpressure(retry, queued)

    def _unsuppressed(self, batch: Batch) -> Batch:
        events = batch[0]
        kept = [ev for ev in events if ev.customer_id not in self.suppression]
        if len(kept) == len(events):
            return batch
        self.metrics.events_suppressed.inc(len(events) - len(kept))
        return kept, encode_events(kept)

    async def _forward(self, events: list[Event]) -> None:
        """Journal identity forwards like accepted events (the outbox calls it, in order)."""
        await self.accept((events, encode_events(events)), admit=False)

    def _append(self, accepted_at: int, rows: list[tuple[int, bytes]]) -> Future[int]:
        """Start journaling ``rows`` on the journal's thread (the group commit's submit)."""
        assert self.store is not None
        return self._jexec.submit(self.store.append, accepted_at, rows)

    def _on_commit(self, n: int, seconds: float) -> None:
        self.metrics.journal_commit.observe(seconds)
        self.metrics.journal_batch.observe(n)
        if "journal" in self.health.faults:
            self.health.ok("journal")

    def _on_journal_error(self, err: Exception) -> Exception:
        """A failed journal commit: a storage error becomes StorageUnavailable (507 or
        503 with Retry-After), recorded for /readyz; anything else stays as it is."""
        cause = self.health.failed("journal", err)
        if cause is None:
            return err
        return StorageUnavailable("journal", cause, str(err), self.cfg.storage_retry_after)

    # --- processing (engine/embedded/queues.py) --------------------------------------
    def safe_time(self) -> int:
        """Timers may fire up to here without overtaking an accepted event."""
        now = self.clock.now()
        since = self.writer.pending_since
        return now if since is None else min(now, since - 1)

    def partition_idle(self, index: int) -> bool:
        """Whether partition ``index`` has no queued event (it may fire timers then)."""
        return self.queues.idle(index)

    def _on_output(self, out: Output) -> None:
        """Every partition's outputs: metrics, actions to the outbox, segment changes to
        the index, then the observers."""
        m = self.metrics
        if out.timer_due is not None:
            m.timer_lateness.observe(max(0, self.clock.now() - out.timer_due) / 1000)
        elif out.too_late:
            m.events_too_late.inc()
        if out.future:
            m.events_future.inc()
        for f in out.fires:
            m.rule_fires.labels(f.rule_id, f.variant, f.outcome).inc()
        for c in out.conversions:
            m.conversions.labels(c.rule_id, c.variant).inc()
        for rule_id, variant in out.exposures:
            m.exposures.labels(rule_id, variant).inc()
        if out.errors:
            m.expression_errors.inc(len(out.errors))
        for a in out.actions:
            self.outbox.add(a, out.timer_due is None)
        if out.forwards:
            now = self.clock.now()
            for ev in out.forwards:
                self.outbox.add(forward_action(ev, now), False)
        if (out.segment_changes or out.forwards) and self.segment_index is not None:
            self.segment_index.apply(out)
        for observe in self.observers:
            observe(out)

    # --- checkpoints (engine/embedded/checkpoints.py) ---------------------------------
    async def checkpoint(self, chunk: int = 250, spread: float = 0.0) -> None:
        """An inline checkpoint now (at stop, and for tests)."""
        await self.checkpoints.checkpoint(chunk, spread)

    async def paced_checkpoint(self) -> bool:
        """A paced checkpoint now; whether it was written."""
        return await self.checkpoints.paced_checkpoint()

    async def analytics_counts(
        self, hourly: bool, first: int, last: int, rule_id: str | None = None
    ) -> tuple[list[Period], Counter[Cell]]:
        """The report API's counts (engine/http/reports.py)."""
        return await self.checkpoints.analytics_counts(hourly, first, last, rule_id)

    async def analytics_totals(
        self, first: int, last: int
    ) -> tuple[list[DayTotals], Counter[Cell]]:
        """The all-rules report's day totals (engine/http/reports.py)."""
        return await self.checkpoints.analytics_totals(first, last)

    async def _compact(self) -> int:
        """Compact idle customers now (engine/embedded/upkeep.py)."""
        return await self.upkeep.compact()

    # --- customers and rules ---------------------------------------------------------
    def _timezone_of(self, customer_id: str) -> str | None:
        """The customer's time zone, for quiet hours at a delayed send (the outbox)."""
        st = self.partition(customer_id).store.get(customer_id)
        return None if st is None else st.timezone

    def partition(self, customer_id: str) -> Partition:
        return self.parts[partition_of(customer_id, len(self.parts))]

    async def customer(self, customer_id: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``GET /v1/customers/{id}`` (engine/embedded/customers.py)."""
        return await customers.view(self, customer_id)

    async def export(self, customer_id: str) -> tuple[int, dict[str, Any]]:
        """(status, body) of ``GET /v1/customers/{id}/export``
        (engine/embedded/customers.py)."""
        return await customers.export(self, customer_id)

    async def erase(self, customer_id: str, suppress: bool = False) -> dict[str, Any]:
        """Erase a customer everywhere in the data directory, and with ``suppress`` drop
        their later events (engine/embedded/customers.py)."""
        return await customers.erase(self, customer_id, suppress)

    def population_changed(self, population: Population) -> None:
        """New RFM boundaries or CLV parameters (engine/embedded/models.py): when segments
        read them, the rule set's segments digest changes and the backfill re-evaluates
        every customer against them (at start, the start's own backfill does)."""
        rs = self.ruleset
        if rs is None:
            return
        if rs.use_population(population.key(rs.segments_population)) and self.ready:
            task = asyncio.create_task(self.segment_backfill.start(rs), name="backfill-start")
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def deploy(self, files: dict[str, str]) -> int:
        """Validate a whole rule set and swap it in; raises RuleErrors (nothing changes).
        The running set's rule versions are kept for the flows open on them
        (rules/versions.py), stored with the new version."""
        assert self.store is not None
        history = self.ruleset.history() if self.ruleset is not None else None
        # parsing is CPU work (a 1 MiB file: ~1.4 s): in a thread, the loop keeps serving
        rs = await asyncio.to_thread(load_texts, sorted(files.items()), history)
        version: int = await self.db(self.store.save_rules, self.clock.now(), files, rs.archive)
        rs.require_addresses(self.router.needs_address)
        if self.models is not None:  # segments reading rfm/predicted: the population's key
            rs.use_population(self.models.population.key(rs.segments_population))
        self.ruleset, self.rules_files, self.rules_version = rs, dict(files), version
        for p in self.parts:
            p.set_ruleset(rs)
        if self.segment_index is not None:
            self.segment_index.set_ruleset(rs)
        self.metrics.ruleset_version.set(version)
        await self.segment_backfill.start(rs)
        return version

    async def rule_files(self, version: int) -> dict[str, str] | None:
        """The files of deployed rule set version ``version`` (None: no such version):
        what ``POST /v1/rules/rollback`` deploys again (engine/http/rules.py)."""
        assert self.store is not None
        files: dict[str, str] | None = await self.db(self.store.rules_files, version)
        return files
