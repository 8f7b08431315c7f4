"""Segment's specs (e-commerce v2, email, identify traits) onto Nudge's vocabulary: track
event names to event types, their properties to the ones the core reads, identify traits
to a profile update. Pure functions of dicts; :mod:`connectors.sources.segment` parses the
requests and calls them. The tables are documented in docs/sources/segment.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from connectors.sources.exceptions import SourceError

__all__ = ["NAME_CACHE", "SHAPE", "event_type", "profile"]

# --- event names -------------------------------------------------------------------------

# Segment's e-commerce spec v2 (and its email / B2B specs) onto Nudge's vocabulary, keyed by
# the snake_case form of the name, so "Product Added", "product added" and "productAdded"
# map alike. Any other name becomes its snake_case form, a custom type.
_SPEC: dict[str, str] = {
    "product_viewed": "product_viewed",
    "product_added": "cart_item_added",
    "product_removed": "cart_item_removed",
    "cart_viewed": "cart_viewed",
    "checkout_started": "checkout_started",
    "order_completed": "order_completed",
    "order_refunded": "order_refunded",
    "signed_up": "customer_signed_up",
    "email_opened": "email_opened",
    "email_clicked": "email_clicked",
    "email_link_clicked": "email_clicked",
    "email_unsubscribed": "email_unsubscribed",
    "unsubscribed": "email_unsubscribed",
    "email_delivered": "email_delivered",
    "email_bounced": "email_bounced",
    "email_marked_as_spam": "email_spam_reported",
}
_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
_NAMES_MAX = 10_000
_NAME_CACHED_MAX = 128
NAME_CACHE: dict[str, str | None] = {}  # event name -> type (None: no snake_case form)


def event_type(name: str) -> str | None:
    """The Nudge type a track event name maps to, or None when the name has no
    snake_case form (``^[a-z][a-z0-9_]*$``, at most 64 characters). Cached per name."""
    try:
        return NAME_CACHE[name]
    except KeyError:
        pass
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    snake = _NON_WORD.sub("_", _CAMEL.sub(r"\1_\2", ascii_name)).strip("_").lower()
    got = _SPEC.get(snake, snake) if _TYPE.match(snake) else None
    if len(name) <= _NAME_CACHED_MAX:  # the cache holds at most ~1.3 MB of names
        if len(NAME_CACHE) >= _NAMES_MAX:
            NAME_CACHE.clear()
        NAME_CACHE[name] = got
    return got


# --- properties ----------------------------------------------------------------------------


def _product_id(props: dict[str, Any]) -> None:
    """``product_id``, else ``sku``, else ``id`` (numbers as strings)."""
    pid = props.get("product_id")
    if pid is None:
        pid = props.get("sku")
        if pid is None:
            pid = props.get("id")
    if type(pid) is int:
        pid = str(pid)
    if pid is not None:
        props["product_id"] = pid


def _order(props: dict[str, Any]) -> None:
    if props.get("total") is None and props.get("revenue") is not None:
        props["total"] = props["revenue"]
    if type(props.get("order_id")) is int:
        props["order_id"] = str(props["order_id"])


def _refund(props: dict[str, Any]) -> None:
    if props.get("amount") is None and props.get("total") is not None:
        props["amount"] = props["total"]
    if type(props.get("order_id")) is int:
        props["order_id"] = str(props["order_id"])


def _checkout(props: dict[str, Any]) -> None:
    if "cart_value" not in props:
        value = props.get("value")
        if value is None:
            value = props.get("revenue")
        if value is not None:
            props["cart_value"] = value


SHAPE: dict[str, Callable[[dict[str, Any]], None]] = {
    "product_viewed": _product_id,
    "cart_item_added": _product_id,
    "cart_item_removed": _product_id,
    "order_completed": _order,
    "order_refunded": _refund,
    "checkout_started": _checkout,
}

# traits read as consent, and left out of the attributes
_OPT_IN = {"email_opt_in": "email", "sms_opt_in": "sms", "push_opt_in": "push"}
_CONSENT_TRAITS = frozenset({"consent", "unsubscribed", *_OPT_IN})


def profile(traits: dict[str, Any], context: dict[str, Any], at: str) -> dict[str, Any]:
    """customer_updated / customer_signed_up properties from identify traits (or Signed Up
    properties, named by ``at``): attributes, consent, timezone (from context)."""
    props: dict[str, Any] = {}
    attrs = traits
    if not _CONSENT_TRAITS.isdisjoint(traits):
        attrs = {k: v for k, v in traits.items() if k not in _CONSENT_TRAITS}
        consent: dict[str, Any] = {}
        given = traits.get("consent")
        if isinstance(given, dict):
            consent.update(given)
        elif given is not None:
            attrs["consent"] = given  # not Nudge's shape: an attribute like any other
        if traits.get("unsubscribed") is True:
            consent["email"] = False
        elif traits.get("unsubscribed") is not None:
            attrs["unsubscribed"] = traits["unsubscribed"]
        for trait, channel in _OPT_IN.items():
            flag = traits.get(trait)
            if flag is None:
                continue
            if type(flag) is not bool:
                raise SourceError(
                    f"{trait} must be true or false", code="invalid_field", field=f"{at}.{trait}"
                )
            consent[channel] = flag
        if consent:
            props["consent"] = consent
    if attrs:
        props["attributes"] = attrs
    tz = context.get("timezone")
    if tz is not None:
        props["timezone"] = tz
    return props
