"""TokenBucket: pacing with a virtual clock (the sleep advances it; no wall clock)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.exceptions import ConnectorError
from connectors.ratelimit import TokenBucket


class VirtualTime:
    """A monotonic clock that only moves when a waiter sleeps (to the earliest wake-up)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.wakeups: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float, /) -> None:
        self.wakeups.append(self.now + delay)
        await asyncio.sleep(0)
        self.now = max(self.now, self.now + delay)


def bucket(rate: float, burst: float = 1.0) -> tuple[TokenBucket, VirtualTime]:
    vt = VirtualTime()
    return TokenBucket(rate, burst, clock=vt, sleep=vt.sleep), vt


async def test_a_burst_goes_at_once_then_one_per_interval() -> None:
    tb, vt = bucket(rate=2.0, burst=3)
    for _ in range(3):
        await tb.acquire()
    assert vt.wakeups == []  # the burst did not wait
    waits = [tb.reserve() for _ in range(4)]
    assert waits == [0.5, 1.0, 1.5, 2.0]  # first come, first served, 1/rate apart


async def test_concurrent_waiters_are_paced_in_arrival_order() -> None:
    vt = VirtualTime()
    tb = TokenBucket(1.0, 1, clock=vt, sleep=vt.sleep)
    order: list[int] = []

    async def send(i: int) -> None:
        await tb.acquire()
        order.append(i)

    await asyncio.gather(*(send(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert vt.wakeups == [1.0, 2.0, 3.0, 4.0]  # 5 sends at 1/s: the last one at t=4


async def test_refill_is_capped_at_burst() -> None:
    tb, vt = bucket(rate=10.0, burst=2)
    await tb.acquire()
    await tb.acquire()
    vt.now += 60.0  # idle a minute: still only 2 saved up
    assert tb.available == 2.0
    assert [tb.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


async def test_hold_makes_the_next_token_wait() -> None:
    tb, vt = bucket(rate=5.0, burst=5)
    tb.hold(2.0)  # a Retry-After: 2, with tokens saved up
    assert [tb.reserve(), tb.reserve()] == [pytest.approx(2.0), pytest.approx(2.2)]
    vt.now += 2.2
    assert tb.reserve() == pytest.approx(0.2)  # pacing resumes at the rate
    tb.hold(0)  # no-ops
    tb.hold(-1)
    assert tb.reserve() == pytest.approx(0.4)


async def test_a_cancelled_waiter_gives_its_token_back() -> None:
    tb = TokenBucket(1.0, 1)
    await tb.acquire()  # the burst
    before = tb.available
    task = asyncio.create_task(tb.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tb.available == pytest.approx(before, abs=0.05)


@pytest.mark.parametrize(
    ("rate", "burst", "field"),
    [(0, 1, "rate_per_second"), (float("nan"), 1, "rate_per_second"), (1, 0.5, "burst")],
)
def test_bad_settings_are_refused(rate: float, burst: float, field: str) -> None:
    with pytest.raises(ConnectorError) as info:
        TokenBucket(rate, burst)
    assert info.value.field == field
