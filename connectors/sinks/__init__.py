"""Action sinks: the :class:`~connectors.sinks.base.Sink` protocol and its backends."""

from __future__ import annotations

from connectors.sinks.base import Sink, action_payload
from connectors.sinks.jsonl import JsonlSink, read_jsonl_actions
from connectors.sinks.log import LogSink
from connectors.sinks.webhook import WebhookSink

__all__ = [
    "JsonlSink",
    "LogSink",
    "Sink",
    "WebhookSink",
    "action_payload",
    "read_jsonl_actions",
]
