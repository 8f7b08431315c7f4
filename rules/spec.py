"""Typed rule specs, parsed from YAML. The JSON Schema in rules/schema/ is generated from
these models (``nudge rules schema``), never edited by hand.

A spec is immutable configuration; rules/compiler.py turns it into a runnable rule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from rules.durations import CAP_PATTERN, CLOCK_PATTERN, DURATION_PATTERN, RANGE_PATTERN

__all__ = [
    "EventMatch",
    "Experiment",
    "Goal",
    "IfStep",
    "Limits",
    "Reentry",
    "RuleSpec",
    "SegmentSpec",
    "SendSpec",
    "SendStep",
    "Settings",
    "Step",
    "StepOverride",
    "Variant",
    "WaitStep",
    "WaitUntil",
]

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, examples=["30m", "4h", "3d"])]
Expr = Annotated[str, Field(min_length=1, description="A CEL expression (docs/rules.md)")]
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$", max_length=64)]
Channel = Literal["email", "sms", "push", "webhook"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventMatch(_Spec):
    """An event type with an optional CEL filter over ``event``, ``customer``, ``cart``;
    or a segment entered or left (``segment_entered: lapsed``: docs/segments.md)."""

    event: EventType | None = None
    segment_entered: Name | None = None
    segment_exited: Name | None = None
    filter: Expr | None = None

    @model_validator(mode="after")
    def _one(self) -> EventMatch:
        given = [self.event, self.segment_entered, self.segment_exited]
        if sum(v is not None for v in given) != 1:
            raise ValueError("give one of: event, segment_entered, segment_exited")
        return self

    @property
    def type(self) -> str:
        """The input type matched: the event type, or the segment change's internal type
        (``segment_entered:<id>``, which no client can send: not snake_case)."""
        if self.segment_entered is not None:
            return f"segment_entered:{self.segment_entered}"
        if self.segment_exited is not None:
            return f"segment_exited:{self.segment_exited}"
        assert self.event is not None
        return self.event


class SegmentSpec(_Spec):
    """A segment: customers for whom ``condition`` holds, kept up to date as their events
    arrive and as time passes (docs/segments.md)."""

    kind: Literal["segment"]
    id: Name
    description: str = ""
    condition: Expr = Field(
        description="CEL over customer, cart, count(); count() arguments must be literals"
    )


class SendSpec(_Spec):
    channel: Channel
    template: Name
    params: dict[str, Any] = Field(
        default_factory=dict,
        description='Literal values; a string "{{ expr }}" is CEL evaluated at send time',
    )
    deliver_within: Duration | None = Field(
        default=None,
        description=(
            "send-by deadline: if the message cannot be delivered this long after the step "
            "was reached (a provider outage), it is not sent but recorded as expired "
            "(default: the sink's, else per channel; docs/sinks.md)"
        ),
    )


class WaitUntil(_Spec):
    until: Annotated[str, Field(pattern=CLOCK_PATTERN)] = Field(
        description=(
            "next occurrence of this local time in the customer's time zone (on a night "
            "the clocks skip it: when they jump; on a night it happens twice: the first)"
        )
    )


class WaitStep(_Spec):
    """Pause the flow: a duration, or until a time of day in the customer's time zone."""

    wait: Duration | WaitUntil
    name: Name | None = None


class SendStep(_Spec):
    """Send one message. With ``if``, send only when the expression is true."""

    send: SendSpec
    name: Name | None = None
    if_: Expr | None = Field(default=None, alias="if")


class IfStep(_Spec):
    """Branch: run ``then`` when the expression is true, else ``else``."""

    if_: Expr = Field(alias="if")
    then: list[Step] = Field(min_length=1)
    else_: list[Step] = Field(default_factory=list, alias="else")
    name: Name | None = None


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "wait" in value:
            return "wait-step"
        if "send" in value:
            return "send-step"
        if "if" in value:
            return "if-step"
        return None
    if isinstance(value, WaitStep):
        return "wait-step"
    if isinstance(value, SendStep):
        return "send-step"
    return "if-step" if isinstance(value, IfStep) else None


Step = Annotated[
    Annotated[WaitStep, Tag("wait-step")]
    | Annotated[SendStep, Tag("send-step")]
    | Annotated[IfStep, Tag("if-step")],
    Discriminator(
        _step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step needs one of: wait, send, if",
    ),
]


