"""Send-by deadlines: rule step, then sink, then channel default; retry by time."""

from __future__ import annotations

import random

import pytest

from connectors.deadline import CHANNEL_DEFAULTS, Deadlines, parse_seconds
from connectors.exceptions import Expired, SinkBackpressure, SinkError
from connectors.retry import RetryPolicy, deliver, next_attempt
from connectors.routing import Router
from tests.connectors.conftest import ActionFactory, FakeSleep
from tests.connectors.test_retry import ScriptedSink


def test_precedence_rule_then_sink_then_channel(make_action: ActionFactory) -> None:
    d = Deadlines(
        per_sink={"crm": 600.0},
        per_rule=lambda a: 60.0 if a.rule_id == "flash" else None,
    )
    t = 1_700_000_000_123
    assert d.deadline(make_action(rule_id="flash"), "crm") == t + 60_000
    assert d.deadline(make_action(), "crm") == t + 600_000
    sms = CHANNEL_DEFAULTS["sms"]
    assert sms is not None
    assert d.deadline(make_action(channel="sms"), "other") == t + int(sms * 1000)
    assert d.deadline(make_action(channel="webhook"), "other") is None


def test_sink_config_sets_deliver_within_and_horizon(make_action: ActionFactory) -> None:
    router = Router.from_config(
        {
            "default": "crm",
            "sinks": {
                "crm": {
                    "type": "webhook",
                    "url": "http://127.0.0.1:9/h",
                    "deliver_within": "2h",
                    "retry_horizon": "30m",
                    "breaker": {"failures": 3, "max_open_for": 5},
                }
            },
        }
    )
    assert router.deadlines().within(make_action(channel="webhook"), "crm") == 7200.0
    policy = router.policy_for(router.sinks["crm"], RetryPolicy())
    assert policy.horizon == 1800.0
    assert policy.max_attempts is None
    assert router.breaker_policy("crm").failures == 3
    assert router.breaker_policy("crm").max_open_for == 5.0


def test_parse_seconds() -> None:
    assert parse_seconds("90s") == 90.0
    assert parse_seconds("2h") == 7200.0
    assert parse_seconds(5) == 5.0
    with pytest.raises(ValueError, match="not a duration"):
        parse_seconds("2 hours")


def test_next_attempt_respects_deadline_and_horizon(make_action: ActionFactory) -> None:
    a = make_action()
    policy = RetryPolicy(base_delay=10.0, max_delay=10.0, horizon=60.0, rng=random.Random(1))
    err = SinkError("503", retryable=True, status=503)
    at = next_attempt(policy, a, err, 1, a.fire_at)
    assert a.fire_at <= at <= a.fire_at + 10_000
    with pytest.raises(Expired) as info:
        next_attempt(
            policy,
            a,
            SinkBackpressure("429", retry_after=30),
            1,
            a.fire_at,
            deadline=a.fire_at + 20_000,
        )
    assert info.value.reason == "expired"
    with pytest.raises(SinkError) as gone:
        next_attempt(policy, a, SinkBackpressure("429", retry_after=30), 3, a.fire_at + 45_000)
    assert gone.value.reason == "horizon"
    with pytest.raises(SinkError) as refused:
        next_attempt(policy, a, SinkError("400", retryable=False, status=400), 1, a.fire_at)
    assert refused.value.reason == "rejected"


async def test_deliver_retries_until_the_horizon_not_a_count(
    make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    errors = [SinkError(f"e{i}", retryable=True, status=503) for i in range(1000)]
    sink = ScriptedSink(*errors)
    policy = RetryPolicy(base_delay=1.0, max_delay=60.0, horizon=3600.0, rng=random.Random(2))
    with pytest.raises(SinkError) as info:
        await deliver(sink, make_action(), policy, fake_sleep, now=lambda: 0)
    assert info.value.reason == "horizon"
    assert sum(fake_sleep.delays) <= 3600.0
    assert sum(fake_sleep.delays) > 3000.0  # waited (nearly) the whole horizon
    assert len(sink.sent) > 5  # far more than the old 5-attempt cap


async def test_deliver_expires_at_the_deadline(
    make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    sink = ScriptedSink(*(SinkError("503", retryable=True) for _ in range(100)))
    with pytest.raises(Expired):
        await deliver(sink, make_action(), RetryPolicy(), fake_sleep, deadline=10, now=lambda: 0)
    with pytest.raises(Expired):  # past it already: not even one attempt
        await deliver(ScriptedSink(), make_action(), RetryPolicy(), deadline=5, now=lambda: 9)
