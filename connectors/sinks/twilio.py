"""SMS through Twilio's Messages API.

One ``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` per action, HTTP
basic auth (``AccountSid:AuthToken``, or ``ApiKeySid:ApiKeySecret`` when ``api_key_sid``
is set), form-encoded ``To`` (``action.to``), ``From`` or ``MessagingServiceSid``,
``Body`` and ``StatusCallback``; accepted on 201.

``Body`` is the file ``{templates_dir}/{template}.txt`` (read once, at start; trailing
newlines dropped) with ``$name`` / ``${name}`` replaced by the action's params (Python's
``string.Template`` syntax: ``$$`` is a literal ``$``, and a ``$`` not followed by a name,
as in ``$5 off``, stays as written). A param the text names that is missing or null is a
non-retryable SinkError naming it.

``StatusCallback`` is a contract with the Twilio status callback source::

    {public_url}/v1/sources/twilio/status?customer=<customer_id>&key=<idempotency_key>
        &rule=<rule_id>&template=<template>

(``urllib.parse.urlencode`` of those four, in that order). Twilio has no idempotency key
for creating messages either: a retry after a timeout may send twice; ``key`` in the
callback shows it.
"""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Unpack

import aiohttp
from pydantic import Field, SecretStr, model_validator

from connectors.exceptions import ConnectorError, SinkError
from connectors.sinks.provider import (
    HttpReply,
    ProviderConfig,
    ProviderSink,
    Transport,
    fill_template,
)
from engine.types import Action

__all__ = [
    "MAX_BODY",
    "TWILIO_URL",
    "TwilioConfig",
    "TwilioSink",
    "load_templates",
    "status_callback",
]

logger = logging.getLogger(__name__)

TWILIO_URL = "https://api.twilio.com"
MAX_BODY = 1600
"""Twilio refuses a Body longer than 1,600 characters (error 21617)."""
_Sid = Annotated[str, Field(pattern=r"^[A-Z]{2}[0-9a-fA-F]{32}$")]


class TwilioConfig(ProviderConfig):
    """``type: twilio``. Default pace 1 message/s: Twilio's documented rate for one US/CA
    long code (toll-free: 3/s, short code: 100/s, a Messaging Service: its senders' sum);
    a faster ``rate_per_second`` only makes Twilio queue (up to 10 h, then error 21611)."""

    SECRETS: ClassVar[tuple[str, ...]] = ("auth_token",)
    DEFAULT_RATE: ClassVar[float] = 1.0

    type: Literal["twilio"]
    account_sid: _Sid
    api_key_sid: _Sid | None = Field(
        None, description="authenticate with this API key (auth_token is its secret)"
    )
    auth_token_env: str | None = None
    auth_token_file: str | None = None
    sender: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, alias="from", description="an E.164 number, short code or sender id"
    )
    messaging_service_sid: _Sid | None = None
    templates_dir: Annotated[str, Field(min_length=1)]
    public_url: Annotated[str, Field(pattern=r"^https?://[^/\s]+")] = "http://127.0.0.1:8080"

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioConfig:
        if (self.sender is None) == (self.messaging_service_sid is None):
            raise ValueError("give 'from' or 'messaging_service_sid' (exactly one)")
        return self


def load_templates(directory: str | Path) -> dict[str, str]:
    """``{name: text}`` for every ``*.txt`` in ``directory``; ConnectorError at
    ``templates_dir`` if it is not a readable directory."""
    d = Path(directory)
    if not d.is_dir():
        raise ConnectorError(f"{d} is not a directory", field="templates_dir")
    out: dict[str, str] = {}
    for f in sorted(d.glob("*.txt")):
        try:
            out[f.stem] = f.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as err:
            raise ConnectorError(f"cannot read {f}: {err}", field="templates_dir") from None
    return out


