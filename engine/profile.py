"""Applying an event to a customer's profile, cart, recently viewed list and counters.

Cart and consent changes apply in arrival order; profile times and counters use event
time (a late event lands in the bucket of its own time). See docs/semantics.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from engine.intelligence.population import EMPTY, Population
from engine.localtime import valid_timezone
from engine.types import Event
from state.customer import CONSENT_HISTORY_MAX, VIEWED_MAX, CustomerState
from state.windows import increment

__all__ = [
    "CONSENT_EFFECTS",
    "CUSTOMER_FIELDS",
    "DEFAULT_SOURCE",
    "apply_event",
    "consent_entries",
    "consent_source",
    "customer_view",
    "record_consent",
    "set_consent",
]

_CHANNELS = ("email", "sms", "push")
_MAX_ATTRIBUTES = 32


def _num(value: Any, default: float = 0.0) -> float:
    return (
        float(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (default)
    )


DEFAULT_SOURCE = "storefront"
"""The source recorded for a consent change whose event names none (``context.source``
is set by the provider sources: ``sendgrid``, ``twilio``, ``shopify``)."""


def consent_source(ev: Event) -> str:
    """Where a consent change came from: the event's ``context.source`` (a provider
    source sets it; a storefront may, e.g. ``preference_center``), else ``storefront``."""
    src = ev.context.get("source") if ev.context else None
    return sys.intern(src[:64]) if isinstance(src, str) and src else DEFAULT_SOURCE


def set_consent(st: CustomerState, channel: str, value: bool, ts: int, ev: Event) -> None:
    """Switch ``channel``'s consent to ``value`` for an opt-out or opt-in event
    (:data:`CONSENT_EFFECTS`), recording when (event time ``ts``), which event and from
    which source. Applied in arrival order: the last event processed wins, whatever its
    time (a late unsubscribe still switches it off)."""
    if st.consent is None:
        st.consent = {}
    if st.consent.get(channel) is not value:
        record_consent(st, {channel: value}, ts, ev)
    st.consent[channel] = value
    if st.consent_changes is None:
        st.consent_changes = {}
    st.consent_changes[channel] = (ts, sys.intern(ev.type), consent_source(ev))


def record_consent(st: CustomerState, changed: dict[str, bool], ts: int, ev: Event) -> None:
    """Add a consent change to the customer's history (``CustomerState.consent_history``):
    the channels ``changed`` by ``ev`` (event time ``ts``), its type and source; the
    oldest entry goes beyond CONSENT_HISTORY_MAX."""
    changes = sys.intern(",".join(f"{ch}:{'on' if v else 'off'}" for ch, v in changed.items()))
    entry = (ts, changes, sys.intern(ev.type), consent_source(ev))
    history = st.consent_history
    if history is None:
        st.consent_history = [entry]
        return
    history.append(entry)
    if len(history) > CONSENT_HISTORY_MAX:
        del history[: len(history) - CONSENT_HISTORY_MAX]


def consent_entries(
    history: list[tuple[int, str, str, str]] | None,
) -> list[tuple[int, dict[str, bool], str, str]]:
    """The history entries decoded: (event time, channel -> consent, event type, source)."""
    out = []
    for ts, changes, etype, source in history or ():
        chans = {}
        for part in changes.split(","):
            ch, _, v = part.partition(":")
            chans[ch] = v == "on"
        out.append((ts, chans, etype, source))
    return out


def _consent(st: CustomerState, props: dict[str, Any], ts: int, ev: Event) -> None:
    """A profile's consent statement (sign-up, update): sets the channels it names and
    drops their opt-out records, which described a statement now superseded (kept only
    for opt-out/in events: most customers state consent once, at sign-up, and a record
    each would cost ~45 packed bytes a channel)."""
    consent = props.get("consent")
    if not isinstance(consent, dict):
        return
    changes = st.consent_changes
    changed: dict[str, bool] = {}
    for ch in _CHANNELS:
        v = consent.get(ch)
        if isinstance(v, bool):
            if st.consent is None:
                st.consent = {}
            if st.consent.get(ch) is not v:
                changed[ch] = v
            st.consent[ch] = v
            if changes is not None:
                changes.pop(ch, None)
    if changes is not None and not changes:
        st.consent_changes = None
    if changed:
        record_consent(st, changed, ts, ev)


def _customer(st: CustomerState, props: dict[str, Any], ts: int, ev: Event) -> None:
    _consent(st, props, ts, ev)
    tz = props.get("timezone")
    if tz is not None and valid_timezone(tz):
        st.timezone = tz
    attrs = props.get("attributes")
    if isinstance(attrs, dict):
        merged = dict(st.attributes or {})
        merged.update(attrs)
        st.attributes = dict(list(merged.items())[:_MAX_ATTRIBUTES])


CONSENT_EFFECTS: dict[str, tuple[str, bool]] = {
    "email_unsubscribed": ("email", False),
    "email_spam_reported": ("email", False),
    "email_resubscribed": ("email", True),
    "sms_unsubscribed": ("sms", False),
    "sms_resubscribed": ("sms", True),
}
"""Event types that switch a channel's consent at once (an unsubscribe, a spam report or an
SMS STOP off; a resubscribe or START back on), whoever sends them: a provider callback
(connectors/sources/) or the storefront's own preference centre; the change is recorded
with its time and source (``CustomerState.consent_changes``)."""
_BOUNCES = {"email_bounced": "email", "sms_failed": "sms"}
_ADDRESSES = {"email": "email", "sms": "phone", "push": "push_token"}


def apply_event(
    st: CustomerState,
    ev: Event,
    ts: int,
    now: int,
    counted: bool,
    addresses: dict[str, str] = _ADDRESSES,
) -> None:
    """Update ``st`` with ``ev`` (event time ``ts``, processing time ``now``); ``counted``:
    the type is kept in the windowed counters; ``addresses``: channel -> the profile
    attribute holding its address (a hard bounce marks that address undeliverable)."""
    if ts > st.last_seen:
        st.last_seen = ts
    if ts < st.first_seen:
        st.first_seen = ts
    t = ev.type
    props = ev.properties
    if ev.context:
        tz = ev.context.get("timezone")
        if tz is not None and tz != st.timezone and valid_timezone(tz):
            st.timezone = tz
    if t == "product_viewed":
        pid = sys.intern(str(props["product_id"]))
        viewed = st.viewed
        if viewed is None:
            st.viewed = [pid]
        else:
            if pid in viewed:
                viewed.remove(pid)
            viewed.append(pid)
            if len(viewed) > VIEWED_MAX:
                del viewed[0]
    elif t == "cart_item_added":
        pid = sys.intern(str(props["product_id"]))
        if st.cart is None:
            st.cart = {}
        item = st.cart.get(pid)
        qty = _num(props.get("quantity"), 1.0)
        price = _num(props.get("price"))
        st.cart[pid] = [qty + (item[0] if item else 0.0), price]
        st.cart_updated = ts
    elif t == "cart_item_removed":
        if st.cart:
            pid = str(props["product_id"])
            item = st.cart.get(pid)
            if item is not None:
                removed = props.get("quantity")
                left = item[0] - _num(removed) if removed is not None else 0.0
                if left > 0:
                    item[0] = left
                else:
                    del st.cart[pid]
            if not st.cart:
                st.cart = None
        st.cart_updated = ts
    elif t == "order_completed":
        st.orders += 1
        st.revenue = round(st.revenue + _num(props.get("total")), 2)
        if st.first_order is None or ts < st.first_order:
            st.first_order = ts
        if st.last_order is None or ts > st.last_order:
            st.last_order = ts
        st.cart = None
        st.cart_updated = ts
    elif t == "order_refunded":
        st.revenue = round(max(0.0, st.revenue - _num(props.get("amount"))), 2)
    elif t in ("customer_signed_up", "customer_updated"):
        _customer(st, props, ts, ev)
    elif t == "cart_replaced":
        cart: dict[str, list[float]] = {}
        for item in props["items"]:
            pid = sys.intern(str(item["product_id"]))
            qty = _num(item.get("quantity"), 1.0) + (cart[pid][0] if pid in cart else 0.0)
            if qty > 0:
                cart[pid] = [qty, _num(item.get("price"))]
        st.cart = cart or None
        st.cart_updated = ts
    elif t in CONSENT_EFFECTS:
        channel, value = CONSENT_EFFECTS[t]
        set_consent(st, channel, value, ts, ev)
    elif t in _BOUNCES and props.get("bounce_type") == "hard":
        channel = _BOUNCES[t]
        address = props.get("address") or (st.attributes or {}).get(addresses.get(channel, ""))
        if isinstance(address, str) and address:
            st.undeliverable = {**(st.undeliverable or {}), channel: address}
    if counted:
        if st.counters is None:
            st.counters = {}
        increment(st.counters, t, ts, now)


def _consent_view(st: CustomerState, default_consent: dict[str, bool]) -> dict[str, bool]:
    consent = dict(default_consent)
    if st.consent:
        consent.update(st.consent)
    return consent


CustomerField = Callable[[CustomerState, dict[str, bool], int, Population], Any]
"""One field of the ``customer`` map: (state, default consent, now ms, population)."""
CUSTOMER_FIELDS: dict[str, CustomerField] = {
    "id": lambda st, *_: st.customer_id,
    "orders": lambda st, *_: st.orders,
    "ltv": lambda st, *_: st.revenue,
    "aov": lambda st, *_: st.aov,
    "first_seen": lambda st, *_: st.first_seen,
    "last_seen": lambda st, *_: st.last_seen,
    "first_order": lambda st, *_: st.first_order or 0,
    "last_order": lambda st, *_: st.last_order or 0,
    "timezone": lambda st, *_: st.timezone or "",
    "consent": lambda st, consent, *_: _consent_view(st, consent),
    "attributes": lambda st, *_: st.attributes or {},
    "segments": lambda st, *_: st.segments or {},
    # against the population (engine/intelligence/population.py); null when it has no
    # boundaries / no fitted model, or for a customer without orders
    "rfm": lambda st, _, now, pop: pop.rfm_of(st, now),
    "predicted": lambda st, _, now, pop: pop.predicted_of(st, now),
}
"""The ``customer`` map rule expressions see, field by field (times in epoch ms, 0 when
unknown). ``rfm`` and ``predicted`` are computed at ``now`` from the population, only when
selected (an expression reading neither pays nothing for them)."""


def customer_view(
    st: CustomerState,
    default_consent: dict[str, bool],
    keys: frozenset[str] | None = None,
    now: int = 0,
    population: Population = EMPTY,
) -> dict[str, Any]:
    """The ``customer`` map at ``now``, whole or only its ``keys``."""
    fields = CUSTOMER_FIELDS
    if keys is None:
        return {k: f(st, default_consent, now, population) for k, f in fields.items()}
    return {k: fields[k](st, default_consent, now, population) for k in keys if k in fields}
