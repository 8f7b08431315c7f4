"""Signed outgoing webhooks, per the Standard Webhooks specification
(https://www.standardwebhooks.com/, ``spec/standard-webhooks.md``).

Every request carries three headers:

- ``webhook-id``: the action's idempotency key (the same on every retry and replay);
- ``webhook-timestamp``: integer seconds since the epoch when this attempt was made (each
  retry is signed anew, so a receiver's 5-minute tolerance holds for a send retried for
  hours);
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one per
  secret, space-separated. During a rotation the sink holds two secrets and signs with both:
  a receiver that knows either one verifies the request.

Secrets are the spec's symmetric keys: ``whsec_`` followed by base64 of 24 to 64 random
bytes (``whsec_`` optional). They are kept as bytes in memory, never printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from connectors.exceptions import ConnectorError

__all__ = ["PREFIX", "WebhookSigner", "parse_secrets"]

PREFIX = "whsec_"
_MIN_KEY, _MAX_KEY = 24, 64


def parse_secrets(text: str, *, field: str = "signing_secret") -> list[bytes]:
    """The keys in ``text``: one or more ``whsec_<base64>`` separated by whitespace, the
    current one first. ConnectorError at ``field`` when one is not such a key (the message
    never contains the value)."""
    keys: list[bytes] = []
    for i, word in enumerate(text.split()):
        raw = word.removeprefix(PREFIX)
        try:
            key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ConnectorError(f"secret {i + 1} is not base64", field=field) from None
        if not _MIN_KEY <= len(key) <= _MAX_KEY:
            raise ConnectorError(
                f"secret {i + 1} is {len(key)} bytes; the spec wants {_MIN_KEY} to {_MAX_KEY}",
                field=field,
            )
        keys.append(key)
    if not keys:
        raise ConnectorError("no secret", field=field)
    if len(keys) > 2:
        raise ConnectorError("at most two secrets (the new one, then the old)", field=field)
    return keys


class WebhookSigner:
    """Signs request bodies with every key it holds (the current one first)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConnectorError("a signer needs a key", field="signing_secret")
        self._keys = tuple(keys)

    def __repr__(self) -> str:
        return f"WebhookSigner({len(self._keys)} key(s))"

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` header value."""
        signed = f"{msg_id}.{timestamp}.".encode() + body
        return " ".join(
            "v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
            for k in self._keys
        )

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        """The three Standard Webhooks headers for one attempt."""
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(msg_id, timestamp, body),
        }
