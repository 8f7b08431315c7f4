"""Every use of faust's and aiokafka's private API, in one place, pinned by
tests/distributed/test_faust_adapter.py (an upgrade that changes what this relies on fails
that test, not production).

- :class:`BatchConsumer` / :class:`BatchApp`: whole fetches to the processing core,
  below faust's per-message path (it overrides ``Consumer._drain_messages``);
- :func:`producer_of`: the started aiokafka producer behind faust's (``_ensure_producer``);
- :func:`committed_offsets`: the offsets the consumer last committed
  (``_committed_offset``).

Whole fetches, below faust's per-message path.

faust hands every fetched record to the conductor one by one (a ``Message``, a channel
``Event``, a queue put, a stream step, sensors, an ack), about 100 us of framework per
record. :class:`BatchConsumer` is faust's aiokafka consumer with one change in its fetch
loop: the records of a topic with a batch handler (``add_batch_handler``) go, as one
``{TP: [record]}`` map per fetch and topic, to that handler; every other record
(changelog recovery) takes faust's usual path. What faust guarantees is kept:

- an offset is marked acked (so faust's commit loop may commit it) only when the
  future the handler returned resolved: the batch's actions and changelog rows are
  acknowledged by the broker by then (the next fetch is processed meanwhile);
- records fetched but not processed (a handler that returns ``None`` because a
  rebalance began, a partition paused meanwhile, faust's path interrupted) are not
  acked, and their partition is sought back to the first of them while still assigned
  (faust's own loop drops them and relies on the seek to committed offsets after the
  rebalance, which skips a partition that has no committed offset yet: they were lost);
- a rebalance waits for the batch in flight and for the output of earlier ones
  (``wait_batches``, awaited by the runtime's revocation handler) before the partitions
  are handed on; offsets acked for partitions already revoked are discarded by faust's
  commit (the new owner processes those records again, and skips what its restored
  state holds);
- gaps in the offsets are recorded the way faust records them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

__all__ = [
    "BatchApp",
    "BatchConsumer",
    "BatchHandler",
    "committed_offsets",
    "producer_of",
]

logger = logging.getLogger(__name__)

BatchHandler = Callable[[dict[TP, list[Any]]], Awaitable["asyncio.Future[None] | None"]]
"""Process one fetch (records of one topic, by partition). Returns ``None`` when
it processed nothing (a rebalance began), else a future that resolves once the fetch's
output is acknowledged by the broker (then its offsets are acked)."""


class BatchConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer; topics with a batch handler skip the per-message path."""

    def add_batch_handler(
        self, topic: str, handler: BatchHandler, *, wait_on_revoke: bool = True
    ) -> None:
        """Records of ``topic`` go to ``handler``, one call per fetch. With
        ``wait_on_revoke`` the outputs it returns are awaited by :meth:`wait_batches`."""
        self._handlers[topic] = (handler, wait_on_revoke)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_idle = asyncio.Event()
        self._batch_idle.set()
        self._outputs: set[asyncio.Future[None]] = set()
        self._handlers: dict[str, tuple[BatchHandler, bool]] = {}

    async def wait_batches(self) -> None:
        """Until the batch in flight is processed and the output of every batch before
        it is acknowledged (or failed). The runtime awaits it when partitions are
        revoked, so its changelog writes land before another worker takes over."""
        await self._batch_idle.wait()
        while self._outputs:
            await asyncio.gather(*list(self._outputs), return_exceptions=True)

    async def wait_empty(self) -> None:
        await self.wait_batches()
        await super().wait_empty()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - faust's loop
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    for tp, recs in records.items():
                        await self._rewind(tp, recs[0].offset)
                    await self._seek_back()
                    continue
                generation = self.app.consumer_generation_id
                batches: dict[str, dict[TP, list[Any]]] = {}
                others: list[tuple[TP, list[Any]]] = []
                buffered = self._buffered_partitions
                handlers = self._handlers
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in buffered:
                        # paused meanwhile (a rebalance, recovery): fetch these again
                        await self._rewind(tp, recs[0].offset)
                        continue
                    if tp.topic in handlers:
                        fresh = await self._fresh(tp, recs)
                        if fresh:
                            batches.setdefault(tp.topic, {})[tp] = fresh
                    else:
                        others.append((tp, recs))
                for topic, batch in batches.items():
                    handler, tracked = handlers[topic]
                    await self._run_batch(handler, batch, generation, tracked)
                for tp, recs in others:
                    await self._deliver_one_by_one(tp, recs, generation)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise

    async def _seek_back(self) -> None:
        try:
            await self.perform_seek()
        except Exception as ex:
            self.log.warning(f"exception performing seek when flow not active {ex}")

    async def _fresh(self, tp: TP, recs: list[Any]) -> list[Any]:
        """Drop records below the read offset (faust's rule) and record offset gaps."""
        r_offset = self._read_offset[tp]
        if r_offset is not None and recs[0].offset < r_offset:
            recs = [r for r in recs if r.offset >= r_offset]
            if not recs:
                return recs
        expected = len(recs) - 1
        if recs[-1].offset - recs[0].offset != expected or (
            r_offset and recs[0].offset - r_offset > 1
        ):
            prev = r_offset
            for r in recs:
                if prev and r.offset - prev > 1:
                    await self._add_gap(tp, prev + 1, r.offset)
                prev = r.offset
        return recs

    async def _run_batch(
        self,
        handler: BatchHandler,
        batch: dict[TP, list[Any]],
        generation: int,
        tracked: bool = True,
    ) -> None:
        self._batch_idle.clear()
        try:
            durable = await handler(batch)
        finally:
            self._batch_idle.set()
        if durable is None:
            for tp, recs in batch.items():
                await self._rewind(tp, recs[0].offset)
            return
        for tp, recs in batch.items():
            self._read_offset[tp] = recs[-1].offset
        if tracked:
            self._outputs.add(durable)
        durable.add_done_callback(partial(self._on_durable, batch, generation))
        await self._maybe_commit()

    async def _maybe_commit(self) -> None:
        """Commit once ``commit_every`` offsets were acked since the last (faust's rule)."""
        commit_every = self._commit_every
        if commit_every is not None and self._n_acked >= commit_every:
            self._n_acked = 0
            await self.commit()

    def _on_durable(
        self, batch: dict[TP, list[Any]], generation: int, durable: asyncio.Future[None]
    ) -> None:
        self._outputs.discard(durable)
        if durable.cancelled() or durable.exception() is not None:
            return
        if self.app.consumer_generation_id != generation:
            return  # reassigned meanwhile: the new owner starts from committed offsets
        assignment = self.assignment()
        for tp, recs in batch.items():
            if tp in assignment:
                self._ack_records(tp, recs)

    def _ack_records(self, tp: TP, recs: list[Any]) -> None:
        """What ``Consumer.ack`` does per message, once per partition and batch."""
        with ack_lock:
            committed = self._committed_offset[tp]
            index = self._acked_index[tp]
            new = [
                o
                for r in recs
                if (o := r.offset) not in index and (committed is None or o >= committed)
            ]
            if new:
                index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)

    async def _rewind(self, tp: TP, offset: int) -> None:
        """Seek ``tp`` back to ``offset`` (fetched but not processed) while it is still
        assigned. Relying on faust's seek to the committed offset after a rebalance is
        not enough: a partition with no committed offset yet (its previous owner died
        before its first commit) is not sought at all, and the records would be lost."""
        try:
            if tp in self.assignment():
                await self.seek(tp, offset)
        except Exception as exc:  # not assigned any more: the new owner reads them
            self.log.warning("could not seek %s back to %d: %r", tp, offset, exc)

    async def _deliver_one_by_one(self, tp: TP, recs: list[Any], generation: int) -> None:
        """faust's own path (``Consumer.getmany`` + ``_drain_messages``) for one TP."""
        callback = self.callback
        to_message = self._to_message
        get_read_offset = self._read_offset.__getitem__
        acks_enabled = self.app.topics.acks_enabled_for(tp.topic)
        self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
        for n, record in enumerate(recs):
            if not self.flow_active or self.app.consumer_generation_id != generation:
                await self._rewind(tp, record.offset)
                return
            if n and n % 100 == 0:
                await asyncio.sleep(0)
            message = to_message(tp, record)
            offset = message.offset
            r_offset = get_read_offset(tp)
            if r_offset is None or offset >= r_offset:
                if r_offset and offset - r_offset > 1 and acks_enabled:
                    await self._add_gap(tp, r_offset + 1, offset)
                await self._maybe_commit()
                await self.wait_first(callback(message), self.suspend_flow.wait())
                self._read_offset[tp] = offset


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A faust App whose consumer is a :class:`BatchConsumer`."""

    def _new_transport(self) -> Any:
        return BatchTransport(self.conf.broker_consumer, self)

    @property
    def batch_consumer(self) -> BatchConsumer:
        return cast(BatchConsumer, self.consumer)


def producer_of(app: faust.App) -> Any:
    """The started ``AIOKafkaProducer`` behind ``app``'s producer (faust's own, so its
    ``acks`` and connections are shared); starts it if needed."""
    return cast(Any, app.producer)._ensure_producer()


def committed_offsets(consumer: Any) -> Mapping[TP, int]:
    """The offsets ``consumer`` last committed, by partition (empty before the first)."""
    return cast("Mapping[TP, int]", getattr(consumer, "_committed_offset", None) or {})
