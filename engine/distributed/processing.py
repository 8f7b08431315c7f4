"""The worker's processing core: owned partitions fed in batches, timers drained on a
tick, one changelog write per customer touched per batch.

Order inside a batch (under one lock, so timer ticks and batches never interleave):

1. every event goes through its partition's processor (timers due before the event's
   acceptance time fire first);
2. the actions produced are sent to the ``actions`` topic and the broker's acks awaited;
3. the changed customer rows go to the table's changelog.

So a row in the changelog implies its actions are in Kafka, and faust flushes the
changelog before it commits the events' offsets: after a crash, events whose offsets were
not committed are processed again; the ones a restored row already includes are skipped
(offset check), the others produce the same actions with the same idempotency keys, which
the delivery step dedupes in Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from engine.distributed.partition import OwnedPartition
from engine.processor import Output
from engine.types import Action, Event
from rules.ruleset import RuleSet
from state.customer import CustomerState

__all__ = ["EngineStats", "InputRecord", "PartitionEngine", "SendActions", "WriteRows"]

logger = logging.getLogger(__name__)

_decode_event = msgspec.json.Decoder(Event).decode


class SendActions(Protocol):
    """Produce actions to the actions topic; returns once the broker acknowledged all."""

    def __call__(self, actions: list[Action], /) -> Awaitable[None]: ...


WriteRows = Callable[[int, list[CustomerState]], object]
"""Write changed rows of a partition to the changelog (buffered)."""


@dataclass(slots=True)
class InputRecord:
    """One ``events`` message: partition, offset, broker timestamp (ms), raw value."""

    partition: int
    offset: int
    timestamp: int
    value: bytes


@dataclass
class EngineStats:
    events: int = 0
    skipped: int = 0  # reprocessed offsets a restored state already held
    duplicates: int = 0
    undecodable: int = 0
    not_owned: int = 0
    timers_fired: int = 0
    timers_restored: int = 0
    actions: int = 0
    batches: int = 0
    rows_written: int = 0
    expression_errors: int = 0
    processing_seconds: float = 0.0
    partitions: list[int] = field(default_factory=list)
    rules_version: int = 0
    pending_timers: int = 0
    customers: int = 0


class PartitionEngine:
    """The owned partitions of one worker and the rule set they run."""

    def __init__(
        self, ruleset: RuleSet, rules_version: int, send: SendActions, write: WriteRows
    ) -> None:
        self.ruleset = ruleset
        self.rules_version = rules_version
        self.parts: dict[int, OwnedPartition] = {}
        self._send = send
        self._write = write
        self._actions: list[Action] = []
        self.stats = EngineStats(rules_version=rules_version)

    # --- ownership -----------------------------------------------------------------
    def assign(self, index: int, states: Iterable[CustomerState]) -> OwnedPartition:
        """Take partition ``index`` with its restored states (timers rebuilt from them)."""
        part = OwnedPartition(index, self.ruleset, self._on_output)
        n = 0
        for st in states:
            part.load(st)
            n += 1
        self.parts[index] = part
        self.stats.timers_restored += len(part.timers)
        logger.info("partition %d: %d customers, %d timers restored", index, n, len(part.timers))
        return part

    def revoke(self, index: int) -> None:
        self.parts.pop(index, None)

    def set_ruleset(self, ruleset: RuleSet, version: int) -> None:
        """Hot swap: every partition runs ``ruleset`` from its next input on."""
        self.ruleset = ruleset
        self.rules_version = version
        self.stats.rules_version = version
        for part in self.parts.values():
            part.set_ruleset(ruleset)

    def _on_output(self, out: Output) -> None:
        if out.timer_due is not None:
            self.stats.timers_fired += 1
        if out.errors:
            self.stats.expression_errors += len(out.errors)
        if out.actions:
            self._actions += out.actions

    # --- inputs --------------------------------------------------------------------
    async def process(self, records: list[InputRecord]) -> None:
        """Process one batch of ``events`` messages (any partitions, offset order within
        each), then send its actions and write its rows."""
        t0 = time.perf_counter()
        parts = self.parts
        stats = self.stats
        touched: set[int] = set()
        for rec in records:
            part = parts.get(rec.partition)
            if part is None:  # revoked meanwhile: the new owner processes it
                stats.not_owned += 1
                continue
            try:
                ev = _decode_event(rec.value)
            except msgspec.MsgspecError as err:
                stats.undecodable += 1
                logger.error(
                    "p%d@%d: undecodable event skipped: %s", rec.partition, rec.offset, err
                )
                continue
            out = part.apply(rec.offset, rec.timestamp, ev)
            if out is None:
                stats.skipped += 1
                continue
            touched.add(rec.partition)
            stats.events += 1
            if out.duplicate:
                stats.duplicates += 1
        stats.batches += 1
        await self._flush(touched)
        stats.processing_seconds += time.perf_counter() - t0

    async def fire_timers(self, limits: dict[int, int]) -> int:
        """Fire the timers of each partition in ``limits`` due up to its limit (epoch ms),
        then send the actions and write the rows. Returns how many fired."""
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

    async def _flush(self, touched: set[int]) -> None:
        actions, self._actions = self._actions, []
        if actions:
            await self._send(actions)
            self.stats.actions += len(actions)
        for index in touched:
            part = self.parts.get(index)
            if part is not None:
                rows = part.take_dirty()
                if rows:
                    self._write(index, rows)
                    self.stats.rows_written += len(rows)

    def refresh_gauges(self) -> None:
        s = self.stats
        s.partitions = sorted(self.parts)
        s.pending_timers = sum(len(p.timers) for p in self.parts.values())
        s.customers = sum(len(p.store) for p in self.parts.values())
