"""SendGridSink against the fake SendGrid: the Mail Send body, the custom_args contract,
retries through connectors.retry.deliver, dead letters, no credentials in logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.deadletter import DeadLetterStore
from connectors.exceptions import ConnectorError, SinkBackpressure, SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.routing import Router
from connectors.sinks.sendgrid import SendGridSink
from tests.connectors.conftest import ActionFactory, FakeSleep
from tests.support.providers import SENDGRID_KEY, FakeProviders, VirtualTime


def sink(fake: FakeProviders, **kw: Any) -> SendGridSink:
    args: dict[str, Any] = {
        "sender_name": "Example Shop",
        "categories": ["nudge"],
        "base_url": fake.url,
        "rate_per_second": 1000.0,
        "policy": RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0),
    }
    args.update(kw)
    return SendGridSink(
        SecretStr(SENDGRID_KEY), "shop@example.com", {"cart_reminder": "d-cart123"}, **args
    )


async def test_send_posts_the_documented_body(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers)
    action = make_action("k1", to="ann@example.com")
    try:
        assert await deliver(s, action, s.policy) == 1
    finally:
        await s.close()
    [body] = fake_providers.sent("sendgrid")
    contract = {
        "nudge_customer": "c1",
        "nudge_key": "k1",
        "nudge_rule": "abandoned-cart",
        "nudge_template": "cart_reminder",
    }
    assert body == {
        "personalizations": [
            {
                "to": [{"email": "ann@example.com"}],
                "dynamic_template_data": action.params,
                "custom_args": contract,
            }
        ],
        "from": {"email": "shop@example.com", "name": "Example Shop"},
        "template_id": "d-cart123",
        "categories": ["abandoned-cart", "nudge"],
        "custom_args": contract,
    }


async def test_429_retry_after_is_waited_out_then_sent(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    fake_providers.fail_next("sendgrid", 429, n=2, retry_after=3)
    vt = VirtualTime()
    s = sink(fake_providers, clock=vt, sleep=vt.sleep)
    try:
        assert await deliver(s, make_action(to="a@example.com"), s.policy, vt.sleep) == 3
    finally:
        await s.close()
    # deliver waited 3 s twice; the bucket's hold was over by then (no extra wait)
    assert vt.delays == [3.0, 3.0]
    assert len(fake_providers.sent("sendgrid")) == 1


async def test_429_without_retry_after_uses_the_rate_limit_reset(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    fake_providers.fail_next("sendgrid", 429, retry_after=None)
    s = sink(fake_providers)
    try:
        with pytest.raises(SinkBackpressure) as info:
            await s.send(make_action(to="a@example.com"))
    finally:
        await s.close()
    assert 0.0 <= info.value.retry_after <= 2.0  # X-RateLimit-Reset: now + 1, whole seconds
    assert "too many requests" in str(info.value)


async def test_5xx_is_retried_with_backoff(
    fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    fake_providers.fail_next("sendgrid", 500, n=2)
    s = sink(fake_providers)
    try:
        assert await deliver(s, make_action(to="a@example.com"), s.policy, fake_sleep) == 3
    finally:
        await s.close()
    assert len(fake_sleep.delays) == 2
    assert 0 <= fake_sleep.delays[0] <= 0.5
    assert 0 <= fake_sleep.delays[1] <= 1.0


async def test_5xx_until_attempts_run_out_is_a_permanent_failure(
    fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    fake_providers.fail_next("sendgrid", 503, n=10)
    s = sink(fake_providers)
    try:
        with pytest.raises(SinkError) as info:
            await deliver(s, make_action(to="a@example.com"), s.policy, fake_sleep)
    finally:
        await s.close()
    assert info.value.attempts == 4
    assert not info.value.retryable


async def test_4xx_goes_to_the_dead_letter_store(
    tmp_path: Path, fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    s = sink(fake_providers)
    dead = DeadLetterStore(tmp_path / "dead.db")
    action = make_action("bad", to="not-an-address")
    try:
        with pytest.raises(SinkError) as info:
            await deliver(s, action, s.policy, fake_sleep)
        dead.add(action, s.name, str(info.value), info.value.attempts)
        [letter] = dead.list()
    finally:
        await s.close()
        dead.close()
    assert fake_sleep.delays == []  # a 400 is not retried
    assert info.value.status == 400
    assert info.value.attempts == 1
    assert "personalizations.0.to" in letter.error
    assert letter.action == action


async def test_unmapped_template_and_missing_address_are_permanent(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers)
    with pytest.raises(SinkError, match="'welcome' has no SendGrid template id") as info:
        await s.send(make_action(template="welcome", to="a@example.com"))
    assert not info.value.retryable
    with pytest.raises(SinkError, match="no address") as info:
        await s.send(make_action(to=""))
    assert not info.value.retryable
    await s.close()
    assert fake_providers.hits["sendgrid"] == 0


async def test_wrong_key_is_a_permanent_401(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = SendGridSink(
        SecretStr("SG.wrong"),
        "shop@example.com",
        {"cart_reminder": "d-1"},
        base_url=fake_providers.url,
    )
    try:
        with pytest.raises(SinkError) as info:
            await s.send(make_action(to="a@example.com"))
    finally:
        await s.close()
    assert info.value.status == 401
    assert not info.value.retryable


async def test_credentials_never_in_logs_or_str(
    tmp_path: Path,
    fake_providers: FakeProviders,
    make_action: ActionFactory,
    fake_sleep: FakeSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = {
        "default": "email",
        "sinks": {"email": fake_providers.sink_config("sendgrid", tmp_path)},
    }
    router = Router.from_config(config)
    s = router.sinks["email"]
    fake_providers.fail_next("sendgrid", 500)
    fake_providers.fail_next("sendgrid", 400)
    caplog.set_level(logging.DEBUG)
    await router.start_all()
    try:
        with pytest.raises(SinkError) as info:
            await deliver(
                s, make_action(to="a@example.com"), router.policy_for(s, RetryPolicy()), fake_sleep
            )
    finally:
        await router.close_all()
    assert fake_providers.hits["sendgrid"] == 2
    for text in (caplog.text, str(s), repr(s), str(info.value), repr(router.sinks)):
        assert SENDGRID_KEY not in text
    assert "SG." not in caplog.text


def test_missing_credential_is_a_config_error_naming_the_field(
    tmp_path: Path, fake_providers: FakeProviders
) -> None:
    cfg = fake_providers.sink_config("sendgrid", tmp_path)
    del cfg["api_key_file"]
    cfg["api_key_env"] = "NUDGE_TEST_UNSET_SENDGRID_KEY"
    with pytest.raises(ConnectorError) as info:
        Router.from_config({"sinks": {"email": cfg}}, env={})
    assert info.value.field == "$.sinks.email.api_key_env"
    assert "NUDGE_TEST_UNSET_SENDGRID_KEY is not set" in str(info.value)
    router = Router.from_config({"sinks": {"email": cfg}}, env={cfg["api_key_env"]: "SG.x"})
    assert isinstance(router.sinks["email"], SendGridSink)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"api_key_env": "X"}, "$.sinks.email"),  # both sources given
        ({"from": {"name": "no email"}}, "$.sinks.email.from.email"),
        ({"categories": [str(i) for i in range(10)]}, "$.sinks.email.categories"),
        ({"templates": {"x": ""}}, "$.sinks.email.templates.x"),
        ({"rate_per_second": 0}, "$.sinks.email.rate_per_second"),
        ({"base_url": "ftp://x"}, "$.sinks.email.base_url"),
        ({"api_key": "SG.inline"}, "$.sinks.email.api_key"),  # no inline secrets
    ],
)
def test_bad_sendgrid_config_names_the_field(
    tmp_path: Path, fake_providers: FakeProviders, change: dict[str, Any], field: str
) -> None:
    cfg = fake_providers.sink_config("sendgrid", tmp_path)
    cfg.update(change)
    with pytest.raises(ConnectorError) as info:
        Router.from_config({"sinks": {"email": cfg}})
    assert info.value.field == field
