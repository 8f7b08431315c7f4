"""The Segment / RudderStack tracking API (``/v1/batch``, ``/v1/track``, ...) over
:mod:`connectors.sources.segment`. Routes are added by :func:`install`."""

from __future__ import annotations

from aiohttp import web

__all__ = ["install"]


def install(app: web.Application) -> None:
    """Add the tracking API routes to ``app``."""