def status_callback(public_url: str, action: Action) -> str:
    """The ``StatusCallback`` URL for ``action`` (the contract with the status source)."""
    query = urllib.parse.urlencode(
        {
            "customer": action.customer_id,
            "key": action.idempotency_key,
            "rule": action.rule_id,
            "template": action.template,
        }
    )
    return f"{public_url.rstrip('/')}/v1/sources/twilio/status?{query}"


class TwilioSink(ProviderSink):
    """One Messages request per action; see the module docstring for the form.

    ``send`` raises a non-retryable SinkError when the action has no address, there is no
    ``{template}.txt``, a param is missing, the body is over 1,600 characters, or Twilio
    refuses (400 with its ``code``, e.g. 21211 invalid To, 21610 unsubscribed; 401; 403);
    a retryable one on 5xx, timeouts, connection errors and a 429 without
    ``Retry-After``; :class:`SinkBackpressure` on 429/503 with one.
    """

    provider: ClassVar[str] = "twilio"
    default_rate: ClassVar[float] = TwilioConfig.DEFAULT_RATE

    def __init__(
        self,
        account_sid: str,
        auth_token: SecretStr,
        templates: dict[str, str],
        *,
        sender: str | None = None,
        messaging_service_sid: str | None = None,
        api_key_sid: str | None = None,
        public_url: str = "http://127.0.0.1:8080",
        base_url: str = TWILIO_URL,
        name: str = "twilio",
        **transport: Unpack[Transport],
    ) -> None:
        super().__init__(name, base_url, **transport)
        if (sender is None) == (messaging_service_sid is None):
            raise ConnectorError("give 'from' or 'messaging_service_sid' (exactly one)")
        self.account_sid = account_sid
        self._authorization = SecretStr(
            aiohttp.encode_basic_auth(api_key_sid or account_sid, auth_token.get_secret_value())
        )
        self.templates = dict(templates)
        self.sender = sender
        self.messaging_service_sid = messaging_service_sid
        self.public_url = public_url.rstrip("/")
        self.url = f"{self.base_url}/2010-04-01/Accounts/{account_sid}/Messages.json"

    @classmethod
    def from_config(cls, name: str, cfg: TwilioConfig, secrets: dict[str, SecretStr]) -> TwilioSink:
        return cls(
            cfg.account_sid,
            secrets["auth_token"],
            load_templates(cfg.templates_dir),
            sender=cfg.sender,
            messaging_service_sid=cfg.messaging_service_sid,
            api_key_sid=cfg.api_key_sid,
            public_url=cfg.public_url,
            base_url=cfg.base_url or TWILIO_URL,
            name=name,
            **cfg.transport(),
        )

    def form(self, action: Action) -> dict[str, str]:
        """The form fields for ``action`` (raises SinkError as ``send`` does)."""
        to = self.require_address(action)
        text = self.templates.get(action.template)
        if text is None:
            raise SinkError(f"twilio: no template file {action.template}.txt", retryable=False)
        body = fill_template(text, action.params, f"twilio template {action.template!r}")
        if len(body) > MAX_BODY:
            raise SinkError(
                f"twilio: template {action.template!r} makes {len(body)} characters "
                f"(max {MAX_BODY})",
                retryable=False,
            )
        form = {"To": to, "Body": body, "StatusCallback": status_callback(self.public_url, action)}
        if self.messaging_service_sid is not None:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            assert self.sender is not None
            form["From"] = self.sender
        return form

    async def send(self, action: Action) -> None:
        """One Messages request; see the class docstring for the outcomes."""
        form = self.form(action)
        headers = {"Authorization": self._authorization.get_secret_value()}
        reply = await self._request(self.url, headers=headers, data=form)
        if 200 <= reply.status < 300:
            return
        raise self._fail(reply, _detail(reply))


def _detail(reply: HttpReply) -> str:
    """Twilio's ``{"code", "message", "more_info", "status"}`` as one line."""
    doc = reply.json()
    if isinstance(doc, dict) and "message" in doc:
        code = doc.get("code")
        return f"{code}: {doc['message']}" if code is not None else str(doc["message"])
    return reply.body[:200].decode("utf-8", "replace").strip()
