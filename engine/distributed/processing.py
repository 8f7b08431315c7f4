"""The worker's processing core: owned partitions fed in batches, timers drained on a
tick, one changelog write per customer touched per batch.

Order inside a batch (under one lock, so timer ticks and batches never interleave):

1. every event goes through its partition's processor (timers due before the event's
   acceptance time fire first);
2. ``flush`` queues the batch's output: the actions to the ``actions`` topic (each to
   its source partition) and the segment membership changes to the segments topic
   (engine/distributed/segments.py); once the broker acknowledged them, the changed
   customer rows
   to the table's changelog (rows of earlier batches always first); it returns a future
   that resolves when the rows are acknowledged too;
3. only then the runtime marks the batch's offsets acked (faust commits them later).
   The runtime (app.py) awaits that future before it runs the next batch or tick.

So a row in the changelog implies its actions and membership records are in Kafka, and
a committed offset
implies both: after a crash, events whose offsets were not committed are processed
again; the ones a restored row already includes are skipped (offset check), the others
produce the same actions with the same idempotency keys, which the delivery step dedupes
in Redis.

Segment backfill (:meth:`PartitionEngine.backfill`, driven a slice at a time by
engine/distributed/backfill.py under the same lock) is output like a timer's.

An erase leaves a mark in the partition's changelog (engine/distributed/erase_marks.py):
events of the erased id from before the erase, still in the topic, are skipped when the
partition is processed again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from engine.customer_view import customer_json
from engine.distributed.analytics import take_row_counts
from engine.distributed.erase_marks import DEFAULT_TTL, MARK_PREFIX, EraseMarks
from engine.distributed.requests import (
    CustomerRequest,
    erased_body,
    not_found_body,
    reply_record,
    request_of,
)
from engine.distributed.segments import SegmentChange
from engine.driver import OutputHandler
from engine.events import decode_event
from engine.exceptions import EventError
from engine.intelligence.population import EMPTY, Population
from engine.output import Output
from engine.partition import Partition
from engine.segment_digest import held_digest
from engine.types import Action, Event
from rules.ruleset import RuleSet
from state.customer import CustomerState

__all__ = ["EngineStats", "Flush", "InputRecord", "PartitionEngine", "Record"]

logger = logging.getLogger(__name__)

_MERGED = "customer_merged"


class Flush(Protocol):
    """Queue a batch's output: ``actions`` by partition to the actions topic,
    ``forwards`` (identity: events for customers elsewhere) to the events topic and
    ``segments`` (membership changes by partition) to the segments topic, then
    (once those are acknowledged) ``rows`` by partition to the changelog, and a
    tombstone for each customer ``erased`` there, in submission order. Returns, once
    queued, a future that resolves when the broker acknowledged all. So a tombstone's
    row is never written before the merge it sent is in Kafka. ``counts``: by partition,
    customer id -> the campaign counts its row carries (analytics on:
    engine/distributed/analytics.py)."""

    def __call__(
        self,
        actions: dict[int, list[Action]],
        rows: dict[int, list[CustomerState]],
        forwards: list[Event],
        segments: dict[int, list[SegmentChange]],
        erased: dict[int, list[str]],
        counts: dict[int, dict[str, bytes]],
        /,
    ) -> Awaitable[asyncio.Future[None]]: ...


class Record(Protocol):
    """What processing reads of an ``events`` message (aiokafka's ``ConsumerRecord``
    has these attributes, so fetched records are processed as they are)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(slots=True)
class InputRecord:
    """One ``events`` message: partition, offset, broker timestamp (ms), raw value
    (a :class:`Record`)."""

    partition: int
    offset: int
    timestamp: int
    value: bytes


