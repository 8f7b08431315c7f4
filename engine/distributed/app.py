"""The faust app factory for ``nudge worker``.

Topics (all with ``partitions`` partitions, keyed by customer id, raw bytes):

- ``events``: one event JSON per message; the broker timestamp is the acceptance time.
- ``actions``: one Action JSON per message, produced by processing, consumed by delivery.
- ``<app id>-customers-changelog``: the ``customers`` table (state rows, timers inside).

Agents: ``process`` takes batches of events (``take_events(batch_size, batch_within)``)
into :class:`~engine.distributed.processing.PartitionEngine`; ``deliver`` takes batches
of actions into :class:`~engine.distributed.delivery.Deliverer`. A faust timer drains due
timers of the partitions this worker owns every ``tick`` seconds: up to the wall clock
when the partition is caught up (nothing unread before it), else up to the partition's
clock, so a timer never overtakes an event accepted before it came due.

Rebalances: from the revocation signal until the table's recovery callback nothing is
processed or fired; the callback drops the partitions no longer owned and builds the new
ones from the rows faust restored from the changelog (timer heaps rebuilt from them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import asdict
from typing import Any, cast

import faust
import msgspec
import orjson
from faust.types import TP

from connectors.routing import Router
from engine.distributed.config import WorkerConfig
from engine.distributed.delivery import Deliverer
from engine.distributed.processing import InputRecord, PartitionEngine
from engine.distributed.rules import RuleWatcher, files_from_paths
from engine.types import Action
from rules.ruleset import RuleSet
from state.faust import TableLog
from state.redis import RedisState

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
        self.app: Any = faust.App(
            cfg.app_id,
            broker=cfg.broker,
            store="memory://",
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
            stream_buffer_maxsize=max(4096, cfg.batch_size * 2),
        )
        app = self.app
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
            "partitions": cfg.partitions,
        }
        self.events_topic = app.topic(cfg.events_topic, **raw)
        self.actions_topic = app.topic(cfg.actions_topic, **raw)
        self.dead_topic = app.topic(cfg.dead_topic, **raw)
        self.table = app.Table(
            "customers",
            default=None,
            partitions=cfg.partitions,
            key_type=bytes,  # bytes: the "raw" serializer both ways
            value_type=bytes,
        )
        self.log = TableLog(self.table)
        self.engine: PartitionEngine | None = None
        self.deliverer: Deliverer | None = None
        self.redis: RedisState | None = None
        self.router: Router | None = None
        self.watcher: RuleWatcher | None = None
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self.rebalancing = True  # until the first recovery completes
        self._recovered = False
        self._last_input: dict[int, int] = {}
        self.table.on_recover(self._on_recovered)
        app.on_partitions_revoked.connect(cast(Any, self._on_revoked))
        app.agent(self.events_topic, name="nudge-process")(self._process_agent)
        app.agent(self.actions_topic, name="nudge-deliver")(self._deliver_agent)
        app.timer(cfg.tick)(self._tick)
        app.task(self._startup)
        if cfg.stats_file:
            app.timer(cfg.stats_interval)(self._write_stats)

    # --- start-up ------------------------------------------------------------------
    async def _startup(self) -> None:
        cfg = self.cfg
        self.redis = RedisState(
            cfg.redis_url,
            prefix=cfg.redis_prefix,
            claim_ttl=cfg.claim_ttl,
            ttl=cfg.idempotency_ttl,
        )
        self.watcher = RuleWatcher(self.redis, files_from_paths(cfg.rules))
        ruleset, version = await self.watcher.initial()
        self.router = Router.from_config(cfg.sinks)
        await self.router.start_all()
        self.engine = PartitionEngine(ruleset, version, self._send_actions, self.log.write)
        self.deliverer = Deliverer(
            self.router, self.redis, self._dead_letter, concurrency=cfg.delivery_concurrency
        )
        self._ready.set()
        if self._recovered:
            await self._sync_assignment()
        logger.info("worker %s ready: rules version %d", cfg.app_id, version)
        await self.watcher.watch(self._on_rules, cfg.rules_poll)

    def _on_rules(self, ruleset: RuleSet, version: int) -> None:
        assert self.engine is not None
        self.engine.set_ruleset(ruleset, version)

    # --- rebalances ----------------------------------------------------------------
    async def _on_revoked(self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        self.rebalancing = True
        self._recovered = False

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

    # --- processing ----------------------------------------------------------------
    async def _process_agent(self, stream: Any) -> None:
        cfg = self.cfg
        async for events in stream.take_events(cfg.batch_size, within=cfg.batch_within):
            await self._ready.wait()
            while self.rebalancing:
                await asyncio.sleep(0.02)
            records = []
            for ev in events:
                m = ev.message
                records.append(
                    InputRecord(m.partition, m.offset, round(m.timestamp * 1000), m.value)
                )
            await self._guard(self._process(records))

    async def _process(self, records: list[InputRecord]) -> None:
        engine = self.engine
        assert engine is not None
        now = _wall_ms()
        async with self._lock:
            for rec in records:
                self._last_input[rec.partition] = now
            await engine.process(records)

    async def _tick(self) -> None:
        engine = self.engine
        if engine is None or self.rebalancing or not engine.parts:
            return
        now = _wall_ms()
        consumer = self.app.consumer
        committed: dict[Any, Any] = getattr(consumer, "_committed_offset", {})
        limits: dict[int, int] = {}
        for p, part in engine.parts.items():
            tp = TP(self.cfg.events_topic, p)
            try:
                hw = consumer.highwater(tp)
            except Exception:
                hw = None
            done = max(part.last_offset + 1, committed.get(tp) or 0)
            idle = now - self._last_input.get(p, 0) >= _IDLE_MS
            caught_up = hw is None or done >= hw or idle
            limits[p] = now if caught_up else part.clock.now()
        await self._guard(self._fire(limits))

    async def _fire(self, limits: dict[int, int]) -> None:
        engine = self.engine
        assert engine is not None
        async with self._lock:
            if not self.rebalancing:
                await engine.fire_timers(limits)

    async def _send_actions(self, actions: list[Action]) -> None:
        producer = self.app.producer
        topic = self.cfg.actions_topic
        futs = [
            await producer.send(topic, a.customer_id.encode(), _encode(a), None, None, None)
            for a in actions
        ]
        await asyncio.gather(*futs)

    async def _guard(self, coro: Any) -> None:
        """Crash-only: an unexpected error leaves memory ahead of the changelog, so the
        process exits and a restart recovers from Kafka."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("processing failed; exiting so a restart recovers")
            logging.shutdown()
            os._exit(70)

    # --- delivery ------------------------------------------------------------------
    async def _deliver_agent(self, stream: Any) -> None:
        cfg = self.cfg
        async for values in stream.take(cfg.action_batch_size, within=cfg.batch_within):
            await self._ready.wait()
            deliverer = self.deliverer
            assert deliverer is not None
            actions = []
            for raw in values:
                try:
                    actions.append(_decode_action(raw))
                except msgspec.MsgspecError as err:
                    logger.error("undecodable action skipped: %s", err)
            await deliverer.deliver_all(actions)

    async def _dead_letter(self, action: Action, error: str) -> None:
        body = orjson.dumps({"action": action.to_json_dict(), "error": error})
        await self.dead_topic.send(key=action.customer_id.encode(), value=body)

    # --- stats -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": os.getpid(), "at": _wall_ms()}
        if self.engine is not None:
            self.engine.refresh_gauges()
            out["engine"] = asdict(self.engine.stats)
        if self.deliverer is not None:
            d = asdict(self.deliverer.stats)
            lat = sorted(d.pop("latencies_ms"))
            d["latency_ms"] = _percentiles(lat)
            out["delivery"] = d
        if self.redis is not None:
            out["redis_outages"] = self.redis.outages
        return out

    async def _write_stats(self) -> None:
        path = self.cfg.stats_file
        assert path is not None
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(self.stats()))
        os.replace(tmp, path)


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
