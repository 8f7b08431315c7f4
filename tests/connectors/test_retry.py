"""RetryPolicy delays and the deliver loop, with an in-memory scripted sink."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from connectors.exceptions import ConnectorError, SinkBackpressure, SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.sinks.webhook import parse_retry_after
from engine.types import Action
from tests.connectors.conftest import ActionFactory, FakeSleep


class ScriptedSink:
    """Raises the scripted errors in order, then accepts."""

    name = "scripted"

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[Action] = []

    async def start(self) -> None:
        pass

    async def send(self, action: Action) -> None:
        self.sent.append(action)
        if self.errors:
            raise self.errors.pop(0)

    async def close(self) -> None:
        pass


def test_delays_are_deterministic_with_a_seeded_rng() -> None:
    a = RetryPolicy(rng=random.Random(7))
    b = RetryPolicy(rng=random.Random(7))
    assert [a.delay(n) for n in range(1, 8)] == [b.delay(n) for n in range(1, 8)]


def test_full_jitter_stays_under_the_exponential_cap() -> None:
    policy = RetryPolicy(base_delay=0.2, max_delay=3.0, rng=random.Random(1))
    for attempt in range(1, 200):
        cap = min(3.0, 0.2 * 2 ** (attempt - 1))
        for _ in range(20):
            assert 0.0 <= policy.delay(attempt) <= cap


def test_retry_after_replaces_the_jitter_and_is_capped() -> None:
    policy = RetryPolicy(max_retry_after=60.0)
    assert policy.delay(1, retry_after=12.5) == 12.5
    assert policy.delay(9, retry_after=3600.0) == 60.0
    assert policy.delay(1, retry_after=-1.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay": -1.0}, "base_delay"),
        ({"max_delay": float("nan")}, "max_delay"),
    ],
)
def test_bad_policy_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConnectorError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_backpressure_and_retryable_errors_are_retried(
    make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    sink = ScriptedSink(
        SinkBackpressure("slow down", retry_after=4.0), SinkError("x", retryable=True)
    )
    policy = RetryPolicy(base_delay=1.0, rng=random.Random(3))
    assert await deliver(sink, make_action(), policy, fake_sleep) == 3
    assert fake_sleep.delays[0] == 4.0
    assert 0.0 <= fake_sleep.delays[1] <= 2.0


async def test_gives_up_after_max_attempts(
    make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    sink = ScriptedSink(*(SinkError(f"e{i}", retryable=True, status=500) for i in range(5)))
    with pytest.raises(SinkError) as info:
        await deliver(sink, make_action(), RetryPolicy(max_attempts=4), fake_sleep)
    assert info.value.attempts == 4
    assert not info.value.retryable
    assert info.value.status == 500
    assert str(info.value.__cause__) == "e3"
    assert len(sink.sent) == 4
    assert len(fake_sleep.delays) == 3


async def test_single_attempt_policy_does_not_sleep(
    make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    sink = ScriptedSink(SinkError("e", retryable=True))
    with pytest.raises(SinkError):
        await deliver(sink, make_action(), RetryPolicy(max_attempts=1), fake_sleep)
    assert fake_sleep.delays == []


async def test_unexpected_exception_is_a_permanent_failure(
    make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    sink = ScriptedSink(RuntimeError("bug"))
    with pytest.raises(SinkError) as info:
        await deliver(sink, make_action(), RetryPolicy(), fake_sleep)
    assert not info.value.retryable
    assert isinstance(info.value.__cause__, RuntimeError)
    assert len(sink.sent) == 1


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after("nan") is None
