"""Twilio: verify ``X-Twilio-Signature`` and map message status callbacks and inbound
messages onto Nudge events.

Signature: base64 HMAC-SHA1 under the account's auth token of the full URL Twilio
requested (query string included) followed by each POST parameter, sorted by name, as
name + value. The URL is rebuilt from ``public_url`` (what Twilio was given; behind a
proxy the request's own Host differs) plus the request's path and query; like Twilio's
own validator, it is tried with and without the default port. A request whose
``X-Twilio-Webhooks-Signature-Settings`` header names ``algorithm=HMAC_SHA256`` (a
Webhook Rule with a SharedKey) is checked with SHA-256: then the configured secret must
be that SharedKey's.

Contract with the Twilio sink (connectors/sinks/): each message's ``StatusCallback`` is
:func:`status_callback_url` (``{public_url}/v1/sources/twilio/status?customer=..&key=..
&rule=..&template=..``), so a callback names the customer and the action it came from.

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from connectors.sources.exceptions import SourceError
from engine.types import Event

__all__ = [
    "HARD_ERROR_CODES",
    "SIGNATURE_HEADER",
    "START_WORDS",
    "STATUS_PATH",
    "STOP_WORDS",
    "inbound_event",
    "keyword",
    "query_params",
    "signature",
    "status_callback_url",
    "status_event",
    "verify",
]

SIGNATURE_HEADER = "X-Twilio-Signature"
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
STATUS_PATH = "/v1/sources/twilio/status"
INBOUND_PATH = "/v1/sources/twilio/inbound"

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "YES", "UNSTOP"})
"""Twilio's default opt-out / opt-in keywords. Like Twilio, only a message that is the
keyword alone counts (``STOP`` does, ``please stop`` does not), in any letter case."""

HARD_ERROR_CODES = frozenset(
    {
        21211,  # invalid 'To' phone number
        21610,  # the recipient replied STOP: Twilio refuses to send
        21612,  # 'To' number not reachable by SMS from this sender
        21614,  # 'To' number is not a mobile number
        30005,  # unknown destination handset
        30006,  # landline or unreachable carrier
    }
)
"""Error codes after which the number will not take a message: ``bounce_type`` hard
(marks the address undeliverable). Others (30003 unreachable, 30007 carrier filtering,
30008 unknown, ...) are soft."""

_STATUS_TYPES = {"delivered": "sms_delivered", "undelivered": "sms_failed", "failed": "sms_failed"}
_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
_DEFAULT_PORTS = {"https": 443, "http": 80}
_MAX_ID = 200


def status_callback_url(
    public_url: str, customer_id: str, idempotency_key: str, rule_id: str, template: str
) -> str:
    """The ``StatusCallback`` the Twilio sink sets on a message (the contract)."""
    query = urlencode(
        {"customer": customer_id, "key": idempotency_key, "rule": rule_id, "template": template}
    )
    return f"{public_url.rstrip('/')}{STATUS_PATH}?{query}"


def signature(
    url: str, params: Iterable[tuple[str, str]], secret: str, algorithm: str = "HMAC_SHA1"
) -> str:
    """Twilio's signature of a request to ``url`` with form ``params`` (pairs; a name
    may repeat): sorted by name, then value, each appended as name + value."""
    data = url + "".join(k + v for k, v in sorted(set(params)))
    mac = hmac.new(secret.encode(), data.encode(), _HASHES[algorithm])
    return base64.b64encode(mac.digest()).decode()


def _port_variants(url: str) -> list[str]:
    """``url`` as given, without its port and with its scheme's default port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    default = _DEFAULT_PORTS.get(parts.scheme)
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    out = [url, urlunsplit(parts._replace(netloc=prefix + host))]
    if default is not None:
        port = parts.port or default
        out.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{port}")))
    return list(dict.fromkeys(out))


