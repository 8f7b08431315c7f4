"""Pacing sends to a provider: an asyncio token bucket shared by a sink's concurrent sends.

A campaign can make thousands of actions due in the same second; a provider answers a
burst above its limit with 429s (or, for Twilio, queues it and fails what waits more than
10 hours). A provider sink takes a token before each request, so the burst leaves Nudge at
``rate`` requests per second after an initial ``burst``, and 429s stay the exception.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from connectors.exceptions import ConnectorError
from connectors.retry import Sleep

__all__ = ["Monotonic", "TokenBucket"]


class Monotonic(Protocol):
    """A monotonic clock in seconds (``time.monotonic``; tests pass a virtual one)."""

    def __call__(self) -> float: ...


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; :meth:`acquire` takes one.

    Waiters are served in the order they called :meth:`acquire`: each one reserves the
    next token when it arrives (the count may go negative: a debt the refill pays back) and
    sleeps until that token is due, so a burst of N concurrent calls on an empty bucket
    returns after 1/rate, 2/rate, ... N/rate seconds, without polling. A waiter cancelled
    while sleeping gives its token back.

    :meth:`hold` makes the next token due no sooner than ``seconds`` from now (a provider's
    ``Retry-After``): sends that reserve after the call wait it out; waiters already
    sleeping keep their reservation.

    ``clock`` and ``sleep`` are injected for tests (a virtual clock that ``sleep``
    advances); not thread-safe: one event loop.
    """

    def __init__(
        self,
        rate: float,
        burst: float = 1.0,
        *,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not rate > 0 or rate == float("inf"):
            raise ConnectorError("must be a number > 0", field="rate_per_second")
        if not burst >= 1 or burst == float("inf"):
            raise ConnectorError("must be a number >= 1", field="burst")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._updated = clock()

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst:g})"

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)

    @property
    def available(self) -> float:
        """Tokens available now (negative: that many reserved ahead by sleeping waiters)."""
        self._refill()
        return self._tokens

    def reserve(self) -> float:
        """Take the next token; return the seconds until it is due (0: now)."""
        self._refill()
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        """Wait for a token and take it."""
        wait = self.reserve()
        if wait <= 0:
            return
        try:
            await self._sleep(wait)
        except asyncio.CancelledError:
            self._tokens += 1.0  # give the reservation back
            raise

    def hold(self, seconds: float) -> None:
        """No new reservation is due before ``seconds`` from now."""
        if not seconds > 0:
            return
        self._refill()
        self._tokens = min(self._tokens, 1.0 - seconds * self.rate)
