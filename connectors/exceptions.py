"""Connector exceptions, all rooted at :class:`engine.exceptions.NudgeError`."""

from __future__ import annotations

from engine.exceptions import NudgeError

__all__ = ["ConnectorError", "Expired", "SinkBackpressure", "SinkError"]


class ConnectorError(NudgeError):
    """A connector cannot be built or used: bad routing config, bad sink arguments.

    ``field`` is a JSON path into the config (``$.sinks.crm.url``, ``$.routes[1].sink``)
    when the error is about one field, else ``None``. ``str(err)`` starts with it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class SinkError(ConnectorError):
    """A sink did not accept an action.

    ``retryable`` says whether sending the same action again may succeed (timeouts,
    connection errors, HTTP 408/425/429/5xx) or not (other HTTP 4xx, an action that cannot
    be encoded, retries exhausted). ``status`` is the HTTP status when there was one.
    ``attempts`` is how many sends were made; :func:`connectors.retry.deliver` sets it on
    the error it raises when it gives up (a single ``send`` leaves it at 1).
    ``reason`` says why delivery ended for good, on the errors that end it: ``rejected``
    (the receiver refused it), ``horizon`` (retried for the whole retry horizon),
    ``attempts`` (the optional attempt cap), ``expired`` (:class:`Expired`); ``None`` on
    a single attempt's error.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        attempts: int = 1,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.attempts = attempts
        self.reason = reason


class SinkBackpressure(SinkError):
    """The receiver asked to slow down: retry the same action after ``retry_after``
    seconds (from ``Retry-After`` on HTTP 429/503). Always retryable."""

    def __init__(self, message: str, *, retry_after: float, status: int | None = None) -> None:
        super().__init__(message, retryable=True, status=status)
        self.retry_after = retry_after


class Expired(SinkError):
    """An action's send-by deadline (epoch ms ``deadline``) passed before it could be
    delivered: it is not sent, and recorded with reason ``expired``."""

    def __init__(self, message: str, *, deadline: int, attempts: int = 0) -> None:
        super().__init__(message, retryable=False, attempts=attempts, reason="expired")
        self.deadline = deadline