def verify(
    url: str,
    params: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    secret: str,
) -> None:
    """Raise SourceError 401 ``bad_signature`` unless ``X-Twilio-Signature`` signs
    ``url`` (the public URL Twilio requested, query included) and ``params``."""
    got = (headers.get(SIGNATURE_HEADER) or "").strip()
    if not got:
        raise SourceError(
            f"missing {SIGNATURE_HEADER} header",
            status=401,
            code="bad_signature",
            field=SIGNATURE_HEADER,
        )
    algorithm = "HMAC_SHA1"
    for part in (headers.get(SETTINGS_HEADER) or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            algorithm = value.strip().upper()
    if algorithm not in _HASHES:
        raise SourceError(
            f"unsupported signature algorithm {algorithm}",
            status=401,
            code="bad_signature",
            field=SETTINGS_HEADER,
        )
    pairs = list(params)
    for candidate in _port_variants(url):
        expected = signature(candidate, pairs, secret, algorithm)
        if hmac.compare_digest(expected.encode(), got.encode()):
            return
    raise SourceError(
        "signature does not match the URL and parameters",
        status=401,
        code="bad_signature",
        field=SIGNATURE_HEADER,
    )


def _param(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "").strip()
    if not value:
        raise SourceError(f"missing form parameter {name}", field=name)
    return value[:_MAX_ID]


def status_event(params: Mapping[str, str], query: Mapping[str, str], now: datetime) -> Event | str:
    """The event of a status callback, or why there is none: ``ignored`` (queued, sent,
    accepted, ... : not an outcome), ``unknown_recipient`` (no ``customer`` in the
    callback URL: a message Nudge did not send). ``event_id`` is ``MessageSid:Status``,
    so Twilio's retries are duplicates. Raises SourceError 400 without ``MessageSid``."""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
    etype = _STATUS_TYPES.get(status)
    if etype is None:
        return "ignored"
    customer = query.get("customer", "").strip()
    if not customer or len(customer) > _MAX_ID:
        return "unknown_recipient"
    sid = _param(params, "MessageSid")
    props: dict[str, Any] = {"message_sid": sid}
    for prop, arg in (("rule_id", "rule"), ("template", "template"), ("message_key", "key")):
        if query.get(arg):
            props[prop] = query[arg]
    if params.get("To"):
        props["phone"] = params["To"]
    if etype == "sms_failed":
        code = params.get("ErrorCode", "").strip()
        props["error_code"] = code
        hard = code.isdigit() and int(code) in HARD_ERROR_CODES
        props["bounce_type"] = "hard" if hard else "soft"
        if params.get("To"):  # the number a hard failure marks undeliverable
            props["address"] = params["To"]
    return Event(
        event_id=f"{sid}:{status}"[:_MAX_ID],
        type=etype,
        customer_id=customer,
        timestamp=now,
        properties=props,
        context={"source": "twilio"},
    )


def keyword(params: Mapping[str, str]) -> str | None:
    """``STOP`` or ``START`` when the message opts out or in, else None. Twilio's
    ``OptOutType`` parameter (Advanced Opt-Out, custom keywords) wins when present."""
    opt = params.get("OptOutType", "").strip().upper()
    if opt in ("STOP", "START"):
        return opt
    word = params.get("Body", "").strip().strip(".!").upper()
    if word in STOP_WORDS:
        return "STOP"
    if word in START_WORDS:
        return "START"
    return None


def inbound_event(params: Mapping[str, str], customer_id: str, now: datetime) -> Event:
    """An inbound message from ``customer_id``'s phone: ``sms_unsubscribed`` (a STOP
    word), ``sms_resubscribed`` (a START word), else ``sms_replied`` {body}. Raises
    SourceError 400 without ``MessageSid``."""
    sid = _param(params, "MessageSid")
    word = keyword(params)
    etype = {"STOP": "sms_unsubscribed", "START": "sms_resubscribed"}.get(word or "")
    props: dict[str, Any] = {"message_sid": sid, "phone": params.get("From", "")}
    if etype is None:
        etype = "sms_replied"
        props["body"] = params.get("Body", "")[:1600]
    else:
        props["keyword"] = params.get("Body", "").strip()[:64]
    return Event(
        event_id=sid,
        type=etype,
        customer_id=customer_id,
        timestamp=now,
        properties=props,
        context={"source": "twilio"},
    )


def query_params(query_string: str) -> dict[str, str]:
    """A URL's query as a dict (the last value of a repeated name wins)."""
    return dict(parse_qsl(query_string, keep_blank_values=True))
