"""Retrying a sink's ``send``: exponential backoff with full jitter, ``Retry-After`` honoured.

:func:`deliver` works with any :class:`~connectors.sinks.base.Sink`; the runtime wraps every
send in it and dead-letters the action when it raises.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from connectors.exceptions import ConnectorError, SinkBackpressure, SinkError

if TYPE_CHECKING:  # sinks import this module (WebhookSink.policy)
    from connectors.sinks.base import Sink
    from engine.types import Action

__all__ = ["RetryPolicy", "Sleep", "deliver"]

logger = logging.getLogger(__name__)


class Sleep(Protocol):
    """How :func:`deliver` waits between attempts (``asyncio.sleep``; tests pass a fake
    that records the delays and returns at once)."""

    def __call__(self, delay: float, /) -> Awaitable[None]: ...


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a send.

    ``max_attempts`` counts every send, the first included (1 = no retry). The delay before
    attempt ``n + 1`` is uniform in ``[0, min(max_delay, base_delay * 2 ** (n - 1))]`` ("full
    jitter"), drawn from ``rng`` (pass ``random.Random(seed)`` for deterministic tests). A
    receiver's ``Retry-After`` replaces the jittered delay, capped at ``max_retry_after``.
    """

    max_attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 30.0
    max_retry_after: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConnectorError("must be at least 1", field="max_attempts")
        for name in ("base_delay", "max_delay", "max_retry_after"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ConnectorError("must be a number >= 0", field=name)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(max(attempt - 1, 0), 64))
        return self.rng.uniform(0.0, cap)


async def deliver(
    sink: Sink, action: Action, policy: RetryPolicy, sleep: Sleep = asyncio.sleep
) -> int:
    """Send ``action`` to ``sink`` until it is accepted; return the number of attempts.

    Retryable :class:`SinkError` and :class:`SinkBackpressure` are retried after
    ``policy.delay(...)`` seconds, up to ``policy.max_attempts`` sends in all. Raises
    :class:`SinkError` with ``retryable=False`` and ``attempts`` set (the last error
    chained as ``__cause__``) when the sink refused permanently or attempts ran out. Any
    other exception from ``send`` is a sink bug: it is logged with its traceback and treated
    as a permanent failure. Cancellation propagates unchanged.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            await sink.send(action)
        except SinkError as err:
            last: SinkError = err
        except Exception as err:
            logger.exception("sink %s raised an unexpected error", sink.name)
            raise SinkError(
                f"sink {sink.name} failed unexpectedly: {err!r}",
                retryable=False,
                attempts=attempt,
            ) from err
        else:
            return attempt
        if not last.retryable:
            raise SinkError(
                f"{sink.name} refused the action: {last}",
                retryable=False,
                status=last.status,
                attempts=attempt,
            ) from last
        if attempt >= policy.max_attempts:
            raise SinkError(
                f"{sink.name} failed {attempt} attempts, last: {last}",
                retryable=False,
                status=last.status,
                attempts=attempt,
            ) from last
        retry_after = last.retry_after if isinstance(last, SinkBackpressure) else None
        wait = policy.delay(attempt, retry_after)
        logger.debug(
            "retrying %s to %s in %.3fs (attempt %d failed: %s)",
            action.idempotency_key,
            sink.name,
            wait,
            attempt,
            last,
        )
        await sleep(wait)
