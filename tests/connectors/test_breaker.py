"""The circuit breaker on an injected clock: opens, probes one at a time, backs off, ramps."""

from __future__ import annotations

import pytest

from connectors.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from connectors.exceptions import ConnectorError


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000

    def __call__(self) -> int:
        return self.t


def make(**kw: float) -> tuple[CircuitBreaker, Clock, list[BreakerState]]:
    clock = Clock()
    seen: list[BreakerState] = []
    policy = BreakerPolicy(**kw)  # type: ignore[arg-type]
    return CircuitBreaker("crm", policy, clock, lambda _, s: seen.append(s)), clock, seen


def fail(br: CircuitBreaker) -> None:
    assert br.acquire() is None
    br.release(False)


def test_opens_after_consecutive_failures_only() -> None:
    br, _, seen = make(failures=3)
    fail(br)
    fail(br)
    assert br.acquire() is None
    br.release(True)  # a success resets the count
    fail(br)
    fail(br)
    assert br.state is BreakerState.CLOSED
    fail(br)
    assert br.state is BreakerState.OPEN
    assert seen == [BreakerState.CLOSED, BreakerState.OPEN]


def test_open_refuses_until_the_period_ends_then_one_probe() -> None:
    br, clock, _ = make(failures=1, open_for=1.0, max_open_for=8.0)
    fail(br)
    assert br.acquire() == clock.t + 1000
    clock.t += 1000
    assert br.acquire() is None  # the probe
    assert br.state is BreakerState.HALF_OPEN
    later = br.acquire()
    assert later is not None
    assert later > clock.t  # a second send waits for the probe


def test_failed_probes_double_the_open_period_up_to_the_cap() -> None:
    br, clock, _ = make(failures=1, open_for=1.0, max_open_for=4.0)
    fail(br)
    periods = []
    for _ in range(5):
        until = br.acquire()
        assert until is not None
        periods.append(until - clock.t)
        clock.t = until
        fail(br)  # the probe fails
    assert periods == [1000, 2000, 4000, 4000, 4000]


def test_a_good_probe_ramps_up_then_closes() -> None:
    br, clock, seen = make(failures=1, open_for=1.0, ramp=8)
    fail(br)
    clock.t += 1000
    limits = []
    while br.state is not BreakerState.CLOSED:
        n = 0
        while br.acquire() is None:
            n += 1
        limits.append(n)
        for _ in range(n):
            br.release(True)
    assert limits == [1, 2, 4]
    assert seen[-1] is BreakerState.CLOSED
    assert br.failures == 0


def test_a_refusal_is_not_a_provider_failure() -> None:
    br, _, _ = make(failures=2)
    for _ in range(10):
        assert br.acquire() is None
        br.release(True)  # the outbox reports a 4xx as ok for the breaker
    assert br.state is BreakerState.CLOSED


def test_bad_policy_names_the_field() -> None:
    with pytest.raises(ConnectorError) as info:
        BreakerPolicy(failures=0)
    assert info.value.field == "failures"
