"""FcmSink against the fake FCM and token endpoint: the service-account JWT exchange and
token cache, the message body, UNREGISTERED, retries through deliver, no secrets in logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.exceptions import ConnectorError, SinkError
from connectors.retry import RetryPolicy, deliver
from connectors.routing import Router
from connectors.sinks.fcm import FcmSink, ServiceAccount
from tests.connectors.conftest import ActionFactory, FakeSleep
from tests.support.providers import FakeProviders, VirtualTime


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def sink(fake: FakeProviders, **kw: Any) -> FcmSink:
    args: dict[str, Any] = {
        "notifications": {"cart_reminder": ("Your cart", "Use $code before it's gone")},
        "base_url": fake.url,
        "rate_per_second": 1000.0,
        "policy": RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=4.0),
    }
    args.update(kw)
    account = ServiceAccount.from_json(orjson.dumps(fake.service_account()).decode())
    return FcmSink(account, **args)


def push(make_action: ActionFactory, key: str = "k1", **kw: Any) -> Any:
    fields: dict[str, Any] = {"channel": "push", "to": "device-token-1"}
    fields.update(kw)
    return make_action(key, **fields)


async def test_send_posts_the_documented_message_with_one_token_fetch(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers)
    try:
        await s.send(push(make_action, "k1"))
        await s.send(push(make_action, "k2"))
    finally:
        await s.close()
    assert s.token_fetches == 1  # cached
    assert len(fake_providers.sent("token")) == 1  # the fake verified the JWT's signature
    first = fake_providers.sent("fcm")[0]
    assert first == {
        "message": {
            "token": "device-token-1",
            "notification": {"title": "Your cart", "body": "Use SAVE10 before it's gone"},
            "data": {
                "code": "SAVE10",
                "items": '[{"sku":"p1","price":30.5}]',
                "nudge_customer": "c1",
                "nudge_key": "k1",
                "nudge_rule": "abandoned-cart",
                "nudge_template": "cart_reminder",
            },
        }
    }


async def test_title_and_body_from_params_else_an_error(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    s = sink(fake_providers)
    try:
        await s.send(
            push(make_action, template="other", params={"title": "T", "body": "B", "n": 3})
        )
        with pytest.raises(SinkError, match="'other': no notification") as info:
            await s.send(push(make_action, template="other", params={"n": 3}))
        assert not info.value.retryable
        with pytest.raises(SinkError, match="no address"):
            await s.send(push(make_action, to=""))
    finally:
        await s.close()
    [body] = fake_providers.sent("fcm")
    assert body["message"]["notification"] == {"title": "T", "body": "B"}
    assert body["message"]["data"]["n"] == "3"


async def test_the_token_is_fetched_again_when_it_expires(
    fake_providers: FakeProviders, make_action: ActionFactory
) -> None:
    wall = Wall()
    s = sink(fake_providers, wall=wall)
    try:
        await s.send(push(make_action))
        wall.now += 3599 - 61  # expires_in 3599, refreshed a minute early
        await s.send(push(make_action))
        assert s.token_fetches == 1
        wall.now += 2
        await s.send(push(make_action))
        assert s.token_fetches == 2
    finally:
        await s.close()


async def test_unregistered_token_is_permanent(
    fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    fake_providers.unregistered.add("gone")
    s = sink(fake_providers)
    try:
        with pytest.raises(SinkError, match="UNREGISTERED") as info:
            await deliver(s, push(make_action, to="gone"), s.policy, fake_sleep)
    finally:
        await s.close()
    assert info.value.attempts == 1
    assert info.value.status == 404
    assert fake_sleep.delays == []


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_waited_out(
    fake_providers: FakeProviders, make_action: ActionFactory, status: int
) -> None:
    fake_providers.fail_next("fcm", status, n=2, retry_after=5)
    vt = VirtualTime()
    s = sink(fake_providers, clock=vt, sleep=vt.sleep)
    try:
        assert await deliver(s, push(make_action), s.policy, vt.sleep) == 3
    finally:
        await s.close()
    assert vt.delays == [5.0, 5.0]
    assert len(fake_providers.sent("fcm")) == 1


async def test_500_retried_and_401_refetches_the_token(
    fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    s = sink(fake_providers)
    try:
        await s.send(push(make_action))
        fake_providers.revoke_tokens()
        fake_providers.fail_next("fcm", 500)
        assert await deliver(s, push(make_action, "k2"), s.policy, fake_sleep) == 3
    finally:
        await s.close()
    assert s.token_fetches == 2
    assert len(fake_sleep.delays) == 2


async def test_token_endpoint_refusal_is_permanent(
    fake_providers: FakeProviders, make_action: ActionFactory, fake_sleep: FakeSleep
) -> None:
    fake_providers.fail_next("token", 400)
    s = sink(fake_providers)
    try:
        with pytest.raises(SinkError, match="token endpoint") as info:
            await deliver(s, push(make_action), s.policy, fake_sleep)
    finally:
        await s.close()
    assert info.value.attempts == 1


async def test_built_from_the_sinks_file_and_no_secret_in_logs(
    tmp_path: Path,
    fake_providers: FakeProviders,
    make_action: ActionFactory,
    fake_sleep: FakeSleep,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = fake_providers.sink_config("fcm", tmp_path)
    router = Router.from_config({"default": "push", "sinks": {"push": cfg}})
    s = router.sinks["push"]
    assert isinstance(s, FcmSink)
    assert s.project_id == fake_providers.fcm_project
    caplog.set_level(logging.DEBUG)
    fake_providers.fail_next("fcm", 500)
    await router.start_all()
    try:
        await deliver(
            s,
            push(make_action, params={"title": "t", "body": "b"}),
            router.policy_for(s, RetryPolicy()),
            fake_sleep,
        )
    finally:
        await router.close_all()
    key_line = fake_providers.service_account()["private_key"].splitlines()[1]
    token = str(s._token.get_secret_value()) if s._token else "ya29."
    for text in (caplog.text, str(s), repr(s), repr(s.account)):
        assert key_line not in text
        assert token not in text


def test_bad_service_account_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "sa.json"
    bad.write_text('{"client_email": "x@y", "private_key": "not a key"}')
    cfg = {"type": "fcm", "service_account_file": str(bad), "project_id": "p"}
    with pytest.raises(ConnectorError, match="not a PEM key") as info:
        Router.from_config({"sinks": {"push": cfg}})
    assert info.value.field == "$.sinks.push.service_account_file"
    with pytest.raises(ConnectorError) as info:
        Router.from_config({"sinks": {"push": {**cfg, "service_account_file": None}}})
    assert info.value.field == "$.sinks.push"
    with pytest.raises(ConnectorError) as info:
        Router.from_config(
            {"sinks": {"push": {"type": "fcm", "service_account_env": "NUDGE_T_SA"}}}, env={}
        )
    assert info.value.field == "$.sinks.push.service_account_env"
