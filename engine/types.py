"""Plain types shared by every package: Event, Action, and the processor's outputs.

This is the leaf of the import graph: it imports only the standard library and msgspec
(the validator that decodes events). rules/, state/ and connectors/ depend on it; it
depends on none of them.

Time inside the engine is an ``int`` of milliseconds since the Unix epoch, UTC. Customer
time zones appear only at the edge (quiet hours, wait-until-time-of-day).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

__all__ = [
    "Action",
    "Conversion",
    "Event",
    "Fire",
    "Millis",
    "from_ms",
    "iso",
    "to_ms",
]

Millis = int
"""Milliseconds since the Unix epoch, UTC."""

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
# the snake_case form is checked by engine.events.validate_properties, once per distinct
# type: as a msgspec pattern it ran a regex per event (0.44 of 0.75 us per event decoded)
_Type = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]


class Event(msgspec.Struct, gc=False, omit_defaults=True):
    """One storefront event, the canonical envelope.

    ``timestamp`` is RFC 3339 with an offset (``Z`` or ``+01:00``); naive times are
    rejected. ``type`` must also be snake_case (``^[a-z][a-z0-9_]*$``), which
    ``engine.events.validate_properties`` checks: decode through ``engine.events``.
    ``properties`` and ``context`` are free-form and kept whole. Unknown top-level keys
    are ignored by the decoder (the embedded runtime keeps the raw bytes in its journal,
    so nothing a client sent is lost).
    """

    event_id: _Id
    type: _Type
    customer_id: _Id
    timestamp: _Timestamp
    properties: dict[str, Any] = {}
    context: dict[str, Any] = {}

    @property
    def ts(self) -> Millis:
        """Event time in epoch milliseconds."""
        return to_ms(self.timestamp)


class Action(msgspec.Struct, frozen=True, gc=False):
    """A message to send. ``idempotency_key`` is stable across replays of the same input:
    it is derived from (rule, version, customer, flow instance, step)."""

    rule_id: str
    rule_version: int
    customer_id: str
    channel: str
    template: str
    params: dict[str, Any]
    variant: str
    idempotency_key: str
    fire_at: Millis
    # the recipient's address for the channel, from the profile (attributes.email,
    # attributes.phone, attributes.push_token); "" when the customer has none
    to: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        """The public JSON shape (``fire_at`` as RFC 3339 UTC with milliseconds)."""
        out = {
            "fire_at": iso(self.fire_at),
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "customer_id": self.customer_id,
            "channel": self.channel,
            "template": self.template,
            "params": self.params,
            "variant": self.variant,
            "idempotency_key": self.idempotency_key,
        }
        if self.to:
            out["to"] = self.to
        return out


class Fire(msgspec.Struct, frozen=True, gc=False):
    """A send step that was reached, whatever happened to it.

    ``outcome`` is ``sent`` (an Action was emitted), ``holdout`` (experiment holdout: no
    send, counted), or ``suppressed_<reason>`` (consent, cap, ...). Runtimes turn these
    into metrics (rule fires by rule and variant)."""

    rule_id: str
    variant: str
    channel: str
    outcome: str
    at: Millis


class Conversion(msgspec.Struct, frozen=True, gc=False):
    """A goal event seen within the experiment window of a flow instance."""

    rule_id: str
    variant: str
    customer_id: str
    event_id: str
    at: Millis


def to_ms(dt: datetime) -> Millis:
    """A timezone-aware datetime as epoch milliseconds."""
    return int(dt.timestamp() * 1000)


def from_ms(ms: Millis) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso(ms: Millis) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T10:00:00.000Z``.

    The year always has four digits (``strftime("%Y")`` writes year 606 as ``606``, which
    is not RFC 3339)."""
    d = from_ms(ms)
    return (
        f"{d.year:04d}-{d.month:02d}-{d.day:02d}"
        f"T{d.hour:02d}:{d.minute:02d}:{d.second:02d}.{ms % 1000:03d}Z"
    )
