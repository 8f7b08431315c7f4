"""Action sinks: the :class:`~connectors.sinks.base.Sink` protocol and its backends (log,
JSONL, webhook, and the providers SendGrid, Twilio and FCM: docs/sinks.md)."""

from __future__ import annotations

from connectors.sinks.base import Sink, action_payload
from connectors.sinks.fcm import FcmSink
from connectors.sinks.jsonl import JsonlSink, read_jsonl_actions
from connectors.sinks.log import LogSink
from connectors.sinks.sendgrid import SendGridSink
from connectors.sinks.twilio import TwilioSink
from connectors.sinks.webhook import WebhookSink

__all__ = [
    "FcmSink",
    "JsonlSink",
    "LogSink",
    "SendGridSink",
    "Sink",
    "TwilioSink",
    "WebhookSink",
    "action_payload",
    "read_jsonl_actions",
]
