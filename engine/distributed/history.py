"""A customer's recent events and actions on the distributed runtime, for the console's
timeline (engine/analytics/source.py ``HistorySource``).

No process keeps a per-customer history here either. What the runtime holds is the
customer's partition of the ``events`` topic (its events as accepted, keyed by its id)
and of the ``actions`` topic (the actions produced for it, the same partition index:
the topics are co-partitioned), until their retention; and in Redis each action's
delivery status under its idempotency key (``sent``, ``dead``; ``sending`` while a
claim is held; none: not delivered yet, or the key expired). :class:`TopicHistory`
reads the last ``scan`` records of both partitions, keeps the customer's by key (no
JSON is decoded for other customers' records) and asks Redis for the statuses.

An erase leaves the id's earlier records in the topics until their retention
(engine/distributed/erase_marks.py); the timeline must not show them. The erase
request is itself a record of the customer's ``events`` partition, so the events
before the newest erase request in the window are dropped, and so are the actions
fired (``fire_at``, the processing time) at or before its acceptance time: the
worker processes the erase at that time, after every input accepted before it. When
the window does not reach back to the partition's start, an erase before the window
cannot be seen: actions fired before the window's first event are left out as well,
so the timeline covers the window's span and nothing older.

One lookup at a time per ingest (a lock): a page view reads up to ``scan`` records of
two partitions, ~0.1 s per 10,000 records on one core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
import orjson

from engine.analytics.source import CustomerHistory
from engine.distributed.config import IDEMPOTENCY_TTL_S
from engine.distributed.requests import REQUEST_HEADER
from engine.distributed.storage.redis import RedisState
from engine.types import Action

__all__ = ["TopicHistory"]

logger = logging.getLogger(__name__)


class _Head(msgspec.Struct):
    type: str = ""
    event_id: str = ""
    timestamp: str = ""


_head = msgspec.json.Decoder(_Head)
_action = msgspec.json.Decoder(Action).decode


class TopicHistory:
    """Reads one customer's records from the tails of its ``events`` and ``actions``
    partitions (``bootstrap``: the broker; ``redis``: for the delivery statuses, None:
    every action's status is ``produced``)."""

    def __init__(
        self,
        bootstrap: str,
        events_topic: str,
        actions_topic: str,
        redis: RedisState | None,
        *,
        limit: int = 100,
        timeout: float = 10.0,
        status_ttl_s: int = IDEMPOTENCY_TTL_S,
    ) -> None:
        self.bootstrap = bootstrap.removeprefix("kafka://")
        self.status_ttl_s = status_ttl_s
        self.events_topic = events_topic
        self.actions_topic = actions_topic
        self.redis = redis
        self.limit = limit
        self.timeout = timeout
        self._consumer: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self._consumer.start()

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def read(self, customer_id: str, partition: int, scan: int) -> CustomerHistory:
        """The customer's events and actions among the last ``scan`` records of
        ``partition`` of each topic, newest first (at most ``limit`` of each)."""
        from aiokafka import TopicPartition

        ev_tp = TopicPartition(self.events_topic, partition)
        ac_tp = TopicPartition(self.actions_topic, partition)
        async with self._lock:
            records, truncated, complete = await self._tail([ev_tp, ac_tp], scan)
        key = customer_id.encode()
        events: list[dict[str, Any]] = []
        erased_at: int | None = None
        first_ts: int | None = None
        for rec in records[ev_tp]:
            if first_ts is None:
                first_ts = rec.timestamp
            if rec.key != key:
                continue
            if rec.headers and any(k == REQUEST_HEADER for k, _ in rec.headers):
                if _is_erase(rec.value):  # what came before is of the erased customer
                    events.clear()
                    erased_at = rec.timestamp
                continue
            try:
                head = _head.decode(rec.value or b"")
            except msgspec.MsgspecError:
                continue
            events.append(
                {
                    "type": head.type,
                    "event_id": head.event_id,
                    "timestamp": head.timestamp,
                    "accepted_at": rec.timestamp,
                }
            )
        cutoff = erased_at
        if cutoff is None and truncated[ev_tp] and first_ts is not None:
            cutoff = first_ts - 1  # the window's span: nothing fired before it
        acts: list[Action] = []
        for rec in records[ac_tp]:
            if rec.key != key:
                continue
            try:
                a = _action(rec.value or b"")
            except msgspec.MsgspecError:
                continue
            if a.customer_id == customer_id and (cutoff is None or a.fire_at > cutoff):
                acts.append(a)
        events = events[::-1][: self.limit]
        acts = sorted(acts, key=lambda a: a.fire_at, reverse=True)[: self.limit]
        stored = await self._statuses([a.idempotency_key for a in acts])
        now_ms = int(time.time() * 1000)
        statuses = [
            status_label(got, a.fire_at, now_ms, self.status_ttl_s)
            for a, got in zip(acts, stored, strict=True)
        ]
        actions = [
            {
                "rule_id": a.rule_id,
                "channel": a.channel,
                "template": a.template,
                "variant": a.variant,
                "fire_at": a.fire_at,
                "status": status,
            }
            for a, status in zip(acts, statuses, strict=True)
        ]
        covers = (
            f"Events found among the last {scan:,} records of this customer's partition of "
            "the events topic (kept until the topic's retention), the actions produced for "
            "it in the same span (status from the delivery's idempotency keys in Redis: "
            "sent, dead, sending, pending; expired once older than the "
            f"{self.status_ttl_s / 86_400:g} days Redis keeps a status; unknown "
            "while Redis does not answer), and the "
            "flows this customer is in. Nothing from before an erase of this id. Older "
            "history is not kept per customer."
        )
        if not complete:
            covers += " The topics did not answer in time: the timeline may be incomplete."
        return CustomerHistory(events, actions, covers)

    async def _tail(
        self, tps: list[Any], scan: int
    ) -> tuple[dict[Any, list[Any]], dict[Any, bool], bool]:
        """The last ``scan`` records of each of ``tps`` (as of now), oldest first;
        whether each window starts after its partition's start; whether every
        partition was read to its end within ``timeout``."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("TopicHistory not started")
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        out: dict[Any, list[Any]] = {tp: [] for tp in tps}
        truncated = {tp: ends[tp] - scan > starts[tp] for tp in tps}
        todo = []
        for tp in tps:
            if ends[tp] > starts[tp]:
                consumer.seek(tp, max(starts[tp], ends[tp] - scan))
                todo.append(tp)
        deadline = time.monotonic() + self.timeout
        try:
            while todo and time.monotonic() < deadline:
                batch = await consumer.getmany(*todo, timeout_ms=200, max_records=10_000)
                for tp, recs in batch.items():
                    out[tp].extend(r for r in recs if r.offset < ends[tp])
                todo = [tp for tp in todo if await consumer.position(tp) < ends[tp]]
        finally:
            consumer.assign([])
        if todo:
            logger.warning("timeline: %s not read to its end in %gs", todo, self.timeout)
        return out, truncated, not todo

    async def _statuses(self, keys: list[str]) -> list[str | None]:
        redis = self.redis
        if redis is None or not keys:
            return ["produced"] * len(keys)
        try:
            got = await asyncio.wait_for(
                asyncio.gather(*(redis.status(k) for k in keys)), self.timeout
            )
        except TimeoutError:  # Redis away: the page still shows the actions
            return ["unknown"] * len(keys)
        return list(got)


def status_label(stored: str | None, fire_at: int, now_ms: int, ttl_s: int) -> str:
    """What the timeline shows for an action whose idempotency key in Redis holds
    ``stored`` (None: no key): no key is ``pending`` while the action is younger than the
    keys' TTL, ``expired`` after (Redis dropped its status: whether it was sent is no
    longer recorded; it is not waiting)."""
    if stored is not None:
        return stored
    return "expired" if fire_at < now_ms - ttl_s * 1000 else "pending"


def _is_erase(value: bytes | None) -> bool:
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("kind") == "erase"
