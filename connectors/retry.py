"""Retrying a sink's ``send`` by time: exponential backoff with full jitter up to a retry
horizon, ``Retry-After`` honoured, a send-by deadline respected.

:class:`RetryPolicy` is the arithmetic (delays, horizon, an optional attempt cap) shared by
every runtime. :func:`deliver` is the simple in-task loop over it (the distributed
deliverer and ``nudge deadletter replay`` use it); the embedded outbox schedules the same
decisions itself (:func:`next_attempt`) so that a waiting action holds no task.

A failure ends delivery for good (a dead letter) only when it is permanent: the receiver
refused the action (4xx other than 408/409/425/429, an action that cannot be encoded), the
retry horizon passed, the optional attempt cap was reached, or the action's send-by
deadline passed (then it is *expired*, not failed: :class:`~connectors.exceptions.Expired`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from connectors.exceptions import ConnectorError, Expired, SinkBackpressure, SinkError

if TYPE_CHECKING:  # sinks import this module (WebhookSink.policy)
    from connectors.sinks.base import Sink
    from engine.types import Action, Millis

__all__ = ["NowMs", "RetryPolicy", "Sleep", "deliver", "next_attempt"]

logger = logging.getLogger(__name__)

HOUR = 3600.0


class Sleep(Protocol):
    """How :func:`deliver` waits between attempts (``asyncio.sleep``; tests pass a fake
    that records the delays and returns at once)."""

    def __call__(self, delay: float, /) -> Awaitable[None]: ...


class NowMs(Protocol):
    """A wall clock in epoch milliseconds (``engine.clock.Clock.now``; tests: virtual)."""

    def __call__(self) -> int: ...


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry a send.

    Retries are bounded by time: an action is retried until ``horizon`` seconds after it
    was made (its ``fire_at``), or its send-by deadline if that comes first. The delay
    before attempt ``n + 1`` is uniform in ``[0, min(max_delay, base_delay * 2 ** (n - 1))]``
    ("full jitter"), drawn from ``rng`` (pass ``random.Random(seed)`` for deterministic
    tests). A receiver's ``Retry-After`` replaces the jittered delay, capped at
    ``max_retry_after``. ``max_attempts`` (default ``None``: no cap) optionally also bounds
    the number of sends, the first included.
    """

    base_delay: float = 0.5
    max_delay: float = 300.0
    horizon: float = 12 * HOUR
    max_retry_after: float = HOUR
    max_attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConnectorError("must be at least 1", field="max_attempts")
        for name in ("base_delay", "max_delay", "max_retry_after", "horizon"):
            if not getattr(self, name) >= 0:  # also rejects NaN
                raise ConnectorError("must be a number >= 0", field=name)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(max(attempt - 1, 0), 64))
        return self.rng.uniform(0.0, cap)

    def give_up_at(self, action: Action) -> Millis:
        """When retrying ``action`` stops: ``fire_at`` plus the horizon (epoch ms)."""
        return action.fire_at + int(self.horizon * 1000)


def next_attempt(
    policy: RetryPolicy,
    action: Action,
    err: SinkError,
    attempt: int,
    now: Millis,
    *,
    deadline: Millis | None = None,
    horizon_from: Millis | None = None,
    who: str = "sink",
) -> Millis:
    """When to try ``action`` again after attempt number ``attempt`` failed with ``err``
    at ``now`` (epoch ms). Raises the permanent :class:`SinkError` (``retryable=False``,
    ``reason`` set, ``err`` chained) when it must not be retried, and :class:`Expired`
    when the next attempt would come after ``deadline``.

    The horizon runs from ``horizon_from`` (default the action's ``fire_at``: a replay
    passes the time it started).
    """
    if not err.retryable:
        raise SinkError(
            f"{who} refused the action: {err}",
            retryable=False,
            status=err.status,
            attempts=attempt,
            reason=err.reason or "rejected",
        ) from err
    if policy.max_attempts is not None and attempt >= policy.max_attempts:
        raise SinkError(
            f"{who} failed {attempt} attempts, last: {err}",
            retryable=False,
            status=err.status,
            attempts=attempt,
            reason="attempts",
        ) from err
    retry_after = err.retry_after if isinstance(err, SinkBackpressure) else None
    at = now + int(policy.delay(attempt, retry_after) * 1000)
    if deadline is not None and at > deadline:
        raise Expired(
            f"{who}: send-by deadline passes before the next attempt; last error: {err}",
            deadline=deadline,
            attempts=attempt,
        ) from err
    start = action.fire_at if horizon_from is None else horizon_from
    if at > start + int(policy.horizon * 1000):
        raise SinkError(
            f"{who}: retry horizon of {policy.horizon:g}s passed after {attempt} attempts,"
            f" last: {err}",
            retryable=False,
            status=err.status,
            attempts=attempt,
            reason="horizon",
        ) from err
    return at


async def deliver(
    sink: Sink,
    action: Action,
    policy: RetryPolicy,
    sleep: Sleep = asyncio.sleep,
    *,
    deadline: Millis | None = None,
    now: NowMs | None = None,
) -> int:
    """Send ``action`` to ``sink`` until it is accepted; return the number of attempts.

    Retryable :class:`SinkError` and :class:`SinkBackpressure` are retried after
    ``policy.delay(...)`` seconds while the horizon (counted from the call) and
    ``deadline`` (epoch ms, checked against ``now``, default the wall clock) allow.
    Raises :class:`SinkError` with ``retryable=False``, ``reason`` and ``attempts`` set
    (the last error chained as ``__cause__``) when the sink refused permanently or time
    ran out, :class:`Expired` when the deadline passed (before the first attempt too).
    Any other exception from ``send`` is a sink bug: it is logged with its traceback and
    treated as a permanent failure. Cancellation propagates unchanged.

    Time is counted as the waits this call made plus the clock's progress, so a fake
    ``sleep`` (which returns at once) still runs out the horizon.
    """
    clock = now if now is not None else _wall_ms
    start = clock()
    waited = 0  # ms slept: a fake sleep does not move the clock
    attempt = 0
    if deadline is not None and start >= deadline:
        raise Expired("send-by deadline had passed before the first attempt", deadline=deadline)
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
                reason="rejected",
            ) from err
        else:
            return attempt
        t = max(clock(), start + waited)
        at = next_attempt(
            policy, action, last, attempt, t, deadline=deadline, horizon_from=start, who=sink.name
        )
        wait = (at - t) / 1000
        logger.debug(
            "retrying %s to %s in %.3fs (attempt %d failed: %s)",
            action.idempotency_key,
            sink.name,
            wait,
            attempt,
            last,
        )
        waited += at - t
        await sleep(wait)
