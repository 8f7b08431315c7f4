"""Provider webhooks: Shopify, SendGrid Event Webhook, Twilio status callbacks and
inbound messages, over :mod:`connectors.sources`. Routes are added by :func:`install`.

These routes are authenticated by each provider's signature, not by a bearer token. A
provider whose secret is unset in :class:`SourcesConfig` is not served: its routes answer
404 ``source_disabled``. Refusals are counted in ``nudge_events_rejected_total{source,
reason}``; so are the deliveries answered 2xx but not applied (``unknown_topic``,
``unknown_recipient``, ``unknown_order``, ``no_customer``, ``invalid_event``), because a
provider retries a non-2xx answer for hours and may then disable the webhook.

The address book (:mod:`state.addresses`) maps a phone number to its customer for
Twilio's inbound messages and a Shopify order to its customer for refunds. It is the app
key :data:`engine.http.base.ADDRESS_BOOK` (``create_app(address_book=...)``: SQLite in the
data dir for ``nudge run``, Redis for the distributed ingest). Every ingest route records
the addresses of the profile events it accepts (``engine.http.base.submit``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from urllib.parse import parse_qsl

from aiohttp import web

from connectors.sources import sendgrid, shopify, twilio
from connectors.sources.config import SourcesConfig
from connectors.sources.exceptions import SourceError
from engine.events import decode_events, encode_events
from engine.exceptions import EventError
from engine.http.base import (
    ADDRESS_BOOK,
    add_source_route,
    backend_of,
    metrics_of,
    ok,
    reject,
    submit,
)
from engine.types import Event, from_ms
from state.addresses import normalize

__all__ = [
    "ADDRESS_BOOK",
    "INBOUND_PATH",
    "SENDGRID_PATH",
    "SHOPIFY_PATH",
    "STATUS_PATH",
    "install",
]

logger = logging.getLogger(__name__)

SHOPIFY_PATH = "/v1/sources/shopify"
SENDGRID_PATH = "/v1/sources/sendgrid"
STATUS_PATH = twilio.STATUS_PATH
INBOUND_PATH = twilio.INBOUND_PATH
ORDER_CHANNEL = "shopify_order"
_EMPTY_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _count(request: web.Request, source: str, reason: str, n: int = 1) -> None:
    if n:
        metrics_of(request.app).events_rejected.labels(source, reason).inc(n)


def _now(request: web.Request) -> datetime:
    """The engine's processing time (its clock: virtual in tests, scaled in demos), for
    events whose payload carries no time of its own."""
    return from_ms(backend_of(request.app).clock.now())


def _checked(events: list[Event]) -> list[Event]:
    """``events`` as the ingest would decode them: a mapped event that is not a valid
    event (an id too long, an amount out of range) raises SourceError 400 naming it."""
    try:
        return decode_events(encode_events(events))
    except EventError as err:
        raise SourceError(
            f"mapped event is invalid: {err}", code="invalid_event", field=err.field
        ) from None


def _disabled(source: str) -> SourceError:
    return SourceError(
        f"the {source} source is not configured on this server",
        status=404,
        code="source_disabled",
        field=None,
    )


def _disabled_handler(source: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return reject(request, source, _disabled(source))

    return handler


async def _accepted(request: web.Request, events: list[Event], source: str) -> web.Response:
    return await submit(request, events, None, source)


def _shopify(secret: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        book = request.app[ADDRESS_BOOK]
        try:
            hook = shopify.parse(body, request.headers, secret, _now(request))
            if hook.topic not in shopify.TOPICS:
                _count(request, "shopify", "unknown_topic")
                return ok({"ignored": hook.topic})
            if hook.topic == "refunds/create":
                order_id = shopify.refund_order_id(hook)
                customer = await book.lookup(ORDER_CHANNEL, order_id)
                if customer is None:
                    _count(request, "shopify", "unknown_order")
                    return ok({"ignored": hook.topic, "reason": "unknown_order"})
                events = [shopify.refund_event(hook, customer)]
            else:
                events = shopify.to_events(hook)
            if not events:
                _count(request, "shopify", "no_customer")
                return ok({"ignored": hook.topic, "reason": "no_customer"})
            events = _checked(events)
        except SourceError as err:
            return reject(request, "shopify", err)
        resp = await _accepted(request, events, "shopify")
        if resp.status == 202 and (pair := shopify.order_customer(hook)) is not None:
            await book.record(ORDER_CHANNEL, *pair)
        return resp

    return handler


def _sendgrid(key_text: str) -> Handler:
    key = sendgrid.load_key(key_text)

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            # staleness is about the wall clock: the provider signed at real time
            batch = sendgrid.parse(body, request.headers, key, time.time())
        except SourceError as err:
            return reject(request, "sendgrid", err)
        events: list[Event] = []
        for ev in batch.events:
            try:
                events.extend(_checked([ev]))
            except SourceError:
                batch.skipped["invalid_event"] += 1
        for reason in ("unknown_recipient", "invalid_event"):
            _count(request, "sendgrid", reason, batch.skipped[reason])
        if not events:
            return ok({"accepted": 0, "skipped": dict(batch.skipped)})
        return await _accepted(request, events, "sendgrid")

    return handler


async def _form(request: web.Request) -> list[tuple[str, str]]:
    """The POST form as (name, value) pairs, repeated names kept (Twilio signs them all).
    Raises SourceError 400 on a body that is not UTF-8."""
    body = await request.read()
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise SourceError("body is not a UTF-8 form", code="invalid_form") from None


def _twilio_status(token: str, public_url: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        try:
            pairs = await _form(request)
            twilio.verify(public_url + request.raw_path, pairs, request.headers, token)
            query = twilio.query_params(request.query_string)
            got = twilio.status_event(dict(pairs), query, _now(request))
            if isinstance(got, str):
                if got != "ignored":
                    _count(request, "twilio", got)
                return ok({"accepted": 0, "skipped": got})
            events = _checked([got])
        except SourceError as err:
            return reject(request, "twilio", err)
        resp = await _accepted(request, events, "twilio")
        return ok({"accepted": len(events)}) if resp.status == 202 else resp

    return handler


def _twiml() -> web.Response:
    return web.Response(body=_EMPTY_TWIML, content_type="text/xml")


def _twilio_inbound(token: str, public_url: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        try:
            pairs = await _form(request)
            twilio.verify(public_url + request.raw_path, pairs, request.headers, token)
            params = dict(pairs)
            phone = normalize("sms", params.get("From", ""))
            customer = await request.app[ADDRESS_BOOK].lookup("sms", phone) if phone else None
            if customer is None:
                _count(request, "twilio", "unknown_recipient")
                return _twiml()
            events = _checked([twilio.inbound_event(params, customer, _now(request))])
        except SourceError as err:
            return reject(request, "twilio", err)
        resp = await submit(request, events, None, "twilio")
        return _twiml() if resp.status == 202 else resp

    return handler


def install(app: web.Application, config: SourcesConfig) -> None:
    """Add the webhook routes to ``app`` and a memory address book unless one is set.
    Raises ConnectorError if the SendGrid verification key is not a public key."""
    public_url = config.public_url.rstrip("/")
    shopify_secret = config.shopify_secret
    sendgrid_key = config.sendgrid_verification_key
    twilio_token = config.twilio_auth_token
    routes: list[tuple[str, Handler, str]] = []
    if shopify_secret is not None and shopify_secret.get_secret_value():
        routes.append((SHOPIFY_PATH, _shopify(shopify_secret.get_secret_value()), "shopify"))
    else:
        routes.append((SHOPIFY_PATH, _disabled_handler("shopify"), "shopify"))
    if sendgrid_key is not None and sendgrid_key.get_secret_value():
        routes.append((SENDGRID_PATH, _sendgrid(sendgrid_key.get_secret_value()), "sendgrid"))
    else:
        routes.append((SENDGRID_PATH, _disabled_handler("sendgrid"), "sendgrid"))
    if twilio_token is not None and twilio_token.get_secret_value():
        token = twilio_token.get_secret_value()
        routes.append((STATUS_PATH, _twilio_status(token, public_url), "twilio"))
        routes.append((INBOUND_PATH, _twilio_inbound(token, public_url), "twilio"))
    else:
        routes.append((STATUS_PATH, _disabled_handler("twilio"), "twilio"))
        routes.append((INBOUND_PATH, _disabled_handler("twilio"), "twilio"))
    for path, h, source in routes:
        add_source_route(app, "POST", path, h, source)
