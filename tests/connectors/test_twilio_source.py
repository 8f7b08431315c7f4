"""Twilio: signatures made by Twilio's own RequestValidator, status callbacks and inbound
messages mapped as documented."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
from twilio.request_validator import RequestValidator

from connectors.sources import twilio
from connectors.sources.exceptions import SourceError
from engine.events import validate_properties

TOKEN = "12345abcde-auth-token"
NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
PUBLIC = "https://nudge.example.com"
validator = RequestValidator(TOKEN)


def status_params(status: str, error: str = "") -> dict[str, str]:
    p = {
        "AccountSid": "AC123",
        "ApiVersion": "2010-04-01",
        "From": "+15005550006",
        "To": "+14155550100",
        "MessageSid": "SM0123456789abcdef",
        "SmsSid": "SM0123456789abcdef",
        "MessageStatus": status,
        "SmsStatus": status,
    }
    if error:
        p["ErrorCode"] = error
    return p


def callback() -> str:
    return twilio.status_callback_url(
        PUBLIC, "c 1/é", "cart:1:c1:0:2", "abandoned-cart", "cart_sms"
    )


def query(url: str) -> dict[str, str]:
    return twilio.query_params(urlsplit(url).query)


def test_status_callback_url_contract() -> None:
    url = callback()
    assert url.startswith("https://nudge.example.com/v1/sources/twilio/status?customer=c+1%2F")
    assert query(url) == {
        "customer": "c 1/é",
        "key": "cart:1:c1:0:2",
        "rule": "abandoned-cart",
        "template": "cart_sms",
    }


def test_our_signature_agrees_with_twilios() -> None:
    url, params = callback(), status_params("delivered")
    ours = twilio.signature(url, params.items(), TOKEN)
    assert ours == validator.compute_signature(url, params)
    assert validator.validate(url, params, ours)


@pytest.mark.parametrize(
    "url",
    [
        "https://nudge.example.com/v1/sources/twilio/status?customer=c1",
        "https://nudge.example.com:443/v1/sources/twilio/status?customer=c1",
        "http://127.0.0.1:8080/v1/sources/twilio/inbound",
    ],
)
def test_signature_by_twilio_verifies_with_or_without_default_port(url: str) -> None:
    params = status_params("sent")
    sig = validator.compute_signature(url, params)
    twilio.verify(url, params.items(), {"X-Twilio-Signature": sig}, TOKEN)
    # Twilio signs either form: the one without the port must verify the other too
    other = url.replace(":443", "") if ":443" in url else url.replace(".com/", ".com:443/")
    if other != url:
        twilio.verify(other, params.items(), {"X-Twilio-Signature": sig}, TOKEN)


def test_sha256_shared_key_signature() -> None:
    url, params = callback(), status_params("delivered")
    sig = validator.compute_signature(url, params, algorithm="HMAC_SHA256")
    headers = {
        "X-Twilio-Signature": sig,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }
    twilio.verify(url, params.items(), headers, TOKEN)
    with pytest.raises(SourceError):
        twilio.verify(url, params.items(), {"X-Twilio-Signature": sig}, TOKEN)


@pytest.mark.parametrize("tamper", ["param", "url", "token", "missing", "algorithm"])
def test_bad_signature_is_401(tamper: str) -> None:
    url, params = callback(), status_params("delivered")
    headers = {"X-Twilio-Signature": validator.compute_signature(url, params)}
    if tamper == "param":
        params["To"] = "+14155550199"
    elif tamper == "url":
        url = url.replace("customer=c", "customer=x")
    elif tamper == "token":
        headers["X-Twilio-Signature"] = RequestValidator("other").compute_signature(url, params)
    elif tamper == "missing":
        headers = {}
    else:
        headers["X-Twilio-Webhooks-Signature-Settings"] = "algorithm=HMAC_MD5"
    with pytest.raises(SourceError) as err:
        twilio.verify(url, params.items(), headers, TOKEN)
    assert (err.value.status, err.value.code) == (401, "bad_signature")


def test_delivered_callback() -> None:
    ev = twilio.status_event(status_params("delivered"), query(callback()), NOW)
    assert not isinstance(ev, str)
    validate_properties(ev)
    assert (ev.type, ev.customer_id, ev.event_id) == (
        "sms_delivered",
        "c 1/é",
        "SM0123456789abcdef:delivered",
    )
    assert ev.properties == {
        "message_sid": "SM0123456789abcdef",
        "rule_id": "abandoned-cart",
        "template": "cart_sms",
        "message_key": "cart:1:c1:0:2",
        "phone": "+14155550100",
    }
    assert ev.timestamp == NOW


@pytest.mark.parametrize(
    ("status", "code", "bounce"),
    [
        ("undelivered", "30005", "hard"),
        ("failed", "21211", "hard"),
        ("failed", "21610", "hard"),
        ("undelivered", "30006", "hard"),
        ("undelivered", "30003", "soft"),
        ("failed", "", "soft"),
    ],
)
def test_failed_callback_bounce_type(status: str, code: str, bounce: str) -> None:
    ev = twilio.status_event(status_params(status, code), query(callback()), NOW)
    assert not isinstance(ev, str)
    validate_properties(ev)
    assert ev.type == "sms_failed"
    assert (ev.properties["error_code"], ev.properties["bounce_type"]) == (code, bounce)
    assert ev.event_id == f"SM0123456789abcdef:{status}"
    assert ev.properties["address"] == "+14155550100"


def test_intermediate_statuses_and_strangers_are_skipped() -> None:
    for status in ("queued", "sending", "sent", "accepted"):
        assert twilio.status_event(status_params(status), query(callback()), NOW) == "ignored"
    assert twilio.status_event(status_params("delivered"), {}, NOW) == "unknown_recipient"


@pytest.mark.parametrize(
    ("body", "etype"),
    [
        ("STOP", "sms_unsubscribed"),
        (" stopall ", "sms_unsubscribed"),
        ("Unsubscribe", "sms_unsubscribed"),
        ("cancel", "sms_unsubscribed"),
        ("END", "sms_unsubscribed"),
        ("quit", "sms_unsubscribed"),
        ("START", "sms_resubscribed"),
        ("yes", "sms_resubscribed"),
        ("Unstop", "sms_resubscribed"),
        ("please stop", "sms_replied"),
        ("Is the blue one back?", "sms_replied"),
    ],
)
def test_inbound_keywords(body: str, etype: str) -> None:
    params = {"MessageSid": "SMin1", "From": "+14155550100", "To": "+15005550006", "Body": body}
    ev = twilio.inbound_event(params, "c1", NOW)
    validate_properties(ev)
    assert (ev.type, ev.customer_id, ev.event_id) == (etype, "c1", "SMin1")
    if etype == "sms_replied":
        assert ev.properties["body"] == body


def test_advanced_opt_out_type_wins() -> None:
    params = {"MessageSid": "SMin2", "From": "+1", "Body": "arret", "OptOutType": "STOP"}
    assert twilio.inbound_event(params, "c1", NOW).type == "sms_unsubscribed"


def test_inbound_without_sid_is_400() -> None:
    with pytest.raises(SourceError) as err:
        twilio.inbound_event({"From": "+1", "Body": "hi"}, "c1", NOW)
    assert (err.value.status, err.value.field) == (400, "MessageSid")


def test_the_sinks_status_callback_is_the_one_parsed_here() -> None:
    """The contract with the Twilio sink: its StatusCallback is status_callback_url."""
    from connectors.sinks.twilio import status_callback
    from engine.types import Action

    action = Action("cart-sms", 3, "c 1/é", "sms", "cart_10pct", {}, "a", "cart-sms:3:c1:0:2", 0)
    url = status_callback(PUBLIC + "/", action)
    assert url == twilio.status_callback_url(
        PUBLIC, action.customer_id, action.idempotency_key, action.rule_id, action.template
    )
    ev = twilio.status_event(status_params("delivered"), query(url), NOW)
    assert not isinstance(ev, str)
    assert (ev.customer_id, ev.properties["message_key"]) == ("c 1/é", "cart-sms:3:c1:0:2")
    assert (ev.properties["rule_id"], ev.properties["template"]) == ("cart-sms", "cart_10pct")
