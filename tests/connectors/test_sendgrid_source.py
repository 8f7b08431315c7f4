"""SendGrid Event Webhook: signatures made as SendGrid makes them (a real P-256 key, ECDSA
over SHA-256 of timestamp + body, base64 DER), staleness, and each event's mapping."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.exceptions import ConnectorError
from connectors.sources import sendgrid
from connectors.sources.exceptions import SourceError
from engine.events import validate_properties

NOW = 1_767_614_400  # 2026-01-05T12:00:00Z
PRIVATE = ec.generate_private_key(ec.SECP256R1())
# what SendGrid's console shows as the verification key: base64 DER SubjectPublicKeyInfo
PUBLIC_B64 = base64.b64encode(
    PRIVATE.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
KEY = sendgrid.load_key(PUBLIC_B64)


def signed(
    body: bytes, timestamp: int = NOW, key: ec.EllipticCurvePrivateKey = PRIVATE
) -> dict[str, str]:
    sig = key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        sendgrid.SIGNATURE_HEADER: base64.b64encode(sig).decode(),
        sendgrid.TIMESTAMP_HEADER: str(timestamp),
    }


def nudge_args(customer: str = "c1") -> dict[str, str]:
    return {
        "nudge_customer": customer,
        "nudge_key": "abandoned-cart:1:c1:0:1",
        "nudge_rule": "abandoned-cart",
        "nudge_template": "cart_reminder",
    }


def ev(kind: str, n: int, **extra: Any) -> dict[str, Any]:
    return {
        "email": "ann@example.com",
        "timestamp": NOW - 60,
        "event": kind,
        "sg_event_id": f"sg-{n}",
        "sg_message_id": "msg-1.filter0001",
        **nudge_args(),
        **extra,
    }


def parse(events: list[dict[str, Any]], now: float = NOW) -> sendgrid.SendgridBatch:
    body = orjson.dumps(events)
    return sendgrid.parse(body, signed(body), KEY, now)


def test_load_key_takes_base64_der_and_pem() -> None:
    pem = (
        PRIVATE.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert sendgrid.load_key(pem).public_numbers() == KEY.public_numbers()
    with pytest.raises(ConnectorError):
        sendgrid.load_key("not a key")


def test_sendgrid_published_example_verifies() -> None:
    """The key, signature and payload of SendGrid's own library tests (eventwebhook)."""
    key = sendgrid.load_key(
        "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEDr2LjtURuePQzplybdC+u4CwrqDqBaWjcMMsTbhdbcwHBce"
        "pxo7yAQGhHPTnlvFYPAZFceEu/1FwCM/QmGUhA=="
    )
    payload = b'{"category":"example_payload","event":"test_event","message_id":"message_id"}'
    headers = {
        sendgrid.SIGNATURE_HEADER: "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a"
        "8xonZGi6BpSzoQsbVRamr2nlxFDWYNH2j/0=",
        sendgrid.TIMESTAMP_HEADER: "1588788367",
    }
    assert sendgrid.verify(payload, headers, key, now=1588788367) == 1588788367
    with pytest.raises(SourceError):
        sendgrid.verify(payload + b" ", headers, key, now=1588788367)