class Reentry(_Spec):
    """When a customer may enter this flow again once a previous run has ended."""

    policy: Literal["always", "once", "once_per"] = "always"
    period: Duration | None = None

    @model_validator(mode="after")
    def _period(self) -> Reentry:
        if (self.policy == "once_per") != (self.period is not None):
            raise ValueError("period is required with policy once_per, and only with it")
        return self


class Limits(_Spec):
    per_customer: Annotated[str, Field(pattern=CAP_PATTERN)] | None = Field(
        default=None, description="at most N sends of this rule per customer per period, e.g. 1/7d"
    )
    quiet_hours: Annotated[str, Field(pattern=RANGE_PATTERN)] | None = Field(
        default=None, description="local time range (customer's zone) in which sends are deferred"
    )


class StepOverride(_Spec):
    template: Name | None = None
    params: dict[str, Any] = Field(default_factory=dict, description="merged over the step's")


class Variant(_Spec):
    """An experiment arm: its weight and what it changes in named send steps."""

    weight: Annotated[int, Field(ge=0, le=100)]
    steps: dict[Name, StepOverride] = Field(default_factory=dict)


class Goal(_Spec):
    event: EventType
    within: Duration


class Experiment(_Spec):
    variants: dict[Name, Annotated[int, Field(ge=0, le=100)] | Variant] = Field(min_length=1)
    holdout: Annotated[int, Field(ge=0, le=100)] = 0
    goal: Goal | None = None

    @model_validator(mode="after")
    def _total(self) -> Experiment:
        total = self.holdout + sum(
            v if isinstance(v, int) else v.weight for v in self.variants.values()
        )
        if total != 100:
            raise ValueError(f"variant weights plus holdout must add up to 100, not {total}")
        return self


class RuleSpec(_Spec):
    """One rule: a small flow started by a trigger event."""

    id: Name
    version: Annotated[int, Field(ge=1)] = 1
    description: str = ""
    enabled: bool = True
    priority: int = Field(default=0, description="higher runs first when rules compete")
    trigger: EventMatch
    when: Expr | None = Field(default=None, description="condition checked when triggered")
    send_if: Expr | None = Field(
        default=None,
        description="condition re-checked before every send; false ends the flow",
    )
    on_retrigger: Literal["ignore", "restart"] = Field(
        default="ignore", description="trigger while a run is open: ignore it or start over"
    )
    on_update: Literal["keep", "move"] = Field(
        default="keep",
        description=(
            "when a deploy changes this rule's version: open flows keep the version they "
            "entered with (keep), or move to the new one at the wait of the same name "
            "(move; every wait must be named). docs/rules.md, 'Deploys and open flows'"
        ),
    )
    reentry: Literal["always", "once"] | Reentry = "always"
    exit_on: list[EventMatch] = Field(default_factory=list)
    steps: list[Step] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    experiment: Experiment | None = None


class Settings(_Spec):
    """Rule-set wide settings, from ``settings.yaml`` beside the rule files."""

    kind: Literal["settings"]
    default_timezone: str = "UTC"
    default_consent: dict[str, bool] = Field(
        default_factory=lambda: {"email": True, "sms": False, "push": False, "webhook": True}
    )
    channel_caps: dict[Channel, Annotated[str, Field(pattern=CAP_PATTERN)]] = Field(
        default_factory=dict, description="per customer, across all rules, e.g. sms: 2/7d"
    )
    quiet_hours: Annotated[str, Field(pattern=RANGE_PATTERN)] | None = None
    allowed_lateness: Duration = Field(
        default="24h", description="older events update state but trigger no new flow"
    )
    future_tolerance: Duration = Field(
        default="5m",
        description=(
            "events stamped further ahead of the processing clock than this (a client with "
            "a wrong clock) are processed as if stamped at the processing time"
        ),
    )
    counters: list[EventType] = Field(
        default_factory=list, description="event types to count besides those rules use"
    )
    versions_kept: Annotated[int, Field(ge=1, le=50)] = Field(
        default=5,
        description=(
            "earlier versions of each rule kept for the open flows that entered them; an "
            "open flow of a version no longer kept ends at its next timer"
        ),
    )
    addresses: dict[str, Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: {"email": "email", "sms": "phone", "push": "push_token"},
        description="profile attribute holding each channel's address (an action's 'to')",
    )
    require_address: list[Channel] = Field(
        default_factory=list,
        description=(
            "channels whose sends need an address: without one a send is suppressed "
            "(suppressed_no_address). Channels routed to a provider sink (sendgrid, twilio, "
            "fcm) need one whatever this says"
        ),
    )
