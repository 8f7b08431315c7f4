"""Output records to Kafka in aiokafka record batches, in order.

:class:`BatchSender` produces records to one partition in aiokafka batches (one future
per batch, not one per record); :class:`OutputPipeline` orders a batch's actions before
its changelog rows. The consumer side (whole fetches to the core) is in
engine/distributed/faust_adapter.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["BatchSender", "OutputPipeline", "Payload", "Stamped", "StampedPayload"]

logger = logging.getLogger(__name__)

Payload = dict[int, list[tuple[bytes, bytes | None]]]
"""Records by partition: ``(key, value)`` pairs."""
Stamped = tuple[bytes, bytes | None, int, list[tuple[str, bytes]]]
"""A record with its own timestamp (epoch ms) and headers: ``(key, value, ts, headers)``."""
StampedPayload = dict[int, list[Stamped]]
"""Stamped records by partition."""


class BatchSender:
    """Produce ``(key, value)`` records to one partition in aiokafka record batches.

    ``producer`` returns the started ``AIOKafkaProducer`` (faust's, so its ``acks`` and
    connections are shared). ``send`` returns one future per batch; each resolves when
    the broker acknowledged that batch.
    """

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer

    async def send(
        self, topic: str, partition: int, records: Iterable[tuple[bytes, bytes | None]]
    ) -> list[asyncio.Future[Any]]:
        producer = self._producer()
        futs: list[asyncio.Future[Any]] = []
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futs.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"record for {key!r} larger than a producer batch")
        if batch.record_count():
            futs.append(await producer.send_batch(batch, topic, partition=partition))
        return futs

    async def send_all(self, topic: str, payload: Payload) -> list[asyncio.Future[Any]]:
        """:meth:`send` for every partition of ``payload``."""
        futs: list[asyncio.Future[Any]] = []
        for p, recs in payload.items():
            futs += await self.send(topic, p, recs)
        return futs

    async def send_stamped(self, topic: str, payload: StampedPayload) -> list[asyncio.Future[Any]]:
        """:meth:`send_all` for records that carry their timestamp and headers (kept
        apart so the actions' path stays as it is)."""
        producer = self._producer()
        futs: list[asyncio.Future[Any]] = []
        for p, recs in payload.items():
            batch = producer.create_batch()
            for key, value, ts, headers in recs:
                if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                    futs.append(await producer.send_batch(batch, topic, partition=p))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                        raise ValueError(f"record for {key!r} larger than a producer batch")
            if batch.record_count():
                futs.append(await producer.send_batch(batch, topic, partition=p))
        return futs


class OutputPipeline:
    """Orders the output of processing batches while letting them overlap.

    ``submit(first, then)`` queues ``first`` (the actions: records by partition for
    ``first_topic``) at once; when the broker acknowledged them, and the ``then`` records
    of every earlier submission were queued, it queues ``then`` (changelog rows for
    ``then_topic``). The future it returns resolves when those are acknowledged too. So a
    changelog row is never written before its actions are in Kafka, and rows reach each
    changelog partition in submission order. At most ``depth`` submissions are in
    flight (``submit`` waits). A failed send fails the returned future; ``on_error`` is
    called with it (the worker exits: memory is ahead of Kafka).
    """

    def __init__(
        self,
        sender: BatchSender,
        first_topic: str,
        then_topic: str,
        *,
        depth: int = 4,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        self.sender = sender
        self.first_topic = first_topic
        self.then_topic = then_topic
        self._slots = asyncio.Semaphore(depth)
        self._tail: asyncio.Future[None] | None = None  # last submission's rows queued
        self._on_error = on_error
        self._inflight: set[asyncio.Future[None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(
        self,
        first: Payload,
        then: Payload,
        also: dict[str, Payload] | None = None,
        stamped: dict[str, StampedPayload] | None = None,
    ) -> asyncio.Future[None]:
        """``also``: records for other topics, queued with ``first`` (and, like it,
        acknowledged before ``then`` is queued); ``stamped``: the same for records with
        their own timestamps and headers (segment memberships)."""
        loop = asyncio.get_running_loop()
        durable: asyncio.Future[None] = loop.create_future()
        if not first and not then and not also and not stamped:
            durable.set_result(None)
            return durable
        await self._slots.acquire()
        try:
            futs = await self.sender.send_all(self.first_topic, first)
            for topic, payload in (also or {}).items():
                futs += await self.sender.send_all(topic, payload)
            for topic, stamped_payload in (stamped or {}).items():
                futs += await self.sender.send_stamped(topic, stamped_payload)
        except BaseException:
            self._slots.release()
            raise
        queued: asyncio.Future[None] = loop.create_future()
        prev, self._tail = self._tail, queued
        self._inflight.add(durable)
        task = loop.create_task(self._finish(futs, then, prev, queued, durable))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return durable

    async def _finish(
        self,
        futs: list[asyncio.Future[Any]],
        then: Payload,
        prev: asyncio.Future[None] | None,
        queued: asyncio.Future[None],
        durable: asyncio.Future[None],
    ) -> None:
        try:
            if futs:
                await asyncio.gather(*futs)
            if prev is not None:
                await prev
            futs = await self.sender.send_all(self.then_topic, then)
            queued.set_result(None)
            if futs:
                await asyncio.gather(*futs)
            durable.set_result(None)
        except BaseException as exc:
            if not queued.done():
                queued.set_exception(exc)
            durable.set_exception(exc)
            if self._on_error is not None and not isinstance(exc, asyncio.CancelledError):
                self._on_error(exc)
        finally:
            self._slots.release()
            self._inflight.discard(durable)

    async def drain(self) -> None:
        """Wait until everything submitted so far is acknowledged (or failed)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)
