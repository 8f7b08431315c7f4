"""The delivery options every network sink's config shares: retries by time, the send-by
deadline, the circuit breaker. ``nudge sinks check`` validates them with the sink."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from connectors.breaker import BreakerPolicy
from connectors.deadline import DURATION_PATTERN, parse_seconds
from connectors.retry import RetryPolicy

__all__ = ["BreakerConfig", "DeliveryOptions", "Duration"]

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, examples=["90s", "30m", "2h", "3d"])]
_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class BreakerConfig(BaseModel):
    """``breaker:`` of a sink (connectors/breaker.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failures: Annotated[int, Field(ge=1)] = 5
    open_for: _NonNegative = 1.0
    max_open_for: _NonNegative = 10.0
    ramp: Annotated[int, Field(ge=1)] = 64

    def policy(self) -> BreakerPolicy:
        return BreakerPolicy(self.failures, self.open_for, self.max_open_for, self.ramp)


class DeliveryOptions(BaseModel):
    """Retry, deadline and breaker fields of a sink config (see docs/sinks.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    retry_horizon: Duration = Field(
        "12h", description="retry an action for this long after it was made, then dead-letter"
    )
    deliver_within: Duration | None = Field(
        None, description="send-by deadline for this sink's actions (default: per channel)"
    )
    max_attempts: Annotated[int, Field(ge=1)] | None = Field(
        None, description="optional cap on sends per action (default: bounded by time only)"
    )
    base_delay: _NonNegative = 0.5
    max_delay: _NonNegative = 300.0
    breaker: BreakerConfig = BreakerConfig()

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            base_delay=self.base_delay,
            max_delay=self.max_delay,
            horizon=parse_seconds(self.retry_horizon),
            max_attempts=self.max_attempts,
        )

    def within(self) -> float | None:
        """``deliver_within`` in seconds (``None``: the channel default applies)."""
        return None if self.deliver_within is None else parse_seconds(self.deliver_within)
