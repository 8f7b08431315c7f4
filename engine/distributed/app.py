"""The faust app factory for ``nudge worker``.

Topics (all with ``partitions`` partitions, keyed by customer id, raw bytes):

- ``events``: one event JSON per message; the broker timestamp is the acceptance time.
- ``actions``: one Action JSON per message, produced by processing, consumed by delivery.
- ``<app id>-customers-changelog``: the ``customers`` table (state rows, timers inside).
- ``<app id>-segments``: segment memberships, compacted (engine/distributed/segments.py).

Processing: the ``events`` topic is subscribed through faust (so the assignor
co-partitions it with the changelog), but its records skip faust's per-message path: the
consumer (:class:`~engine.distributed.faust_adapter.BatchConsumer`) hands each whole fetch to
:meth:`WorkerApp._on_batch`, which runs it through
:class:`~engine.distributed.processing.PartitionEngine`, produces the actions and the
changelog rows in record batches, awaits the broker's acks and only then lets the
consumer ack the offsets. Fetches of ``actions`` go the same way into
:class:`~engine.distributed.delivery.Deliverer`. ``cfg.role`` picks one side only:
``process`` (no actions subscription) or ``deliver`` (its own consumer group, no table,
no events). A faust timer drains due
timers of the partitions this worker owns every ``tick`` seconds: up to the wall clock
when the partition is caught up (nothing unread before it), else up to the partition's
clock, so a timer never overtakes an event accepted before it came due.

Rebalances: from the revocation signal until the table's recovery callback nothing is
processed or fired; the callback drops the partitions no longer owned and builds the new
ones from the rows faust restored from the changelog (timer heaps rebuilt from them).

Segments: every batch's and tick's membership changes go to the segments topic with
its actions; after each recovery and each deploy the segment backfill
(engine/distributed/backfill.py) runs between batches and ticks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, cast

import msgspec
import orjson
from faust.types import TP

from connectors.routing import Router
from engine.distributed.backfill import WorkerBackfill
from engine.distributed.batching import BatchSender, OutputPipeline, StampedPayload
from engine.distributed.config import WorkerConfig
from engine.distributed.delivery import Deliverer
from engine.distributed.faust_adapter import BatchApp, committed_offsets, producer_of
from engine.distributed.metrics import MeteredEngine, OutputMeter
from engine.distributed.models import WorkerModels
from engine.distributed.processing import PartitionEngine
from engine.distributed.requests import ensure_replies_topic
from engine.distributed.rules import RuleWatcher, files_from_paths
from engine.distributed.segments import SegmentChange, segment_records
from engine.distributed.storage.changelog import TableLog
from engine.distributed.storage.redis import RedisState
from engine.distributed.topics import key_partition
from engine.intelligence.population import Population
from engine.metrics import Metrics
from engine.send_policy import rule_within
from engine.types import Action, Event
from rules.ruleset import RuleSet
from state.customer import CustomerState

__all__ = ["WorkerApp", "create_app"]

logger = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_action = msgspec.json.Decoder(Action).decode
_IDLE_MS = 400  # a partition with no input for this long counts as caught up


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class WorkerApp:
    """The faust app and the engine it drives. ``app`` is the faust.App to run."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        # aiokafka logs every request at DEBUG; building those records costs ~10% of a
        # worker's CPU even when nothing prints them
        logging.getLogger("aiokafka").setLevel(logging.INFO)
        self.app: Any = BatchApp(
            cfg.group_id,
            broker=cfg.broker,
            store="memory://",
            datadir=cfg.datadir,
            topic_partitions=cfg.partitions,
            topic_replication_factor=cfg.replication_factor,
            consumer_auto_offset_reset="earliest",
            web_enabled=False,
            autodiscover=False,
            broker_session_timeout=cfg.session_timeout,
            broker_heartbeat_interval=cfg.heartbeat_interval,
            broker_commit_interval=cfg.commit_interval,
            stream_wait_empty=False,
            table_standby_replicas=0,
            producer_acks=-1,
            producer_max_batch_size=cfg.producer_batch_bytes,
            producer_max_request_size=max(1_048_576, cfg.producer_batch_bytes * 2),
            broker_max_poll_records=cfg.batch_size,
            consumer_max_fetch_size=cfg.fetch_bytes,
        )
        app = self.app
        Path(app.conf.datadir).mkdir(parents=True, exist_ok=True)  # faust makes only the leaf
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
            "partitions": cfg.partitions,
        }
        self.events_topic = app.topic(cfg.events_topic, **raw)
        self.actions_topic = app.topic(cfg.actions_topic, **raw)  # see topics.py
        self.dead_topic = app.topic(cfg.dead_topic, **raw)
        self.table: Any = None  # the processing role's (see _subscribe_events)
        self.log: TableLog
        self.pipeline: OutputPipeline
        self.engine: PartitionEngine | None = None
        self.deliverer: Deliverer | None = None
        self.redis: RedisState | None = None
        self.router: Router | None = None
        self.watcher: RuleWatcher | None = None
        self.backfill: WorkerBackfill | None = None
        self.models: WorkerModels | None = None  # RFM boundaries, CLV parameters (Redis)
        # what the worker counts in nudge run's names (engine/distributed/metrics.py);
        # set by the CLI before the app starts, None: nothing counted
        self.metrics: Metrics | None = None
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self.rebalancing = True  # until the first recovery completes
        self._recovered = False
        self._last_input: dict[int, int] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._needs_address: Callable[[str, str], bool] = lambda rule_id, channel: False
        app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        if cfg.processing:
            self._subscribe_events()
        else:
            self.rebalancing = False  # nothing to recover: no table
        if cfg.delivering:
            app.topics.add(self.actions_topic)  # subscribed; records go to _on_actions
            # deliveries are not awaited on a revoke (a send may wait on Redis or a
            # claim): offsets acked after a revoke are discarded and the new owner's
            # delivery skips what was marked sent
            app.batch_consumer.add_batch_handler(
                cfg.actions_topic, self._on_actions, wait_on_revoke=False
            )
        app.task(self._startup)
        if cfg.stats_file:
            app.timer(cfg.stats_interval)(self._write_stats)

    def _subscribe_events(self) -> None:
        """The processing role: the events topic (records to ``_on_batch``), the customer
        table, the output pipeline and the timer ticker."""
        app, cfg = self.app, self.cfg
        self.table = app.Table(
            "customers",
            default=None,
            partitions=cfg.partitions,
            key_type=bytes,  # bytes: the "raw" serializer both ways
            value_type=bytes,
        )
        self.log = TableLog(self.table)
        self.table.on_recover(self._on_recovered)
        app.topics.add(self.events_topic)  # subscribed; records go to _on_batch
        app.batch_consumer.add_batch_handler(cfg.events_topic, self._on_batch)
        self.pipeline = OutputPipeline(
            BatchSender(lambda: producer_of(app)),
            cfg.actions_topic,
            self.log.topic,
            depth=cfg.output_depth,
            on_error=self._output_failed,
        )
        app.timer(cfg.tick)(self._tick)

    # --- start-up ------------------------------------------------------------------
    async def _startup(self) -> None:
        cfg = self.cfg
        self.redis = RedisState(
            cfg.redis_url,
            prefix=cfg.redis_prefix,
            claim_ttl=cfg.claim_ttl,
            ttl=cfg.idempotency_ttl,
        )
        if cfg.delivering:
            self.router = Router.from_config(cfg.sinks)
            await self.router.start_all()
            self.deliverer = Deliverer(
                self.router,
                self.redis,
                self._dead_letter,
                concurrency=cfg.delivery_concurrency,
                metrics=self.metrics,
                # rule steps' deliver_within where this worker also processes (role all)
                deadlines=self.router.deadlines(
                    rule_within(lambda: None if self.engine is None else self.engine.ruleset)
                ),
            )
        if not cfg.processing:
            self._ready.set()
            logger.info("worker %s ready (delivery only)", cfg.group_id)
            return
        self.watcher = RuleWatcher(self.redis, files_from_paths(cfg.rules))
        # sends routed to a provider sink need an address (the core suppresses them
        # without one); the routes alone decide it, so a process-only worker builds the
        # router's sinks without starting them (no credentials read)
        self._needs_address = (self.router or Router.from_config(cfg.sinks)).needs_address
        ruleset, version = await self.watcher.initial()
        ruleset.require_addresses(self._needs_address)
        meter = None if self.metrics is None else OutputMeter(self.metrics)
        self.engine = engine = MeteredEngine(ruleset, version, self._flush, meter)
        engine.analytics = cfg.analytics  # counts ride on the changelog rows
        self.backfill = self._new_backfill(self.redis)
        self.models = WorkerModels(
            self.redis,
            lambda: engine.parts,
            self._on_population,
            partition_count=cfg.partitions,
        )
        await self.models.start()
        # where customer reads and erases are answered (engine/distributed/requests.py)
        await ensure_replies_topic(cfg.broker.removeprefix("kafka://"), cfg.replies_topic)
        self._ready.set()
        if self._recovered:
            await self._sync_assignment()
        logger.info("worker %s ready (%s): rules version %d", cfg.app_id, cfg.role, version)
        await self.watcher.watch(self._on_rules, cfg.rules_poll)

    def _on_rules(self, ruleset: RuleSet, version: int) -> None:
        assert self.engine is not None
        ruleset.require_addresses(self._needs_address)
        self.engine.set_ruleset(ruleset, version)
        if self.backfill is not None and not self.rebalancing:
            self.backfill.start()  # else the recovery starts it

    def _on_population(self, population: Population) -> None:
        """New RFM boundaries or CLV parameters: segments reading them are re-evaluated
        for every customer (the backfill; after a rebalance the recovery starts it)."""
        assert self.engine is not None
        changed = self.engine.set_population(population)
        if changed and self.backfill is not None and not self.rebalancing:
            self.backfill.start()

    def _new_backfill(self, redis: RedisState) -> WorkerBackfill:
        worker = f"{socket.gethostname()}:{os.getpid()}"

        async def publish(progress: dict[str, Any], ttl: int) -> None:
            await redis.put_backfill(worker, progress, ttl)

        return WorkerBackfill(self, publish)

    # --- what the backfill reads (engine/distributed/backfill.py BackfillHost) ---------
    @property
    def lock(self) -> asyncio.Lock:
        return self._lock

    def failed(self, exc: BaseException) -> None:
        _crash("segment backfill failed; exiting so a restart recovers", exc_info=exc)

    # --- rebalances ----------------------------------------------------------------
    async def _on_revoked(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        if not self.cfg.processing:
            return
        self.rebalancing = True
        self._recovered = False
        if self.backfill is not None:
            await self.backfill.stop()
        await self.app.batch_consumer.wait_batches()
        await self.pipeline.drain()  # timer output too: on the changelog before handover

    async def _on_recovered(self) -> None:
        self._recovered = True
        if self.engine is not None:  # else _startup syncs once the engine exists
            await self._sync_assignment()

    async def _sync_assignment(self) -> None:
        engine = self.engine
        assert engine is not None
        topic = self.cfg.events_topic
        owned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}
        async with self._lock:
            for p in list(engine.parts):
                if p not in owned:
                    engine.revoke(p)
            now = _wall_ms()
            for p in sorted(owned):
                restored = list(self.log.take_restored(p))  # also drops stale rows
                if p not in engine.parts:
                    engine.assign(p, restored)
                    self._last_input[p] = now
            self.rebalancing = False
        logger.info("recovered; owning partitions %s", sorted(owned))
        if self.backfill is not None:
            self.backfill.start()

    # --- processing ----------------------------------------------------------------
    async def _on_batch(self, batch: dict[TP, list[Any]]) -> asyncio.Future[None] | None:
        """One fetch of ``events`` records (aiokafka ``ConsumerRecord``s by partition),
        processed and its output queued; returns the future of that output's durability
        (the consumer acks the offsets when it resolves). ``None`` when a rebalance began
        first: nothing processed, the records are fetched again from committed offsets."""
        consumer = self.app.consumer
        while not self._ready.is_set() or self.rebalancing:
            if not consumer.flow_active:
                return None
            await asyncio.sleep(0.02)
        engine = self.engine
        assert engine is not None
        async with self._lock:
            if self.rebalancing or not consumer.flow_active:
                return None
            now = _wall_ms()
            last_input = self._last_input
            for tp in batch:
                last_input[tp.partition] = now
            durable = await self._guard(engine.process(r for rs in batch.values() for r in rs))
            # acknowledged before the next batch or tick runs. Letting batches overlap
            # measured no faster (44k vs 46k events/s, one bench_worker run each) and
            # one failover test run then missed 4 timer actions, not yet explained
            await self._guard(asyncio.shield(durable))
            replies = engine.take_replies()
            if replies:  # customer reads and erases, answered once their output is durable
                await self.pipeline.sender.send_all(self.cfg.replies_topic, {0: list(replies)})
        return cast("asyncio.Future[None]", durable)

    async def _tick(self) -> None:
        engine = self.engine
        if engine is None or self.rebalancing or not engine.parts:
            return
        await self._guard(self._fire({p: self.limit(p) for p in engine.parts}))

    def limit(self, index: int) -> int:
        """How far the timers of owned partition ``index`` may fire now: the wall clock
        when it is caught up (nothing unread before it), else its clock."""
        engine = self.engine
        assert engine is not None
        part = engine.parts[index]
        now = _wall_ms()
        consumer = self.app.consumer
        committed = committed_offsets(consumer)
        tp = TP(self.cfg.events_topic, index)
        try:
            hw = consumer.highwater(tp)
        except Exception:
            hw = None
        done = max(part.position, committed.get(tp) or 0)
        idle = now - self._last_input.get(index, 0) >= _IDLE_MS
        caught_up = hw is None or done >= hw or idle
        return now if caught_up else part.clock.now()

    async def _fire(self, limits: dict[int, int]) -> None:
        engine = self.engine
        assert engine is not None
        async with self._lock:
            if not self.rebalancing:
                await engine.fire_timers(limits)
                await self._guard(self.pipeline.drain())

    async def _flush(
        self,
        actions: dict[int, list[Action]],
        rows: dict[int, list[CustomerState]],
        forwards: list[Event],
        segments: dict[int, list[SegmentChange]],
        erased: dict[int, list[str]],
        counts: dict[int, dict[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        """Actions to the actions topic (the customer's partition), identity forwards
        to the events topic (the target customer's partition, as the ingest keys it) and
        membership changes to the segments topic (the customer's partition), then, once
        acked, the rows and the erased customers' tombstones to the changelog (same
        partition): see OutputPipeline."""
        records = self.log.records
        also: dict[str, dict[int, list[tuple[bytes, bytes | None]]]] = {}
        if forwards:
            by_part: dict[int, list[tuple[bytes, bytes | None]]] = {}
            for ev in forwards:
                key = ev.customer_id.encode()
                by_part.setdefault(key_partition(key, self.cfg.partitions), []).append(
                    (key, _encode(ev))
                )
            also[self.cfg.events_topic] = by_part
        stamped: dict[str, StampedPayload] = {}
        if segments:
            stamped[self.cfg.segments_topic] = {
                p: segment_records(changes) for p, changes in segments.items()
            }
        return await self.pipeline.submit(
            {
                p: [(a.customer_id.encode(), _encode(a)) for a in acts]
                for p, acts in actions.items()
            },
            {
                p: records(rows.get(p, ()), (counts or {}).get(p))
                + [(cid.encode(), None) for cid in erased.get(p, ())]
                for p in rows.keys() | erased.keys()
            },
            also,
            stamped,
        )

    def _output_failed(self, exc: BaseException) -> None:
        _crash("producing a batch's output failed (%r); exiting so a restart recovers", exc)

    async def _guard(self, coro: Any) -> Any:
        """Crash-only: an unexpected error leaves memory ahead of the changelog, so the
        process exits and a restart recovers from Kafka."""
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _crash("processing failed; exiting so a restart recovers", exc_info=exc)

    # --- delivery ------------------------------------------------------------------
    async def _on_actions(self, batch: dict[TP, list[Any]]) -> asyncio.Future[None] | None:
        """One fetch of ``actions`` records: delivered by a task (at most
        ``delivery_batches`` in flight; beyond, the fetch loop waits); the consumer acks
        the offsets when the task is done. ``None`` when a rebalance began first."""
        consumer = self.app.consumer
        while self.deliverer is None:
            if not consumer.flow_active:
                return None
            await asyncio.sleep(0.02)
        actions = []
        for recs in batch.values():
            for rec in recs:
                try:
                    actions.append(_decode_action(rec.value or b""))
                except msgspec.MsgspecError as err:
                    logger.error("undecodable action skipped: %s", err)
        while len(self._deliveries) >= self.cfg.delivery_batches:
            if not consumer.flow_active:  # a rebalance must not wait on a slow sink
                return None
            await asyncio.wait(self._deliveries, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._guard(self._deliver(actions)))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    async def _deliver(self, actions: list[Action]) -> None:
        deliverer = self.deliverer
        assert deliverer is not None
        size = self.cfg.action_batch_size
        for i in range(0, len(actions), size):
            await deliverer.deliver_all(actions[i : i + size])

    async def _dead_letter(self, action: Action, error: str, reason: str = "rejected") -> None:
        body = orjson.dumps({"action": action.to_json_dict(), "error": error, "reason": reason})
        await self.dead_topic.send(key=action.customer_id.encode(), value=body)

    # --- stats -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": os.getpid(), "at": _wall_ms()}
        if self.engine is not None:
            self.engine.refresh_gauges()
            out["engine"] = dict(vars(self.engine.stats))
        if self.deliverer is not None:
            ds = self.deliverer.stats
            d: dict[str, Any] = dict(ds.counters())
            d["latency_ms"] = _percentiles(sorted(ds.latencies_ms))
            out["delivery"] = d
        if self.redis is not None:
            out["redis_outages"] = self.redis.outages
        if self.models is not None:
            pop = self.models.population
            out["models"] = {
                "clv_version": None if pop.clv is None else pop.clv.version,
                "rfm": pop.rfm is not None,
            }
        return out

    async def _write_stats(self) -> None:
        path = self.cfg.stats_file
        assert path is not None
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(self.stats()))
        os.replace(tmp, path)


def _crash(msg: str, *args: Any, exc_info: BaseException | None = None) -> NoReturn:
    """Crash-only exit: memory may be ahead of Kafka, a restart recovers from it."""
    logger.error(msg, *args, exc_info=exc_info)
    logging.shutdown()
    os._exit(70)


def _percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    n = len(values)
    return {
        "n": n,
        "p50": values[n // 2],
        "p99": values[min(n - 1, int(n * 0.99))],
        "max": values[-1],
    }


def create_app(cfg: WorkerConfig) -> WorkerApp:
    """Build the worker (nothing connects until faust starts it)."""
    return WorkerApp(cfg)