@dataclass
class EngineStats:
    events: int = 0
    skipped: int = 0  # reprocessed offsets a restored state already held
    erased_skipped: int = 0  # events from before their customer's erase (erase_marks.py)
    duplicates: int = 0
    future: int = 0  # stamped beyond future_tolerance ahead of the clock: processed at it
    undecodable: int = 0
    not_owned: int = 0
    customer_requests: int = 0  # reads and erases answered (engine/distributed/requests.py)
    timers_fired: int = 0
    timers_restored: int = 0
    actions: int = 0
    forwards: int = 0  # identity forwards produced to the events topic
    batches: int = 0
    rows_written: int = 0
    segment_changes: int = 0  # records produced to the segments topic
    backfilled: int = 0  # customers evaluated by a segment backfill
    expression_errors: int = 0
    processing_seconds: float = 0.0  # whole batches: core + flush
    core_seconds: float = 0.0  # decode + apply only (the pure core)
    partitions: list[int] = field(default_factory=list)
    rules_version: int = 0
    pending_timers: int = 0
    customers: int = 0


class PartitionEngine:
    """The owned partitions of one worker and the rule set they run."""

    def __init__(self, ruleset: RuleSet, rules_version: int, flush: Flush) -> None:
        self.ruleset = ruleset
        self.rules_version = rules_version
        self.parts: dict[int, Partition] = {}
        # erase marks by partition, and how long they are kept (ms; engine/distributed/
        # erase_marks.py): the events topic's retention
        self.marks: dict[int, EraseMarks] = {}
        self.erase_mark_ttl = DEFAULT_TTL
        self._flush_out = flush
        self._actions: dict[int, list[Action]] = {}
        self._forwards: list[Event] = []
        self._segments: dict[int, list[SegmentChange]] = {}
        # customer request replies (key, value) for the replies topic, sent once the
        # batch that answered them is durable (take_replies)
        self.replies: list[tuple[bytes, bytes]] = []
        self.stats = EngineStats(rules_version=rules_version)
        # what customer.rfm / customer.predicted are computed against (engine/distributed/
        # models.py keeps it); a partition assigned later gets it too
        self.population: Population = EMPTY
        # campaign analytics (docs/analytics.md): partitions assigned from now on count
        self.analytics = False

    def set_population(self, population: Population) -> bool:
        """Use ``population`` in every owned partition's processor (and later ones).
        True when segments read what changed (their digest moved: a backfill
        re-evaluates the customers, engine/distributed/backfill.py)."""
        self.population = population
        for part in self.parts.values():
            part.driver.processor.population = population
        rs = self.ruleset
        return rs.use_population(population.key(rs.segments_population))

    # --- ownership -----------------------------------------------------------------
    def assign(self, index: int, states: Iterable[CustomerState]) -> Partition:
        """Take partition ``index`` with its restored states (timers rebuilt from them)."""
        part = Partition(index, self.ruleset, self._output_handler(index), self.analytics)
        part.driver.processor.population = self.population
        marks = self.marks[index] = EraseMarks()
        n = part.recover(st for st in states if not marks.restore(st))
        self.parts[index] = part
        self.stats.timers_restored += len(part.timers)
        logger.info(
            "partition %d: %d customers, %d timers, %d erase marks restored",
            index,
            n,
            len(part.timers),
            len(marks),
        )
        return part

    def revoke(self, index: int) -> None:
        self.parts.pop(index, None)
        self.marks.pop(index, None)

    def set_ruleset(self, ruleset: RuleSet, version: int) -> None:
        """Hot swap: every partition runs ``ruleset`` from its next input on."""
        ruleset.use_population(self.population.key(ruleset.segments_population))
        self.ruleset = ruleset
        self.rules_version = version
        self.stats.rules_version = version
        for part in self.parts.values():
            part.set_ruleset(ruleset)

    def _output_handler(self, index: int) -> OutputHandler:
        stats = self.stats
        pending = self._actions
        forwards = self._forwards
        segments = self._segments

        def on_output(out: Output) -> None:
            if out.segment_changes:
                got_s = segments.get(index)
                if got_s is None:
                    got_s = segments[index] = []
                got_s += out.segment_changes
            if out.forwards:
                forwards.extend(out.forwards)
                if any(ev.type == _MERGED for ev in out.forwards):
                    self._dropped(index, out.customer_id)
            if out.timer_due is not None:
                stats.timers_fired += 1
            if out.errors:
                stats.expression_errors += len(out.errors)
            if out.actions:
                got = pending.get(index)
                if got is None:
                    pending[index] = list(out.actions)
                else:
                    got += out.actions

        return on_output

    def _dropped(self, index: int, customer_id: str) -> None:
        """An identity hand-over: the id's memberships went with its state (no exit);
        a drop record for every segment of the rule set (engine/distributed/segments.py).
        At the partition clock: the merge's processing time, the same on a replay."""
        part = self.parts.get(index)
        at = part.clock.now() if part is not None else 0
        self._segments.setdefault(index, []).extend(
            (customer_id, seg.id, None, at) for seg in self.ruleset.segments
        )

    # --- inputs --------------------------------------------------------------------
    async def process(self, records: Iterable[Record]) -> asyncio.Future[None]:
        """Process one batch of ``events`` messages (any partitions, offset order within
        each) and queue its output; returns the future of that output's durability."""
        t0 = time.perf_counter()
        parts = self.parts
        marks = self.marks
        stats = self.stats
        touched: set[int] = set()
        for rec in records:
            part = parts.get(rec.partition)
            if part is None:  # revoked meanwhile: the new owner processes it
                stats.not_owned += 1
                continue
            req = request_of(rec)
            if req is not None:  # a customer read or erase, in order with the events
                part.position = max(part.position, rec.offset + 1)
                if req.id:
                    self._answer(part, req, rec.timestamp, rec.offset + 1)
                    touched.add(rec.partition)
                continue
            try:
                # validated in full, as at the HTTP edge: a producer may write to the
                # topic directly, and a product_viewed without product_id must not reach
                # the core (it would raise there, and the worker would crash on it again
                # after every restart)
                ev = decode_event(rec.value or b"")
            except EventError as err:
                stats.undecodable += 1
                logger.error(
                    "p%d@%d: invalid event skipped: %s: %s",
                    rec.partition,
                    rec.offset,
                    err.field,
                    err.message,
                )
                continue
            held = marks.get(rec.partition)
            cid = ev.customer_id
            if (held and held.hides(cid, rec.offset + 1)) or cid.startswith(MARK_PREFIX):
                # before its customer's erase (or posing as a mark row): as if not there
                part.position = max(part.position, rec.offset + 1)
                stats.erased_skipped += 1
                continue
            out = part.apply(rec.offset + 1, rec.timestamp, ev)
            if out is None:
                stats.skipped += 1
                continue
            touched.add(rec.partition)
            stats.events += 1
            if out.duplicate:
                stats.duplicates += 1
            elif out.future:
                stats.future += 1
        stats.batches += 1
        stats.core_seconds += time.perf_counter() - t0
        durable = await self._flush(touched)
        stats.processing_seconds += time.perf_counter() - t0
        return durable

    def _answer(self, part: Partition, req: CustomerRequest, at: int, position: int) -> None:
        """Answer a customer request at its acceptance time ``at`` (the same answer on a
        reprocessing); an erase also drops the customer's segment memberships and marks
        the id erased at ``position`` (the request's offset + 1)."""
        cid = req.customer_id
        self.stats.customer_requests += 1
        part.fire_until(at)  # what an event accepted then would see
        part.clock.set(at)
        if req.kind == "erase":
            held = part.store.get(cid)
            # processed again (a restart before the commit) with the customer restored as
            # it came back after this erase: that state is newer than the erase, keep it
            had = False if held is not None and held.seq > position else part.erase(cid)
            if had:
                self._dropped(part.index, cid)
            self.marks.setdefault(part.index, EraseMarks()).add(cid, position, at)
            self.replies.append(reply_record(req.id, 200, erased_body(cid, had)))
            return
        st = part.store.get(cid)
        if st is None:
            self.replies.append(reply_record(req.id, 404, not_found_body(cid)))
            return
        view = customer_json(st, self.ruleset, at)
        if req.kind == "export":  # what the worker holds; events stay in the topic
            view = {
                "customer_id": cid,
                "runtime": "distributed",
                "state": view,
                "segments": dict(sorted((st.segments or {}).items())),
            }
        self.replies.append(reply_record(req.id, 200, view))

    def take_replies(self) -> list[tuple[bytes, bytes]]:
        out, self.replies = self.replies, []
        return out

    async def fire_timers(self, limits: dict[int, int]) -> int:
        """Fire the timers of each partition in ``limits`` due up to its limit (epoch ms),
        then queue the actions and the rows (``flush``). Returns how many fired."""
        fired = 0
        touched = set()
        for index, t in limits.items():
            part = self.parts.get(index)
            if part is None:
                continue
            n = part.fire_until(t)
            if n:
                fired += n
                touched.add(index)
        if fired:
            await self._flush(touched)
        return fired

    def customer_ids(self, index: int) -> list[str]:
        """Every customer id partition ``index`` holds (a copy), redirects included."""
        part = self.parts.get(index)
        return [] if part is None else list(part.store._data)

    def needs_backfill(self, index: int, ids: Iterable[str], digest: str | None) -> list[str]:
        """Those of ``ids`` in partition ``index`` evaluated under other segments than
        ``digest`` (redirects excluded); packed states are read without inflating them."""
        part = self.parts.get(index)
        if part is None:
            return []
        held = part.store._data
        found = []
        for cid in ids:
            st = held.get(cid)
            if st is not None:
                have, merged = held_digest(st)
                if have != digest and not merged:
                    found.append(cid)
        return found

    async def backfill(self, index: int, ids: list[str], t: int) -> asyncio.Future[None]:
        """Evaluate every segment for the customers ``ids`` of partition ``index`` still
        under other segments (``Processor.backfill_segments``), at processing time ``t``
        after firing the timers due up to it (what a timer due then would get), and
        queue the output like a tick's. Returns the future of its durability."""
        part = self.parts.get(index)
        if part is None:
            return await self._flush(set())
        part.fire_until(t)
        part.clock.set(t)
        now = part.clock.now()
        digest = self.ruleset.segments_digest
        held = part.store._data
        backfill = part.driver.processor.backfill_segments
        emit = part.driver._emit  # the driver's output path: touch, sweep, on_output
        n = 0
        for cid in ids:
            st = held.get(cid)
            if st is None:
                continue
            have, merged = held_digest(st)
            if have == digest or merged:  # made current since (an event, a timer, a merge)
                continue
            emit(backfill(cid, now))
            n += 1
        self.stats.backfilled += n
        return await self._flush({index})

    async def _flush(self, touched: set[int]) -> asyncio.Future[None]:
        actions = dict(self._actions)
        self._actions.clear()
        forwards = self._forwards[:]
        self._forwards.clear()
        segments = dict(self._segments)
        self._segments.clear()
        rows: dict[int, list[CustomerState]] = {}
        erased: dict[int, list[str]] = {}
        counts: dict[int, dict[str, bytes]] = {}
        for index in touched:
            part = self.parts.get(index)
            if part is not None:
                changes = part.begin()
                if changes.dirty:
                    rows[index] = part.states(changes.dirty)
                    if part.tally is not None:
                        counts[index] = take_row_counts(part.tally, changes.dirty, rows[index])
                if changes.erased:  # an id back in the same batch: its new row is enough
                    # (a tombstone after it would delete the new customer on restore)
                    back = set(changes.dirty)
                    erased[index] = [c for c in changes.erased if c not in back]
                marks = self.marks.get(index)
                if marks is not None:  # new marks with the tombstones, expired ones dropped
                    marks.expire(part.clock.now(), self.erase_mark_ttl)
                    mark_rows, dropped = marks.take()
                    if mark_rows:
                        rows.setdefault(index, []).extend(mark_rows)
                    if dropped:
                        erased.setdefault(index, []).extend(dropped)
        self.stats.actions += sum(len(a) for a in actions.values())
        self.stats.rows_written += sum(len(r) for r in rows.values())
        self.stats.forwards += len(forwards)
        self.stats.segment_changes += sum(len(c) for c in segments.values())
        return await self._flush_out(actions, rows, forwards, segments, erased, counts)

    def refresh_gauges(self) -> None:
        s = self.stats
        s.partitions = sorted(self.parts)
        s.pending_timers = sum(len(p.timers) for p in self.parts.values())
        s.customers = sum(len(p.store) for p in self.parts.values())
