"""Segment membership on the distributed runtime: the compacted ``<app id>-segments``
topic the workers write and the ingest reads (docs/segments.md, "On nudge worker").

The topic: one record per membership change, produced by the worker that owns the
customer, to the customer's partition (the one its events go to), in the same output
submission as the actions of the input that changed it (so before the changelog row that
holds it: engine/distributed/batching.py ``OutputPipeline``).

- key: ``segment id \\x00 customer id`` (UTF-8);
- an entry: value = the entry time (epoch ms, ASCII digits), record timestamp = the same;
- an exit: a tombstone (no value), record timestamp = the exit time;
- a drop (the customer is gone, not changed: an anonymous id merged into a known one,
  whose memberships go with its state): a tombstone with the header ``nudge-drop``,
  one per segment of the rule set the worker ran, whether the id was a member or not.

Compaction keeps each key's last record, so the topic read from the beginning is the
membership as it stands (tombstones go after ``delete.retention.ms``, a day by default).
A reprocessing after a crash produces the same records (the core decides at the same
processing times), so a record read twice changes nothing; what a backfill produced
before a crash may be produced again at a later time (the backfill runs again).

:class:`SegmentFeed` is the ingest's side: an aiokafka consumer with no group, every
partition assigned, from the beginning, applying each record to a
:class:`~engine.segment_index.SegmentIndex` (open: it keeps every segment seen,
the listing shows those of the deployed rule set). It is :attr:`~SegmentFeed.caught_up`
once it has read up to the end offsets it saw when it started.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from engine.distributed.batching import Stamped
from engine.segment_index import SegmentIndex
from engine.tasks import cancel

__all__ = ["DROP_HEADER", "SegmentChange", "SegmentFeed", "decode_key", "segment_records"]

logger = logging.getLogger(__name__)

DROP_HEADER = "nudge-drop"
_DROP: list[tuple[str, bytes]] = [(DROP_HEADER, b"1")]
_NONE: list[tuple[str, bytes]] = []

SegmentChange = tuple[str, str, bool | None, int]
"""``(customer id, segment id, entered, at ms)`` as ``Output.segment_changes`` has it;
``entered`` None: dropped (see the module doc)."""


def segment_records(changes: Iterable[SegmentChange]) -> list[Stamped]:
    """The topic records of ``changes``, in order."""
    out: list[Stamped] = []
    for cid, sid, entered, at in changes:
        key = f"{sid}\x00{cid}".encode()
        if entered:
            out.append((key, str(at).encode(), at, _NONE))
        else:
            out.append((key, None, at, _DROP if entered is None else _NONE))
    return out


def decode_key(key: bytes) -> tuple[str, str]:
    """``(segment id, customer id)`` of a record key."""
    sid, _, cid = key.decode().partition("\x00")
    return sid, cid


def apply_record(index: SegmentIndex, rec: Any) -> None:
    """Apply one consumed record (an aiokafka ``ConsumerRecord``) to ``index``."""
    if not rec.key:
        return
    sid, cid = decode_key(rec.key)
    if rec.value is not None:
        index.enter(sid, cid, int(rec.value))
    else:
        dropped = any(name == DROP_HEADER for name, _ in rec.headers or ())
        index.leave(sid, cid, rec.timestamp, counted=not dropped)


class SegmentFeed:
    """Follows the segments topic into ``index`` (see the module doc). ``start`` returns
    at once; the topic may not exist yet (no worker started): it is waited for. Read
    ``index`` afresh each time (an error replaces it with one read anew)."""

    def __init__(self, bootstrap: str, topic: str, index: SegmentIndex) -> None:
        self.bootstrap = bootstrap.removeprefix("kafka://")
        self.topic = topic
        self.index = index
        self.caught_up = False
        self.records = 0
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="segment-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _partitions(self) -> list[Any]:
        from aiokafka import TopicPartition

        consumer = self._consumer
        client = consumer._client  # aiokafka's: tracks the topic in its metadata requests
        await client.add_topic(self.topic)
        while True:
            parts = consumer.partitions_for_topic(self.topic)
            if parts:
                return [TopicPartition(self.topic, p) for p in sorted(parts)]
            logger.info("segments topic %s not there yet; waiting", self.topic)
            await asyncio.sleep(1.0)
            await client.force_metadata_update()

    async def _run(self) -> None:
        """Follow the topic; after an unexpected error, read it again from the beginning
        into a fresh index (not ready meanwhile)."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("segment feed failed; reading the topic again in 1 s")
                self.caught_up = False
                self.index = SegmentIndex(None)
                self.records = 0
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        consumer = self._consumer
        tps = await self._partitions()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[Any, int] = await consumer.end_offsets(tps)
        behind = {tp for tp, end in ends.items() if end > 0}
        self.caught_up = not behind
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            index = self.index
            for recs in batch.values():
                for rec in recs:
                    apply_record(index, rec)
                self.records += len(recs)
            if behind:
                for tp in list(behind):
                    if await consumer.position(tp) >= ends[tp]:
                        behind.discard(tp)
                if not behind:
                    self.caught_up = True
                    logger.info(
                        "segments topic %s read up to its end at start (%d records)",
                        self.topic,
                        self.records,
                    )
