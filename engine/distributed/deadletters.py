"""Dead letters of the distributed runtime: list them, replay them through the workers.

A worker that gives up on an action (its sink refused it permanently, or every retry
failed) produces ``{"action": ..., "error": ...}`` to ``<actions topic>-dead`` (key: the
customer id) and marks the action's idempotency key ``dead`` in Redis
(engine/distributed/delivery.py). The letters not yet replayed are those after the
offsets committed by the consumer group ``<app id>-deadletters``.

:func:`replay` reads them up to the end as of its start and, by the state of each
action's key in Redis:

- ``dead``: the key is released and the action produced to the ``actions`` topic again,
  where a worker claims it and sends it through its own routing; if it fails again it
  comes back to the dead-letter topic with the new error, after the committed offsets;
- ``sent`` or ``sending``: skipped (a replay before already handed it to a worker, or a
  worker has sent it);
- absent (expired after the keys' TTL, or Redis lost them): produced as well.

Then it commits the offsets it read. So a second replay, or one running beside another,
sends nothing twice: the worker's claim on the key dedupes the copies.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import orjson

from engine.distributed.storage.redis import RedisState
from engine.types import Action, to_ms

__all__ = ["DeadLetter", "ReplayResult", "group_of", "letters", "replay"]

logger = logging.getLogger(__name__)

_decode_action = msgspec.json.Decoder(Action).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    action: Action | None  # None: the record does not decode
    error: str
    raw: bytes


@dataclass
class ReplayResult:
    replayed: int = 0  # produced to the actions topic again
    skipped: int = 0  # already sent, or in a worker's hands
    undecodable: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"replayed": self.replayed, "skipped": self.skipped, "undecodable": self.undecodable}


def group_of(app_id: str) -> str:
    return f"{app_id}-deadletters"


def _letter(partition: int, offset: int, value: bytes | None) -> DeadLetter:
    raw = value or b""
    try:
        body = orjson.loads(raw)
        fields = dict(body["action"])  # the public shape: fire_at in RFC 3339
        fields["fire_at"] = to_ms(datetime.fromisoformat(fields["fire_at"]))
        action = _decode_action(orjson.dumps(fields))
        return DeadLetter(partition, offset, action, str(body.get("error", "")), raw)
    except (orjson.JSONDecodeError, msgspec.MsgspecError, KeyError, TypeError, ValueError) as err:
        return DeadLetter(partition, offset, None, f"undecodable: {err}", raw)


async def _partitions(bootstrap: str, topic: str) -> int:
    """How many partitions ``topic`` has (0: it does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap.removeprefix("kafka://"))
    await admin.start()
    try:
        for t in await admin.describe_topics():  # all: naming one could auto-create it
            if t["topic"] == topic and t.get("error_code", 0) == 0:
                return len(t["partitions"])
        return 0
    finally:
        await admin.close()


async def letters(
    bootstrap: str, topic: str, group: str, commit: list[Any] | None = None
) -> AsyncIterator[DeadLetter]:
    """The letters of ``topic`` after ``group``'s committed offsets, up to the end as of
    the call. ``commit``: a list the consumer is appended to, so the caller can commit
    what it handled (the consumer is closed by the caller then)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap.removeprefix("kafka://"),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    handed = False
    try:
        parts = await _partitions(bootstrap, topic)
        if not parts:
            return
        tps = [TopicPartition(topic, p) for p in range(parts)]
        consumer.assign(tps)
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        while todo:
            got = await consumer.getmany(*todo, timeout_ms=1000)
            for tp, records in got.items():
                for rec in records:
                    if rec.offset < ends[tp]:
                        yield _letter(tp.partition, rec.offset, rec.value)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
                    consumer.pause(tp)
        if commit is not None:
            commit.append((consumer, {tp: ends[tp] for tp in tps}))
            handed = True
    finally:
        if not handed:
            await consumer.stop()


async def replay(
    bootstrap: str,
    redis: RedisState,
    actions_topic: str,
    app_id: str,
) -> ReplayResult:
    """Replay the pending letters of ``<actions_topic>-dead`` (module docstring)."""
    from aiokafka import AIOKafkaProducer

    result = ReplayResult()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap.removeprefix("kafka://"), acks="all", enable_idempotence=True
    )
    await producer.start()
    handed: list[Any] = []
    try:
        futs = []
        topic = f"{actions_topic}-dead"
        async for letter in letters(bootstrap, topic, group_of(app_id), handed):
            action = letter.action
            if action is None:
                result.undecodable += 1
                logger.error("p%d@%d: %s", letter.partition, letter.offset, letter.error)
                continue
            key = action.idempotency_key
            status = await redis.status(key)
            if status in ("sent", "sending"):
                result.skipped += 1
                continue
            if status is not None:  # dead: give it back, so a worker's claim succeeds
                await redis.release(key)
            futs.append(
                await producer.send(actions_topic, _encode(action), key=action.customer_id.encode())
            )
            result.replayed += 1
        for fut in futs:
            await fut
        for consumer, offsets in handed:  # everything read is handled: commit it
            await consumer.commit(offsets)
    finally:
        for consumer, _ in handed:
            await consumer.stop()
        await producer.stop()
    return result
