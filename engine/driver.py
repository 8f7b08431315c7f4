"""Driving the processor in virtual time: the loop shared by ``nudge backtest`` and the
testing kit. Timers fire in due order (ties: customer id, then rule id) with the clock set
to their due time, before any event stamped later is processed."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from engine.clock import VirtualClock
from engine.output import Output
from engine.processor import Processor
from engine.types import Event
from rules.ruleset import RuleSet
from state.memory import MemoryStore, MemoryTimers

__all__ = ["Driver", "OutputHandler"]

OutputHandler = Callable[[Output], None]


class Driver:
    """A processor, its stores and a virtual clock. ``on_output`` sees every Output."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        store: MemoryStore | None = None,
        timers: MemoryTimers | None = None,
        clock: VirtualClock | None = None,
        on_output: OutputHandler | None = None,
    ) -> None:
        self.store = store if store is not None else MemoryStore()
        self.timers = timers if timers is not None else MemoryTimers()
        self.clock = clock if clock is not None else VirtualClock()
        self.processor = Processor(ruleset, self.store, self.timers)
        self.on_output = on_output
        # idle customers are compacted in memory (state/memory.py): every `compact_every`
        # events, those untouched for `idle_ms` of this driver's clock
        self.idle_ms = 3_600_000
        self.compact_every = 20_000
        self._until_compact = self.compact_every
        # identity forwards (engine/identity.py) are processed right here when this driver
        # holds every customer (backtest, the testing kit); a runtime shard holds some and
        # routes them to their owners instead
        self.local_forwards = True

    def _emit(self, out: Output) -> Output:
        mem = self.store
        mem.touch(out.customer_id, self.clock.now())
        self._until_compact -= 1
        if self._until_compact <= 0:
            self._until_compact = self.compact_every
            mem.compact_idle(self.clock.now() - self.idle_ms)
        if self.on_output is not None:
            self.on_output(out)
        if out.forwards and self.local_forwards:
            for fwd in out.forwards:
                self._emit(self.processor.on_event(fwd, self.clock.now()))
        return out

    def fire_due(self, t: int) -> int:
        """Fire every timer due at or before ``t``, each at its due time (or the clock, if
        later); outputs go to ``on_output``. The clock ends at the last due time fired,
        not at ``t``. Returns how many timers fired."""
        timers = self.timers
        clock = self.clock
        on_timer = self.processor.on_timer
        fired = 0
        while (item := timers.pop_due(t)) is not None:
            due, cid, rid = item
            clock.set(due)
            self._emit(on_timer(cid, rid, due, clock.now()))
            fired += 1
        return fired

    def advance_to(self, t: int) -> int:
        """Fire every timer due at or before ``t``, then set the clock to ``t``."""
        fired = self.fire_due(t)
        self.clock.set(t)
        return fired

    def advance(self, ms: int) -> int:
        return self.advance_to(self.clock.now() + ms)

    def process(self, event: Event) -> Output:
        """Process one event at the current clock time (the clock does not move)."""
        return self._emit(self.processor.on_event(event, self.clock.now()))

    def feed(self, event: Event) -> Output:
        """Event-time mode: move the clock to the event's time (never backwards), firing
        timers due before it, then process it. Returns the event's own Output; what the
        timers produced went to ``on_output``."""
        ts = event.ts
        due = self.timers.next_due()
        if due is not None and due <= ts:
            self.fire_due(ts)  # also overdue timers when ts is at or before the clock
        clock = self.clock
        clock.set(ts)
        return self._emit(self.processor.on_event(event, clock.now(), ts))

    def feed_all(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.feed(ev)

    def drain(self, until: int) -> int:
        """After the last event: keep firing timers up to ``until``."""
        return self.advance_to(until)
