"""Signed outgoing webhooks (Standard Webhooks): the spec's published test vector, the
reference verifier (``standardwebhooks`` on PyPI) on real requests, secret rotation."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from connectors.exceptions import ConnectorError
from connectors.routing import Router, check_config
from connectors.sinks.signing import WebhookSigner, parse_secrets
from connectors.sinks.webhook import WebhookSink
from tests.connectors.conftest import ActionFactory, Receiver

# the specification's example (standard-webhooks, spec and reference libraries' tests)
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()


def test_the_spec_test_vector() -> None:
    signer = WebhookSigner(parse_secrets(SPEC_SECRET))
    assert signer.signature(SPEC_ID, SPEC_TS, SPEC_BODY) == SPEC_SIG
    stamp = datetime.fromtimestamp(SPEC_TS, tz=UTC)
    assert Webhook(SPEC_SECRET).sign(SPEC_ID, stamp, SPEC_BODY) == SPEC_SIG


def test_rotation_signs_with_both_and_either_verifies() -> None:
    signer = WebhookSigner(parse_secrets(f"{NEW} {OLD}"))
    now = int(datetime.now(UTC).timestamp())
    headers = signer.headers("k1", now, b'{"a":1}')
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(NEW).verify(b'{"a":1}', headers) == {"a": 1}
    assert Webhook(OLD).verify(b'{"a":1}', headers) == {"a": 1}
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(b'{"a":1}', headers)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no secret"),
        ("whsec_***", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "5 bytes"),
        (f"{NEW} {OLD} {NEW}", "at most two"),
    ],
)
def test_bad_secrets_are_named_without_their_value(text: str, problem: str) -> None:
    with pytest.raises(ConnectorError) as info:
        parse_secrets(text, field="$.sinks.crm.signing_secret_env")
    assert problem in str(info.value)
    assert info.value.field == "$.sinks.crm.signing_secret_env"
    assert "whsec" not in str(info.value)


async def test_each_attempt_is_signed_at_its_own_time(
    receiver: Receiver, make_action: ActionFactory
) -> None:
    clock = [1_900_000_000.7]
    sink = WebhookSink(
        receiver.url, signer=WebhookSigner(parse_secrets(NEW)), now_s=lambda: clock[0]
    )
    try:
        await sink.send(make_action("key-1"))
        clock[0] += 3600  # a retry an hour later is signed anew
        await sink.send(make_action("key-1"))
    finally:
        await sink.close()
    first, second = receiver.requests
    assert first.headers["webhook-id"] == "key-1"
    assert first.headers["webhook-timestamp"] == "1900000000"
    assert second.headers["webhook-timestamp"] == "1900003600"
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]


async def test_router_builds_a_signing_sink_from_the_environment(
    receiver: Receiver, make_action: ActionFactory
) -> None:
    config = {
        "default": "crm",
        "sinks": {"crm": {"type": "webhook", "url": receiver.url, "signing_secret_env": "HOOK"}},
    }
    assert check_config(config, env={})[0].field == "$.sinks.crm.signing_secret_env"
    assert "HOOK" in check_config(config, env={})[0].message
    assert check_config(config, env={"HOOK": "whsec_nope!"})[0].message == (
        "secret 1 is not base64"
    )
    router = Router.from_config(config, env={"HOOK": f"{NEW} {OLD}"})
    await router.start_all()
    try:
        await router.sinks["crm"].send(make_action("k9"))
    finally:
        await router.close_all()
    (seen,) = receiver.requests
    raw = orjson.dumps(make_action("k9").to_json_dict())  # the bytes the sink sent
    assert orjson.dumps(seen.body) == raw
    assert Webhook(NEW).verify(raw, seen.headers) == seen.body
    assert Webhook(OLD).verify(raw, seen.headers) == seen.body
    assert "whsec" not in repr(router.sinks["crm"])
