"""The event loop's busy share (``nudge_event_loop_busy_ratio``): CPU time of the loop's
thread over wall time, per interval, with scripted clocks."""

from __future__ import annotations

import asyncio

import pytest

from engine.loop_samplers import busy_loop, busy_ratio


@pytest.mark.parametrize(
    ("cpu", "wall", "ratio"),
    [
        (0.75, 1.0, 0.75),
        (0.0, 1.0, 0.0),
        (1.02, 1.0, 1.0),  # a coarse CPU clock can read past the wall time
        (-0.1, 1.0, 0.0),
        (0.5, 0.0, 0.0),  # no time passed: nothing to say
    ],
)
def test_busy_ratio(cpu: float, wall: float, ratio: float) -> None:
    assert busy_ratio(cpu, wall) == ratio


async def test_busy_loop_reports_each_interval_from_its_own_readings() -> None:
    cpu = iter([10.0, 10.7, 10.9, 11.9])  # thread CPU seconds at start and each wake
    wall = iter([100.0, 101.0, 102.0, 103.0])
    seen: list[float] = []

    def record(value: float) -> None:
        seen.append(round(value, 6))

    task = asyncio.create_task(busy_loop(record, 0.0, cpu.__next__, wall.__next__))
    while len(seen) < 3:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [0.7, 0.2, 1.0]
