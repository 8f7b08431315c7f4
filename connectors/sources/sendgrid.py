"""SendGrid Event Webhook: verify the ECDSA signature and map delivery feedback onto
Nudge events for the customer the message went to.

Signature (SendGrid "Signed Event Webhook"): ``X-Twilio-Email-Event-Webhook-Signature``
is the base64 DER ECDSA P-256 / SHA-256 signature of the ``X-Twilio-Email-Event-Webhook-
Timestamp`` header's value followed by the raw body; the verification key (Mail Settings
-> Event Webhook) is the base64 DER SubjectPublicKeyInfo, or the same as PEM.

Contract with the SendGrid sink (connectors/sinks/): each message carries
``custom_args`` ``{"nudge_customer", "nudge_key", "nudge_rule", "nudge_template"}``
(:data:`CUSTOM_ARGS`), which SendGrid copies as top-level fields into each event. An
event without ``nudge_customer`` (mail Nudge did not send) is skipped and counted
``unknown_recipient``; the batch is still answered 2xx, or SendGrid would retry it.

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from connectors.exceptions import ConnectorError
from connectors.sources.exceptions import SourceError
from engine.types import Event

__all__ = [
    "CUSTOM_ARGS",
    "EVENT_TYPES",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "SendgridBatch",
    "load_key",
    "parse",
    "verify",
]

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
TOLERANCE_S = 600
"""A signed timestamp further than this from ``now`` (either way) is refused as stale:
a captured request cannot be replayed later. SendGrid signs each attempt afresh."""

CUSTOM_ARGS = {
    "customer": "nudge_customer",
    "key": "nudge_key",
    "rule": "nudge_rule",
    "template": "nudge_template",
}
"""The custom args the SendGrid sink sets on every message (their names)."""

EVENT_TYPES: dict[str, str] = {
    "delivered": "email_delivered",
    "open": "email_opened",
    "click": "email_clicked",
    "bounce": "email_bounced",
    "dropped": "email_dropped",
    "spamreport": "email_spam_reported",
    "unsubscribe": "email_unsubscribed",
    "group_unsubscribe": "email_unsubscribed",
    "group_resubscribe": "email_resubscribed",
}
"""SendGrid event -> Nudge type. ``processed`` and ``deferred`` (and any event SendGrid
adds later) are skipped: they say nothing a rule or the profile uses."""
_MAX_ID = 200


@dataclass
class SendgridBatch:
    """The events of one POST, and how many were skipped by reason (``unknown_recipient``,
    ``invalid_event``: to be counted; ``ignored``: processed/deferred/unknown types)."""

    events: list[Event] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)


def load_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key from SendGrid's console: base64 DER SubjectPublicKeyInfo, or
    PEM. Raises ConnectorError if it is neither or not an EC key."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError) as err:
        raise ConnectorError(f"sendgrid_verification_key is not a public key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConnectorError("sendgrid_verification_key is not an elliptic-curve key")
    return key


def _bad(message: str, field: str, code: str = "bad_signature") -> SourceError:
    return SourceError(message, status=401, code=code, field=field)


def verify(
    body: bytes,
    headers: Mapping[str, str],
    key: ec.EllipticCurvePublicKey,
    now: float,
    tolerance: float = TOLERANCE_S,
) -> int:
    """Check the signature of ``timestamp + body``; return the signed timestamp (unix
    seconds). Raises SourceError 401 ``bad_signature`` (missing, malformed or not
    matching) or ``stale_timestamp`` (further than ``tolerance`` seconds from ``now``)."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature:
        raise _bad(f"missing {SIGNATURE_HEADER} header", SIGNATURE_HEADER)
    if not timestamp:
        raise _bad(f"missing {TIMESTAMP_HEADER} header", TIMESTAMP_HEADER)
    try:
        der = base64.b64decode(signature.strip(), validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        raise _bad("signature does not match the body", SIGNATURE_HEADER) from None
    try:
        signed_at = int(timestamp.strip())
    except ValueError:
        raise _bad("timestamp is not unix seconds", TIMESTAMP_HEADER) from None
    if abs(now - signed_at) > tolerance:
        raise _bad(
            f"signed timestamp {signed_at} is more than {tolerance:g} s from now",
            TIMESTAMP_HEADER,
            "stale_timestamp",
        )
    return signed_at


def _str(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _timestamp(value: Any, fallback: int) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        value = fallback
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(fallback, tz=UTC)


def _map(raw: dict[str, Any], signed_at: int) -> Event | str:
    """One SendGrid event as a Nudge event, or the reason it is skipped."""
    kind = raw.get("event")
    etype = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if etype is None:
        return "ignored"
    customer = _str(raw.get(CUSTOM_ARGS["customer"]))
    if customer is None or len(customer) > _MAX_ID:
        return "unknown_recipient"
    event_id = _str(raw.get("sg_event_id"))
    if event_id is None:
        message = _str(raw.get("sg_message_id"))
        if message is None:
            return "invalid_event"
        event_id = f"sendgrid:{message}:{kind}:{raw.get('timestamp')}"
    props: dict[str, Any] = {}
    for prop, arg in (("rule_id", "rule"), ("template", "template"), ("message_key", "key")):
        if (value := _str(raw.get(CUSTOM_ARGS[arg]))) is not None:
            props[prop] = value
    if (email := _str(raw.get("email"))) is not None:
        props["email"] = email
    if kind == "click" and (url := _str(raw.get("url"))) is not None:
        props["url"] = url
    if kind == "bounce":
        # SendGrid's "bounce" is a permanent rejection; "blocked" a temporary one
        props["bounce_type"] = "soft" if raw.get("type") == "blocked" else "hard"
        if email is not None:  # the address a hard bounce marks undeliverable
            props["address"] = email
    if kind in ("bounce", "dropped") and (reason := _str(raw.get("reason"))) is not None:
        props["reason"] = reason[:1000]
    group = _str(raw.get("asm_group_id"))
    if kind in ("group_unsubscribe", "group_resubscribe") and group is not None:
        props["asm_group_id"] = group
    return Event(
        event_id=event_id[:_MAX_ID],
        type=etype,
        customer_id=customer,
        timestamp=_timestamp(raw.get("timestamp"), signed_at),
        properties=props,
        context={"source": "sendgrid", "sendgrid_event": kind},
    )


def parse(
    body: bytes,
    headers: Mapping[str, str],
    key: ec.EllipticCurvePublicKey,
    now: float,
    tolerance: float = TOLERANCE_S,
) -> SendgridBatch:
    """Verify one POST and map its events. Raises SourceError 401 (see :func:`verify`)
    or 400 ``invalid_json`` (not a JSON array); a malformed element is skipped and
    counted ``invalid_event``, never refusing the batch (SendGrid would retry it)."""
    signed_at = verify(body, headers, key, now, tolerance)
    try:
        raws = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise SourceError(f"body is not JSON: {err}", code="invalid_json") from None
    if not isinstance(raws, list):
        raise SourceError("body is not a JSON array of events", code="invalid_json")
    batch = SendgridBatch()
    for raw in raws:
        got = _map(raw, signed_at) if isinstance(raw, dict) else "invalid_event"
        if isinstance(got, str):
            batch.skipped[got] += 1
        else:
            batch.events.append(got)
    return batch
