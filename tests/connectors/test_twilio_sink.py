"""TwilioSink against the fake Twilio: the form, $name templates, the StatusCallback
contract, retries through connectors.retry.deliver, dead letters, no credentials in logs."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from connectors.deadletter import DeadLetterStore
from connectors.exceptions import ConnectorError, SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.routing import Router
from connectors.sinks.twilio import TwilioSink, status_callback
from tests.connectors.conftest import ActionFactory, FakeSleep
from tests.support.providers import TWILIO_SID, TWILIO_TOKEN, FakeProviders, VirtualTime

TEMPLATES = {
    "cart_10pct": "Hi! $discount_pct% off your cart with $code. Or $5 off ${code}x. $$1 fee",
    "plain": "Come back soon",
}


def sink(fake: FakeProviders, **kw: Any) -> TwilioSink:
    args: dict[str, Any] = {
        "sender": "+15005550006",
        "public_url": "https://nudge.example.com/",
        "base_url": fake.url,
        "rate_per_second": 1000.0,
        "policy": RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0),
    }
    args.update(kw)
    return TwilioSink(TWILIO_SID, SecretStr(TWILIO_TOKEN), TEMPLATES, **args)


def sms(make_action: ActionFactory, key: str = "k1", **kw: Any) -> Any:
    fields: dict[str, Any] = {
        "channel": "sms",
        "template": "cart_10pct",
        "params": {"discount_pct": 10, "code": "SAVE10"},
        "to": "+15551234567",
    }
    fields.update(kw)
    return make_action(key, **fields)


async def test_send_posts_the_documented_form(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers)
    try:
        assert await deliver(s, sms(make_action, "k/1 &x"), s.policy) == 1
    finally:
        await s.close()
    [form] = fake_providers.sent("twilio")
    assert form["To"] == "+15551234567"
    assert form["From"] == "+15005550006"
    assert form["Body"] == "Hi! 10% off your cart with SAVE10. Or $5 off SAVE10x. $1 fee"
    callback = form["StatusCallback"]
    assert callback == (
        "https://nudge.example.com/v1/sources/twilio/status?"
        + urllib.parse.urlencode(
            {"customer": "c1", "key": "k/1 &x", "rule": "abandoned-cart", "template": "cart_10pct"}
        )
    )
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))
    assert query == {
        "customer": "c1",
        "key": "k/1 &x",
        "rule": "abandoned-cart",
        "template": "cart_10pct",
    }


def test_status_callback_default_public_url(make_action: ActionFactory) -> None:
    url = status_callback("http://127.0.0.1:8080", make_action("k2", customer_id="c 9"))
    assert url == (
        "http://127.0.0.1:8080/v1/sources/twilio/status?"
        "customer=c+9&key=k2&rule=abandoned-cart&template=cart_reminder"
    )


async def test_messaging_service_instead_of_from(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers, sender=None, messaging_service_sid="MG" + "0" * 32)
    try:
        await s.send(sms(make_action))
    finally:
        await s.close()
    [form] = fake_providers.sent("twilio")
    assert form["MessagingServiceSid"] == "MG" + "0" * 32
    assert "From" not in form


async def test_missing_param_template_and_address_are_permanent(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers)
    cases = [
        (sms(make_action, params={"discount_pct": 10}), "param 'code' is missing or null"),
        (sms(make_action, params={"discount_pct": 10, "code": None}), "param 'code'"),
        (sms(make_action, template="nope"), "no template file nope.txt"),
        (sms(make_action, to=""), "no address"),
    ]
    for action, message in cases:
        with pytest.raises(SinkError, match=message) as info:
            await s.send(action)
        assert not info.value.retryable
    await s.close()
    assert fake_providers.hits["twilio"] == 0


async def test_429_retry_after_is_waited_out(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    fake_providers.fail_next("twilio", 429, n=1, retry_after=7)
    vt = VirtualTime()
    s = sink(fake_providers, clock=vt, sleep=vt.sleep)
    try:
        assert await deliver(s, sms(make_action), s.policy, vt.sleep) == 2
    finally:
        await s.close()
    assert vt.delays == [7.0]
    assert len(fake_providers.sent("twilio")) == 1


async def test_5xx_and_a_429_without_retry_after_are_retried_with_backoff(
    fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    fake_providers.fail_next("twilio", 500)
    fake_providers.fail_next("twilio", 429)  # Twilio's 20429 usually has no Retry-After
    s = sink(fake_providers)
    try:
        assert await deliver(s, sms(make_action), s.policy, fake_sleep) == 3
    finally:
        await s.close()
    assert len(fake_sleep.delays) == 2
    assert fake_sleep.delays[0] <= 0.5
    assert fake_sleep.delays[1] <= 1.0


async def test_invalid_number_goes_to_the_dead_letter_store(
    tmp_path: Path, fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    s = sink(fake_providers)
    dead = DeadLetterStore(tmp_path / "dead.db")
    action = sms(make_action, to="555-not-e164")
    try:
        with pytest.raises(SinkError) as info:
            await deliver(s, action, s.policy, fake_sleep)
        dead.add(action, s.name, str(info.value), info.value.attempts)
        [letter] = dead.list()
    finally:
        await s.close()
        dead.close()
    assert fake_sleep.delays == []
    assert info.value.status == 400
    assert "21211" in letter.error


async def test_wrong_token_is_a_permanent_401(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = TwilioSink(
        TWILIO_SID,
        SecretStr("wrong"),
        TEMPLATES,
        sender="+15005550006",
        base_url=fake_providers.url,
    )
    try:
        with pytest.raises(SinkError, match="20003") as info:
            await s.send(sms(make_action))
    finally:
        await s.close()
    assert not info.value.retryable


async def test_built_from_the_sinks_file_and_no_secret_in_logs(
    tmp_path: Path,
    fake_providers: FakeProviders,
    make_action: ActionFactory,
    fake_sleep: FakeSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = fake_providers.sink_config("twilio", tmp_path, public_url="https://n.example")
    router = Router.from_config(
        {"routes": [{"channel": "sms", "sink": "sms"}], "sinks": {"sms": cfg}}
    )
    s = router.sinks["sms"]
    caplog.set_level(logging.DEBUG)
    fake_providers.fail_next("twilio", 503)
    await router.start_all()
    try:
        await deliver(s, sms(make_action), router.policy_for(s, RetryPolicy()), fake_sleep)
    finally:
        await router.close_all()
    [form] = fake_providers.sent("twilio")
    assert form["Body"] == "Your cart misses you: 10% off with SAVE10"
    assert form["StatusCallback"].startswith("https://n.example/v1/sources/twilio/status?")
    for text in (caplog.text, str(s), repr(s)):
        assert TWILIO_TOKEN not in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"from": None}, "$.sinks.sms"),  # neither from nor messaging_service_sid
        ({"messaging_service_sid": "MG" + "1" * 32}, "$.sinks.sms"),  # both
        ({"account_sid": "AC123"}, "$.sinks.sms.account_sid"),
        ({"templates_dir": "/nonexistent/sms"}, "$.sinks.sms.templates_dir"),
        ({"auth_token_file": "/nonexistent/token"}, "$.sinks.sms.auth_token_file"),
        ({"public_url": "nudge.example.com"}, "$.sinks.sms.public_url"),
    ],
)
def test_bad_twilio_config_names_the_field(
    tmp_path: Path, fake_providers: FakeProviders, change: dict[str, Any], field: str
) -> None:
    cfg = fake_providers.sink_config("twilio", tmp_path)
    cfg.update(change)
    with pytest.raises(ConnectorError) as info:
        Router.from_config({"sinks": {"sms": cfg}})
    assert info.value.field == field
