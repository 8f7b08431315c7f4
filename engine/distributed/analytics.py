"""The distributed runtime's campaign counts: fold what the customers changelog carries
into Redis (engine/distributed/storage/analytics.py), where the reports read them.

Workers with ``--analytics on`` put each customer's counts since its previous row in
front of its changelog row (engine/distributed/storage/changelog.py). A row is one Kafka
record, written only after the batch's actions are acknowledged, and a worker that takes
a partition over restores the last row of each customer and reprocesses only what those
rows do not hold (the offset check in engine/partition.py): so the counts in the
changelog are, per customer, those of the inputs its durable states include, each once,
whatever the batch boundaries, timer ticks or failovers were.

:class:`ChangelogAggregator` reads the changelog (every partition, no consumer group),
from the offset after the one Redis says it folded last (``hw``), and folds each fetch
of a partition in one Lua script that also moves ``hw``, only if ``hw`` is still what it
read. A restart resumes from ``hw``; two aggregators (several ingests) never fold a
record twice: the one that loses the race re-reads ``hw`` and seeks past it. To save the
others the reading, one aggregator at a time holds a lease in Redis (renewed every third
of ``lease_ms``); the others stand by and take over when it lapses.

How far behind it is (``nudge_analytics_lag_records`` / ``nudge_analytics_lag_seconds``
per changelog partition, engine/distributed/metrics.py): records between the last one
folded and the partition's end as of the last fetch, and an upper bound on the age of
the oldest one not yet folded: it was written after the last record folded (its
timestamp) and after the last fetch that found the partition caught up, so the age is
at most ``now`` minus the later of the two (0 while caught up). Only the aggregator that
folds knows; one standing by reports no lag.

What it cannot recover: records the broker compacted away before they were folded (a
newer row of the same customer replaced them). Give the changelog a
``min.compaction.lag.ms`` longer than any aggregator outage (docs/analytics.md); a
compacted gap is logged and counted (``gaps``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from engine.analytics.tally import ORPHAN, Tally
from engine.distributed.storage.analytics import RedisAnalytics
from engine.distributed.storage.changelog import row_counts
from engine.distributed.storage.counts import pack_counts, unpack_counts
from engine.tasks import cancel
from state.analytics import Cell, counter
from state.customer import CustomerState

__all__ = ["ChangelogAggregator", "take_row_counts"]

logger = logging.getLogger(__name__)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def take_row_counts(tally: Tally, dirty: list[str], rows: list[CustomerState]) -> dict[str, bytes]:
    """The worker's side, at each changelog write of a partition: take the pending counts
    of the ``dirty`` customers from ``tally`` and pack each onto its customer's row
    (customer id -> packed counts, for ``TableLog.records``). Counts with no row of their
    own (an erased customer's, kept under ``ORPHAN``) ride on the first row; with no row
    at all they stay pending for the partition's next write."""
    if not rows:
        return {}
    taken = tally.cells(tally.take([*dirty, ORPHAN]))
    if not taken:
        return {}
    first = rows[0].customer_id
    have = {st.customer_id for st in rows}
    for cid in [c for c in taken if c not in have]:
        taken.setdefault(first, []).extend(taken.pop(cid))
    return {cid: pack_counts(counter(counts)) for cid, counts in taken.items()}


class ChangelogAggregator:
    """Folds the counts of ``topic`` (the customers changelog) into ``store``.

    ``folded``: records folded by this process; ``conflicts``: folds another aggregator
    had already done; ``gaps``: compacted runs found between two folded offsets.
    ``lease_ms``: how long a lease lasts unrenewed (None: no lease, always fold).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        store: RedisAnalytics,
        *,
        max_records: int = 20_000,
        lease_ms: int | None = 6000,
        now: Callable[[], int] = _wall_ms,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.bootstrap = bootstrap.removeprefix("kafka://")
        self.topic = topic
        self.store = store
        self.max_records = max_records
        self.now = now
        self.wall = wall
        self.lease_ms = lease_ms
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.leading = False
        self._renewed = 0.0
        self.hw: dict[int, int | None] = {}
        self.behind: dict[int, int] = {}
        # for the lag in seconds: partition -> timestamp (ms) of the last record folded,
        # wall time (s) a fetch last found it caught up, wall time it was first seen behind
        self.folded_at: dict[int, int] = {}
        self.caught_up_at: dict[int, float] = {}
        self._behind_since: dict[int, float] = {}
        self.folded = 0
        self.conflicts = 0
        self.gaps = 0
        self._task: asyncio.Task[None] | None = None

    def lag(self) -> int | None:
        """Changelog records not yet folded, as of this aggregator's last fetch (None:
        none yet, or standing by)."""
        if not self.leading or not self.hw or len(self.behind) < len(self.hw):
            return None  # standing by, or not every partition fetched yet
        return sum(self.behind.values())

    def lag_records(self) -> dict[int, int] | None:
        """:meth:`lag` per changelog partition (None: standing by, or not every
        partition fetched yet)."""
        if self.lag() is None:
            return None
        return dict(self.behind)

    def lag_seconds(self) -> dict[int, float] | None:
        """Per changelog partition, an upper bound on the age of the oldest record not
        yet folded (0 when none), as of the last fetch (None as for :meth:`lag`). A
        partition with nothing folded by this process nor seen caught up counts from
        when it was first seen behind."""
        behind = self.lag_records()
        if behind is None:
            return None
        now = self.wall()
        out: dict[int, float] = {}
        for p, n in behind.items():
            if n <= 0:
                out[p] = 0.0
                continue
            folded = self.folded_at.get(p)
            known = [t for t in (self.caught_up_at.get(p), folded and folded / 1000) if t]
            since = max(known) if known else self._behind_since.get(p, now)
            out[p] = max(0.0, now - since)
        return out

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="analytics-aggregator")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            tps = await self._assign(consumer)
            while True:
                try:
                    if not await self._lead():
                        await asyncio.sleep((self.lease_ms or 3000) / 3000)
                        continue
                    await self._seek(consumer, tps)
                    await self._follow(consumer, tps)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # Redis away, a broker error: resume from hw
                    logger.warning("analytics aggregator: %r; resuming in 1s", err)
                    await asyncio.sleep(1.0)
        finally:
            await consumer.stop()

    async def _assign(self, consumer: Any) -> list[Any]:
        """Every partition of the changelog, once the first worker created it."""
        from aiokafka import TopicPartition

        while True:
            # the consumer's own metadata knows only assigned topics: ask the cluster
            cluster = await consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(self.topic)
            if parts:
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                consumer.assign(tps)
                logger.info("analytics: folding %s (%d partitions)", self.topic, len(tps))
                return tps
            await asyncio.sleep(1.0)

    async def _lead(self) -> bool:
        """Whether this aggregator folds now: it holds the lease (renewed here when a
        third of it has passed), or there is none."""
        if self.lease_ms is None:
            self.leading = True
            return True
        now = time.monotonic()
        if self.leading and now - self._renewed < self.lease_ms / 3000:
            return True
        was = self.leading
        self.leading = await self.store.lease(self.owner, self.lease_ms)
        if self.leading:
            self._renewed = now
        if self.leading != was:
            logger.info("analytics: %s folding", "now" if self.leading else "no longer")
        return self.leading

    async def _seek(self, consumer: Any, tps: list[Any]) -> None:
        self.behind = {}  # measured again from this lead's first fetch
        hw = await self.store.high_water()
        for tp in tps:
            got = hw.get(tp.partition)
            self.hw[tp.partition] = got
            if got is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, got + 1)

    async def _follow(self, consumer: Any, tps: list[Any]) -> None:
        while await self._lead():
            batch = await consumer.getmany(*tps, timeout_ms=500, max_records=self.max_records)
            for tp, recs in batch.items():
                if not await self._fold(tp.partition, recs):
                    return  # another aggregator folded some: re-read hw, seek past it
            for tp in tps:
                top = consumer.highwater(tp)
                if top is not None:
                    done = self.hw.get(tp.partition)
                    n = max(0, top - (-1 if done is None else done) - 1)
                    self.behind[tp.partition] = n
                    if n:
                        self._behind_since.setdefault(tp.partition, self.wall())
                    else:
                        self.caught_up_at[tp.partition] = self.wall()
                        self._behind_since.pop(tp.partition, None)

    async def _fold(self, partition: int, recs: list[Any]) -> bool:
        expected = self.hw.get(partition)
        if expected is not None:
            recs = [r for r in recs if r.offset > expected]
        if not recs:
            return True
        if expected is not None and recs[0].offset > expected + 1:
            self.gaps += 1
            logger.error(
                "analytics: changelog partition %d compacted offsets %d..%d before they were "
                "folded: counts may be missing (raise min.compaction.lag.ms)",
                partition,
                expected + 1,
                recs[0].offset - 1,
            )
        counts: Counter[Cell] = Counter()
        for rec in recs:
            body = row_counts(rec.value) if rec.value else None
            if body:
                try:
                    counts.update(unpack_counts(body))
                except ValueError as err:  # a newer worker's format: not this version's
                    logger.error("analytics: offset %d of p%d: %s", rec.offset, partition, err)
        last = recs[-1].offset
        if not await self.store.fold(partition, expected, last, counts, self.now()):
            self.conflicts += 1
            return False
        self.hw[partition] = last
        self.folded_at[partition] = recs[-1].timestamp
        self.folded += len(recs)
        return True
