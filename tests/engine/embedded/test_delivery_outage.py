"""The outbox through a provider outage, on a virtual clock (issue 19).

A real Outbox, SQLite store and dead-letter store; a fake sink that is down for a while
(503s); the clock is a VirtualClock the test moves in 100 ms steps, so a 60 s outage with
the default retry, breaker and deadline settings runs in well under a second of real time.
Nothing here asserts on wall-clock speed.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from connectors.breaker import BreakerState
from connectors.deadletter import DeadLetterStore
from connectors.deadline import Deadlines
from connectors.exceptions import SinkBackpressure, SinkError
from connectors.routing import Router
from engine.clock import VirtualClock
from engine.embedded.outbox import Outbox
from engine.embedded.storage.sqlite import SqliteStore
from engine.metrics import Metrics
from engine.types import Action

T0 = 1_800_000_000_000


@dataclass
class OutageSink:
    """Down (HTTP 503) while ``down_until`` is ahead of the clock, or always refusing
    the keys in ``refuse``; records every attempt and every accepted action."""

    clock: VirtualClock
    name: str = "hook"
    down_until: int = 0
    refuse: set[str] = field(default_factory=set)
    retry_after: float | None = None
    attempts: list[tuple[int, str]] = field(default_factory=list)
    accepted: list[tuple[int, Action]] = field(default_factory=list)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, action: Action) -> None:
        now = self.clock.now()
        self.attempts.append((now, action.idempotency_key))
        if action.idempotency_key in self.refuse:
            raise SinkError("HTTP 400: bad recipient", retryable=False, status=400)
        if now < self.down_until:
            if self.retry_after is not None:
                raise SinkBackpressure("HTTP 503", retry_after=self.retry_after, status=503)
            raise SinkError("HTTP 503", retryable=True, status=503)
        self.accepted.append((now, action))


async def _db(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@dataclass
class Rig:
    outbox: Outbox
    sink: OutageSink
    clock: VirtualClock
    dead: DeadLetterStore
    store: SqliteStore
    metrics: Metrics

    async def run_for(self, seconds: float, step_ms: int = 100) -> None:
        """Move the virtual clock ``seconds`` forward in steps, letting tasks run."""
        for _ in range(int(seconds * 1000 / step_ms)):
            self.clock.advance(step_ms)
            self.outbox.tick()
            for _ in range(5):
                await asyncio.sleep(0)

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def actions(customers: int, per_customer: int, rule: str = "cart") -> list[Action]:
    out = []
    for c in range(customers):
        for i in range(per_customer):
            channel = "email" if i % 2 == 0 else "sms"
            out.append(
                Action(rule, 1, f"c{c}", channel, "t", {"i": i}, "a", f"{rule}-c{c}-{i}", T0, "x")
            )
    return out


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(deadlines: Deadlines | None = None, hold: Any = None) -> Rig:
        clock = VirtualClock(T0)
        sink = OutageSink(clock)
        store = SqliteStore(tmp_path / f"data{len(made)}", "OFF")
        dead = DeadLetterStore(tmp_path / f"dead{len(made)}.db", now=clock.now)
        metrics = Metrics()
        router = Router({"hook": sink}, [], "hook")
        outbox = Outbox(
            _db, store, router, dead, metrics, clock, concurrency=32, deadlines=deadlines, hold=hold
        )
        outbox.start()
        rig = Rig(outbox, sink, clock, dead, store, metrics)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.outbox.close()
        rig.store.close()
        rig.dead.close()


def order_kept(accepted: list[tuple[int, Action]], made: list[Action]) -> bool:
    want: dict[str, list[str]] = defaultdict(list)
    for a in made:
        want[a.customer_id].append(a.idempotency_key)
    got: dict[str, list[str]] = defaultdict(list)
    for _, a in accepted:
        got[a.customer_id].append(a.idempotency_key)
    return got == want


async def test_a_60s_outage_delivers_everything_once_in_order(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    made = actions(customers=50, per_customer=4)
    rig.sink.down_until = T0 + 60_000
    for a in made:
        rig.outbox.add(a, True)
    await rig.run_for(90)

    keys = Counter(a.idempotency_key for _, a in rig.sink.accepted)
    assert set(keys) == {a.idempotency_key for a in made}
    assert max(keys.values()) == 1  # once each
    assert rig.dead.count() == 0
    assert order_kept(rig.sink.accepted, made)
    during = [t for t, _ in rig.sink.attempts if t < rig.sink.down_until]
    first_after = min(t for t, _ in rig.sink.accepted)
    last = max(t for t, _ in rig.sink.accepted)
    # the breaker: 200 actions, yet the dead receiver saw only the failures that opened
    # it (at most one per delivery task in flight: 32, nudge run's default) and one probe
    # per open period (1 s doubling to 10 s)
    print(
        f"attempts during the 60 s outage: {len(during)}; resumed {first_after - T0} ms"
        f" after the start, all delivered by +{last - rig.sink.down_until} ms"
    )
    assert len(during) <= 32 + 12
    assert first_after - rig.sink.down_until <= 10_000  # within one max open period
    assert last - rig.sink.down_until <= 15_000
    assert rig.outbox.breakers()["hook"].state is BreakerState.CLOSED
    assert rig.metric("nudge_sink_state", sink="hook") == 0
    assert rig.metric("nudge_actions_total", channel="sms", outcome="delivered") == 100
    assert rig.outbox.pending == 0
    assert rig.store.outbox_count("pending") == 0


async def test_breaker_opens_and_the_gauge_says_so(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.sink.down_until = T0 + 3_600_000
    for a in actions(customers=20, per_customer=1):
        rig.outbox.add(a, True)
    await rig.run_for(5)
    assert rig.outbox.breakers()["hook"].state is BreakerState.OPEN
    assert rig.metric("nudge_sink_state", sink="hook") == 2
    before = len(rig.sink.attempts)
    await rig.run_for(60)
    probes = len(rig.sink.attempts) - before
    assert 1 <= probes <= 8  # one per open period (at most 10 s), not one per action
    assert rig.dead.count() == 0


async def test_past_the_deadline_actions_expire_others_arrive(
    rig_factory: Callable[..., Rig],
) -> None:
    # "flash" sends may wait 30 s; "cart" ones have the channel defaults (hours)
    rig = rig_factory(
        deadlines=Deadlines(per_rule=lambda a: 30.0 if a.rule_id == "flash" else None)
    )
    flash = actions(customers=10, per_customer=1, rule="flash")
    cart = actions(customers=10, per_customer=2, rule="cart")
    rig.sink.down_until = T0 + 90_000
    for a in flash + cart:
        rig.outbox.add(a, True)
    await rig.run_for(120)

    got = {a.idempotency_key for _, a in rig.sink.accepted}
    assert got == {a.idempotency_key for a in cart}
    letters = rig.dead.list(100)
    assert {d.key for d in letters} == {a.idempotency_key for a in flash}
    assert {d.reason for d in letters} == {"expired"}
    assert all("deadline" in d.error for d in letters)
    assert rig.metric("nudge_actions_total", channel="email", outcome="expired") == 10
    assert rig.store.outbox_count("expired") == 10
    assert rig.dead.counts() == {"expired": 10}


async def test_a_refused_action_is_dead_lettered_and_the_next_one_goes(
    rig_factory: Callable[..., Rig],
) -> None:
    rig = rig_factory()
    made = actions(customers=1, per_customer=3)
    rig.sink.refuse = {made[0].idempotency_key}
    for a in made:
        rig.outbox.add(a, True)
    await rig.run_for(2)
    assert [a.idempotency_key for _, a in rig.sink.accepted] == [
        a.idempotency_key for a in made[1:]
    ]
    (letter,) = rig.dead.list()
    assert letter.reason == "rejected"
    assert "400" in letter.error
    assert len(rig.sink.attempts) == 3  # no retry of a refusal


async def test_retry_after_is_honoured(rig_factory: Callable[..., Rig]) -> None:
    rig = rig_factory()
    rig.sink.down_until = T0 + 1_000
    rig.sink.retry_after = 7.0
    rig.outbox.add(actions(1, 1)[0], True)
    await rig.run_for(10)
    (first, _), (second, _) = rig.sink.attempts
    assert second - first >= 7_000
    assert len(rig.sink.accepted) == 1


async def test_quiet_hours_hold_a_delayed_send(rig_factory: Callable[..., Rig]) -> None:
    # quiet until T0 + 20 s: the send waits for the end, then goes
    rig = rig_factory(hold=lambda a, now: T0 + 20_000 if now < T0 + 20_000 else None)
    rig.outbox.add(actions(1, 1)[0], True)
    await rig.run_for(30)
    ((at, _),) = rig.sink.accepted
    assert at >= T0 + 20_000


async def test_a_restart_during_the_outage_loses_nothing(
    rig_factory: Callable[..., Rig], tmp_path: Path
) -> None:
    rig = rig_factory()
    made = actions(customers=5, per_customer=2)
    rig.sink.down_until = T0 + 3_600_000
    for a in made:
        rig.outbox.add(a, True)
    await rig.run_for(5)
    await rig.outbox.close()
    assert rig.store.outbox_count("pending") == len(made)
    # a new outbox on the same store (the engine restarted), the receiver back
    metrics = Metrics()
    sink = OutageSink(rig.clock)
    outbox = Outbox(
        _db, rig.store, Router({"hook": sink}, [], "hook"), rig.dead, metrics, rig.clock
    )
    outbox.start()
    assert await outbox.load_pending() == len(made)
    rig.outbox, rig.sink = outbox, sink  # closed by the fixture
    await rig.run_for(2)
    assert order_kept(sink.accepted, made)
    assert rig.dead.count() == 0
