"""Provider webhooks: Shopify, SendGrid Event Webhook, Twilio status callbacks and
inbound messages, over :mod:`connectors.sources`. Routes are added by :func:`install`."""

from __future__ import annotations

from aiohttp import web

from connectors.sources.config import SourcesConfig

__all__ = ["install"]


def install(app: web.Application, config: SourcesConfig) -> None:
    """Add the webhook routes to ``app``."""
