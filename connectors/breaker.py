"""A circuit breaker per sink: stop sending to a provider that keeps failing, probe it one
request at a time, and ramp back up once it answers.

States (the values of ``nudge_sink_state{sink}``):

- ``closed`` (0): sends go through. ``failures`` retryable failures in a row open it.
- ``open`` (2): no send goes out until ``open_until``; then one probe is let through
  (``half_open``). The open period starts at ``open_for`` and doubles with every failed
  probe, up to ``max_open_for``: a provider down for a minute sees a handful of probes,
  not a thundering herd of retries.
- ``half_open`` (1): at most ``limit`` sends in flight. The first probe has the limit 1;
  every success raises it by one, so it doubles per round of sends (TCP's slow start:
  resuming at the pace the provider shows it can take) until it reaches ``ramp``, then
  the breaker closes. A failure opens it again.

A permanent refusal (4xx) is a success for the breaker: the provider is up. The breaker
reads time only from the injected ``now`` (epoch ms) and does no I/O; callers wait.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from connectors.exceptions import ConnectorError
from connectors.retry import NowMs

__all__ = ["BreakerPolicy", "BreakerState", "CircuitBreaker", "OnState"]

logger = logging.getLogger(__name__)

_BUSY_RETRY_MS = 20  # half open and at the limit: ask again this soon


class BreakerState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


OnState = Callable[[str, BreakerState], None]
"""Called with (sink name, new state) on every change (the runtime sets its gauge)."""


@dataclass(frozen=True)
class BreakerPolicy:
    """When a sink's breaker opens and how it comes back (seconds; see the module)."""

    failures: int = 5
    open_for: float = 1.0
    max_open_for: float = 10.0
    ramp: int = 64

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ConnectorError("must be at least 1", field="failures")
        if self.ramp < 1:
            raise ConnectorError("must be at least 1", field="ramp")
        for name in ("open_for", "max_open_for"):
            if not getattr(self, name) >= 0:
                raise ConnectorError("must be a number >= 0", field=name)


class CircuitBreaker:
    """One sink's breaker. Every :meth:`acquire` that returns ``None`` must be matched by
    one :meth:`release` with the outcome. Not thread-safe (one event loop)."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        now: NowMs,
        on_state: OnState | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self._now = now
        self._on_state = on_state
        self.state = BreakerState.CLOSED
        self.failures = 0  # consecutive, while closed
        self.inflight = 0
        self.limit = 1  # half open: sends allowed in flight
        self.open_until = 0
        self._open_ms = int(policy.open_for * 1000)
        self.opened = 0  # times it opened (tests, logs)
        if on_state is not None:
            on_state(name, self.state)

    def acquire(self) -> int | None:
        """``None``: send now (a slot is taken). Otherwise the epoch ms at which to ask
        again (the end of the open period, or soon when half open at its limit)."""
        now = self._now()
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return self.open_until
            self._set(BreakerState.HALF_OPEN)
            self.limit = 1
        if self.state is BreakerState.HALF_OPEN and self.inflight >= self.limit:
            return now + _BUSY_RETRY_MS
        self.inflight += 1
        return None

    def release(self, ok: bool) -> None:
        """The send taken by :meth:`acquire` ended: ``ok`` unless it failed retryably
        (timeout, connection refused, 5xx, 429)."""
        self.inflight = max(0, self.inflight - 1)
        p = self.policy
        if ok:
            if self.state is BreakerState.CLOSED:
                self.failures = 0
            elif self.state is BreakerState.HALF_OPEN:
                self.limit += 1
                if self.limit >= p.ramp:
                    self._open_ms = int(p.open_for * 1000)
                    self.failures = 0
                    self._set(BreakerState.CLOSED)
            return
        if self.state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= p.failures:
                self._open(self._open_ms)
        elif self.state is BreakerState.HALF_OPEN:  # a failed probe: wait longer
            self._open_ms = min(int(p.max_open_for * 1000), max(1, self._open_ms * 2))
            self._open(self._open_ms)
        # OPEN: a send started before it opened; nothing more to learn

    def _open(self, ms: int) -> None:
        self.open_until = self._now() + ms
        self.opened += 1
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is self.state:
            return
        logger.warning("sink %s circuit %s", self.name, state.name.lower())
        self.state = state
        if self._on_state is not None:
            self._on_state(self.name, state)
