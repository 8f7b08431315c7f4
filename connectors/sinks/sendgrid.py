"""Email through SendGrid's v3 Mail Send API with dynamic templates.

One ``POST {base_url}/v3/mail/send`` per action (``Authorization: Bearer <api key>``,
JSON), accepted on 202::

    {"personalizations": [{"to": [{"email": action.to}],
                           "dynamic_template_data": action.params,
                           "custom_args": CUSTOM_ARGS}],
     "from": {"email": ..., "name": ...},
     "template_id": templates[action.template],
     "categories": [action.rule_id, *categories],
     "custom_args": CUSTOM_ARGS}

``CUSTOM_ARGS`` is a contract with the SendGrid Event Webhook source, which reads these
keys back from every delivered/open/click event: ``{"nudge_customer": customer_id,
"nudge_key": idempotency_key, "nudge_rule": rule_id, "nudge_template": template}`` (given
both per recipient and per message: the same values).

SendGrid has no idempotency header: a send retried after a timeout whose request did get
through is sent twice. ``nudge_key`` in ``custom_args`` makes such duplicates visible (and
removable) in SendGrid's event data; the outbox makes sure Nudge itself asks once per
action, retries aside.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, Literal, Unpack

import orjson
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.exceptions import SinkError
from connectors.sinks.provider import HttpReply, ProviderConfig, ProviderSink, Transport
from engine.types import Action

__all__ = ["SENDGRID_URL", "SendGridConfig", "SendGridSink", "custom_args"]

logger = logging.getLogger(__name__)

SENDGRID_URL = "https://api.sendgrid.com"
MAX_CATEGORIES = 10
_Category = Annotated[str, Field(min_length=1, max_length=255)]


class _Sender(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)]
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None


class SendGridConfig(ProviderConfig):
    """``type: sendgrid``. Default pace 100 requests/s (burst 100): well under what Mail
    Send accepts, and a campaign of 10,000 emails leaves in under two minutes."""

    SECRETS: ClassVar[tuple[str, ...]] = ("api_key",)
    DEFAULT_RATE: ClassVar[float] = 100.0

    type: Literal["sendgrid"]
    api_key_env: str | None = None
    api_key_file: str | None = None
    sender: _Sender = Field(alias="from")
    templates: dict[
        Annotated[str, Field(min_length=1, max_length=100)],
        Annotated[str, Field(min_length=1, max_length=100)],
    ] = Field(description="Nudge template name -> SendGrid dynamic template id (d-...)")
    categories: Annotated[list[_Category], Field(max_length=MAX_CATEGORIES - 1)] = []


def custom_args(action: Action) -> dict[str, str]:
    """The ``custom_args`` a send carries (the contract with the Event Webhook source)."""
    return {
        "nudge_customer": action.customer_id,
        "nudge_key": action.idempotency_key,
        "nudge_rule": action.rule_id,
        "nudge_template": action.template,
    }


class SendGridSink(ProviderSink):
    """One Mail Send request per action; see the module docstring for the body.

    ``send`` raises a non-retryable SinkError when the action has no address, its template
    has no mapping in ``templates`` (the message names the template), its params cannot
    be encoded, or SendGrid refuses it (400/401/403/413...); a retryable one on 5xx,
    timeouts and connection errors; :class:`SinkBackpressure` on 429 (``Retry-After`` or
    ``X-RateLimit-Reset``).
    """

    provider: ClassVar[str] = "sendgrid"
    default_rate: ClassVar[float] = SendGridConfig.DEFAULT_RATE

    def __init__(
        self,
        api_key: SecretStr,
        sender_email: str,
        templates: dict[str, str],
        *,
        sender_name: str | None = None,
        categories: list[str] | None = None,
        base_url: str = SENDGRID_URL,
        name: str = "sendgrid",
        **transport: Unpack[Transport],
    ) -> None:
        super().__init__(name, base_url, **transport)
        self._api_key = api_key
        self.sender: dict[str, str] = {"email": sender_email}
        if sender_name:
            self.sender["name"] = sender_name
        self.templates = dict(templates)
        self.categories = list(categories or [])
        self.url = f"{self.base_url}/v3/mail/send"

    @classmethod
    def from_config(
        cls, name: str, cfg: SendGridConfig, secrets: dict[str, SecretStr]
    ) -> SendGridSink:
        return cls(
            secrets["api_key"],
            cfg.sender.email,
            cfg.templates,
            sender_name=cfg.sender.name,
            categories=cfg.categories,
            base_url=cfg.base_url or SENDGRID_URL,
            name=name,
            **cfg.transport(),
        )

    def body(self, action: Action) -> dict[str, Any]:
        """The Mail Send JSON for ``action`` (raises SinkError as ``send`` does)."""
        to = self.require_address(action)
        template_id = self.templates.get(action.template)
        if template_id is None:
            raise SinkError(
                f"sendgrid: template {action.template!r} has no SendGrid template id "
                f"(add it under templates: in the sinks file)",
                retryable=False,
            )
        args = custom_args(action)
        categories = list(dict.fromkeys([action.rule_id[:255], *self.categories]))
        return {
            "personalizations": [
                {
                    "to": [{"email": to}],
                    "dynamic_template_data": action.params,
                    "custom_args": args,
                }
            ],
            "from": self.sender,
            "template_id": template_id,
            "categories": categories[:MAX_CATEGORIES],
            "custom_args": args,
        }

    async def send(self, action: Action) -> None:
        """One Mail Send request; see the class docstring for the outcomes."""
        try:
            data = orjson.dumps(self.body(action), option=orjson.OPT_NON_STR_KEYS)
        except TypeError as err:
            raise SinkError(f"sendgrid: params cannot be encoded: {err}", retryable=False) from err
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Content-Type": "application/json",
        }
        reply = await self._request(self.url, headers=headers, data=data)
        if 200 <= reply.status < 300:
            return
        raise self._fail(reply, _detail(reply))


def _detail(reply: HttpReply) -> str:
    """SendGrid's ``{"errors": [{"message", "field"}]}`` as one line."""
    doc = reply.json()
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if isinstance(errors, list):
        parts = []
        for e in errors:
            if isinstance(e, dict):
                field = e.get("field")
                parts.append(f"{field}: {e.get('message')}" if field else str(e.get("message")))
        if parts:
            return "; ".join(parts)
    return reply.body[:200].decode("utf-8", "replace").strip()