def test_good_signature_maps_every_event() -> None:
    batch = parse(
        [
            ev("processed", 0),
            ev("delivered", 1),
            ev("open", 2),
            ev("click", 3, url="https://shop.example.com/cart"),
            ev("bounce", 4, type="bounce", reason="550 no such user"),
            ev("bounce", 5, type="blocked", reason="421 try later"),
            ev("dropped", 6, reason="Bounced Address"),
            ev("deferred", 7),
            ev("spamreport", 8),
            ev("unsubscribe", 9),
            ev("group_unsubscribe", 10, asm_group_id=42),
            ev("group_resubscribe", 11, asm_group_id=42),
        ]
    )
    for e in batch.events:
        validate_properties(e)
    got = [(e.event_id, e.type) for e in batch.events]
    assert got == [
        ("sg-1", "email_delivered"),
        ("sg-2", "email_opened"),
        ("sg-3", "email_clicked"),
        ("sg-4", "email_bounced"),
        ("sg-5", "email_bounced"),
        ("sg-6", "email_dropped"),
        ("sg-8", "email_spam_reported"),
        ("sg-9", "email_unsubscribed"),
        ("sg-10", "email_unsubscribed"),
        ("sg-11", "email_resubscribed"),
    ]
    assert batch.skipped == {"ignored": 2}
    delivered, _, click, hard, soft, dropped, *_, resub = batch.events
    assert delivered.customer_id == "c1"
    assert delivered.timestamp == datetime.fromtimestamp(NOW - 60, tz=UTC)
    assert delivered.properties == {
        "rule_id": "abandoned-cart",
        "template": "cart_reminder",
        "message_key": "abandoned-cart:1:c1:0:1",
        "email": "ann@example.com",
    }
    assert click.properties["url"] == "https://shop.example.com/cart"
    assert (hard.properties["bounce_type"], soft.properties["bounce_type"]) == ("hard", "soft")
    assert dropped.properties["reason"] == "Bounced Address"
    assert hard.properties["address"] == "ann@example.com"
    assert resub.properties["asm_group_id"] == "42"


def test_events_nudge_did_not_send_are_skipped_and_counted() -> None:
    stranger = ev("delivered", 1)
    del stranger["nudge_customer"]
    batch = parse([stranger, ev("open", 2), "junk"])  # type: ignore[list-item]
    assert [e.event_id for e in batch.events] == ["sg-2"]
    assert batch.skipped == {"unknown_recipient": 1, "invalid_event": 1}


@pytest.mark.parametrize("tamper", ["body", "timestamp", "key", "missing", "garbage"])
def test_bad_signature_is_401(tamper: str) -> None:
    body = orjson.dumps([ev("delivered", 1)])
    headers = signed(body)
    if tamper == "body":
        body = body.replace(b"c1", b"c2")
    elif tamper == "timestamp":
        headers[sendgrid.TIMESTAMP_HEADER] = str(NOW + 1)
    elif tamper == "key":
        headers = signed(body, key=ec.generate_private_key(ec.SECP256R1()))
    elif tamper == "missing":
        del headers[sendgrid.SIGNATURE_HEADER]
    else:
        headers[sendgrid.SIGNATURE_HEADER] = "%%%"
    with pytest.raises(SourceError) as err:
        sendgrid.parse(body, headers, KEY, NOW)
    assert (err.value.status, err.value.code) == (401, "bad_signature")


@pytest.mark.parametrize("skew", [-601, 601])
def test_stale_timestamp_is_401(skew: int) -> None:
    body = orjson.dumps([ev("delivered", 1)])
    with pytest.raises(SourceError) as err:
        sendgrid.parse(body, signed(body, NOW + skew), KEY, NOW)
    assert (err.value.status, err.value.code) == (401, "stale_timestamp")
    assert sendgrid.parse(body, signed(body, NOW + 599), KEY, NOW).events


def test_signed_but_not_an_array_is_400() -> None:
    body = b'{"event": "delivered"}'
    with pytest.raises(SourceError) as err:
        sendgrid.parse(body, signed(body), KEY, NOW)
    assert (err.value.status, err.value.code) == (400, "invalid_json")


def test_the_sinks_custom_args_are_the_ones_read_here() -> None:
    """The contract with the SendGrid sink: the custom_args it sets name the customer,
    key, rule and template this source reads."""
    from connectors.sinks.sendgrid import custom_args
    from engine.types import Action

    action = Action("abandoned-cart", 1, "c7", "email", "cart_reminder", {}, "a", "k-7", 0)
    args = custom_args(action)
    assert set(args) == set(sendgrid.CUSTOM_ARGS.values())
    batch = parse([{**ev("delivered", 1), **args}])
    [e] = batch.events
    assert (e.customer_id, e.properties["message_key"]) == ("c7", "k-7")
    assert e.properties["rule_id"] == "abandoned-cart"
    assert e.properties["template"] == "cart_reminder"
