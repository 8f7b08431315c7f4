"""Decoding and validating storefront events (the vocabulary is in docs/events.md).

``decode_event`` turns JSON bytes into an :class:`Event` or raises :class:`EventError`
naming the field. Known event types also have their key properties checked (an
``order_completed`` without a numeric ``total`` would silently corrupt LTV); custom types
are accepted with any properties.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC
from typing import Annotated, Any, TypeVar

import msgspec

from engine.exceptions import EventError
from engine.types import Event

__all__ = [
    "INTERNAL_TYPES",
    "KNOWN_TYPES",
    "decode_event",
    "decode_events",
    "encode_events",
    "validate_properties",
]

_decoder = msgspec.json.Decoder(Event)
_list_decoder = msgspec.json.Decoder(list[Event])
_T = TypeVar("_T")
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


# Bounds that keep the state's sums finite and encodable: a price of 1e308 made the cart
# value and LTV infinite (JSON null in the API), and a quantity or refund amount of 400
# digits made the processor's float() raise, which stopped its partition for good.
_Money = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]
_Quantity = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _CartItem(msgspec.Struct):
    product_id: str
    price: _Money = 0.0
    quantity: _Quantity = 1


class _CartRemove(msgspec.Struct):
    product_id: str
    quantity: _Quantity | None = None


class _Order(msgspec.Struct):
    order_id: str
    total: _Money


class _OrderRef(msgspec.Struct):
    order_id: str


class _Refund(msgspec.Struct):
    order_id: str
    amount: _Money | None = None


class _Product(msgspec.Struct):
    product_id: str


class _Consent(msgspec.Struct):
    email: bool | None = None
    sms: bool | None = None
    push: bool | None = None


class _CustomerUpdate(msgspec.Struct):
    consent: _Consent | None = None
    timezone: str | None = None
    attributes: dict[str, Any] | None = None


class _Message(msgspec.Struct):
    rule_id: str | None = None
    template: str | None = None
    # the idempotency key of the action the message came from (provider feedback)
    message_key: str | None = None


class _Bounce(msgspec.Struct):
    rule_id: str | None = None
    template: str | None = None
    message_key: str | None = None
    bounce_type: str | None = None  # "hard" marks the address undeliverable


class _CartReplace(msgspec.Struct):
    items: list[_CartItem]


class _Alias(msgspec.Struct):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class _Merge(msgspec.Struct):
    from_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    state: list[Any]


_SCHEMAS: dict[str, type[msgspec.Struct] | None] = {
    "page_viewed": None,
    "product_viewed": _Product,
    "cart_item_added": _CartItem,
    "cart_item_removed": _CartRemove,
    "checkout_started": None,
    "order_completed": _Order,
    "order_delivered": _OrderRef,
    "order_refunded": _Refund,
    "customer_signed_up": _CustomerUpdate,
    "customer_updated": _CustomerUpdate,
    "email_sent": _Message,
    "email_opened": _Message,
    "email_clicked": _Message,
    "sms_sent": _Message,
    "sms_clicked": _Message,
    # delivery feedback from providers (connectors/sources/: SendGrid, Twilio)
    "email_delivered": _Message,
    "email_bounced": _Bounce,
    "email_dropped": _Message,
    "email_unsubscribed": _Message,
    "email_spam_reported": _Message,
    "email_resubscribed": _Message,
    "sms_delivered": _Message,
    "sms_failed": _Bounce,
    "sms_unsubscribed": _Message,
    "sms_resubscribed": _Message,
    "push_sent": _Message,
    "push_opened": _Message,
    # a whole cart (Shopify cart webhooks): replaces the cart
    "cart_replaced": _CartReplace,
    # identity: sent for the previous (anonymous) id, links it to ``user_id``; the engine
    # then sends ``customer_merged`` (the previous id's state) to ``user_id`` itself
    "customer_aliased": _Alias,
    "customer_merged": _Merge,
}
KNOWN_TYPES: frozenset[str] = frozenset(_SCHEMAS)
INTERNAL_TYPES: frozenset[str] = frozenset({"customer_merged"})
"""Types only the engine itself sends (a client posting one is refused)."""
_encoder = msgspec.json.Encoder()


def _to_error(err: msgspec.MsgspecError, prefix: str, what: str = "") -> EventError:
    """An EventError naming the JSON path of what msgspec refused."""
    if not isinstance(err, msgspec.ValidationError):
        return EventError(f"malformed JSON: {err}", field="$", reason="invalid_json")
    text = str(err)
    m = _PATH.search(text)
    path, message = ("$", text) if m is None else (m.group(1), text[: m.start()])
    reason = "invalid_field"
    missing = _MISSING.match(message)
    if missing:
        reason = "missing_field"
        path = f"{path}.{missing.group(1)}"
    return EventError(what + message, field=prefix + path[1:], reason=reason)


_TYPE = re.compile(r"^[a-z][a-z0-9_]*$")
_CUSTOM_TYPES_MAX = 10_000
_custom_types: set[str] = set()  # custom types already found valid (reset when full)


def _check_type(event_type: str, prefix: str) -> None:
    """A custom type must be snake_case (known types are). Checked here, once per
    distinct type, rather than as a msgspec pattern, which ran the regex per event."""
    if event_type in _custom_types:
        return
    if _TYPE.match(event_type) is None:
        raise EventError(
            f"Expected `str` matching regex {_TYPE.pattern!r}",
            field=f"{prefix}.type",
            reason="invalid_field",
        )
    if len(_custom_types) >= _CUSTOM_TYPES_MAX:
        _custom_types.clear()
    _custom_types.add(event_type)


def validate_properties(event: Event, prefix: str = "$") -> None:
    """Check what the decoder cannot: the timestamp is a representable UTC instant, the
    type is snake_case, and a known event type carries its properties. Raise EventError
    naming the field."""
    if event.timestamp.year in (1, 9999):  # an offset can push the instant out of range
        try:
            event.timestamp.astimezone(UTC)
        except OverflowError:
            raise EventError(
                "timestamp is outside 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z in UTC",
                field=prefix + ".timestamp",
                reason="invalid_field",
            ) from None
    schema = _SCHEMAS.get(event.type)
    if schema is None:
        _check_type(event.type, prefix)
        return
    try:
        props = msgspec.convert(event.properties, schema)
    except msgspec.ValidationError as err:
        raise _to_error(err, prefix + ".properties", f"{event.type}: ") from None
    if isinstance(props, _CustomerUpdate) and props.attributes:
        _check_stored(props.attributes, prefix + ".properties.attributes", 0)


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_MAX_DEPTH = 32


def _check_stored(value: Any, path: str, depth: int) -> None:
    """A value kept in customer state must be encodable: no integer beyond 64 bits
    (checkpoints failed on every run after one) and at most ``_MAX_DEPTH`` nested
    containers (the API's JSON encoder stops at 254 levels)."""
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise EventError("integer does not fit in 64 bits", field=path)
    elif isinstance(value, dict | list):
        if depth >= _MAX_DEPTH:
            raise EventError(f"nested deeper than {_MAX_DEPTH} levels", field=path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            _check_stored(v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k}]", depth + 1)


def _decode(decode: Callable[[bytes | str], _T], raw: bytes | str) -> _T:
    """``decode(raw)``, its failures as EventError naming the field."""
    try:
        return decode(raw)
    except msgspec.MsgspecError as err:
        raise _to_error(err, "$") from None
    except RecursionError:
        raise EventError("JSON nested too deep", field="$", reason="invalid_json") from None


def decode_event(raw: bytes | str) -> Event:
    """Decode and validate one event. Raises EventError; never anything else."""
    event = _decode(_decoder.decode, raw)
    validate_properties(event)
    return event


def decode_events(raw: bytes) -> list[Event]:
    """Decode one event object or a JSON array of them (the ingest body)."""
    stripped = raw.lstrip()
    if not stripped.startswith(b"["):
        return [decode_event(raw)]
    events = _decode(_list_decoder.decode, raw)
    for i, event in enumerate(events):
        validate_properties(event, prefix=f"$[{i}]")
    return events


def encode_events(events: list[Event]) -> bytes:
    """Events as the JSON array the journal and the ``events`` topic keep (what
    ``decode_events`` reads back)."""
    return _encoder.encode(events)
