"""What one input (an event, or a timer that came due) produced in the core: the record
the runtimes turn into sends, metrics, forwards and index updates. A leaf beside
engine/types.py, so the processor and the modules it calls (flows, segments) share it
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.types import Action, Conversion, Event, Fire

__all__ = ["Note", "Output", "exit_metric", "send_metric"]

Note = tuple[str, int, str, int, str]
"""What a flow did, for campaign analytics (engine/analytics/observe.py), already in the
form of the count it adds to: (rule id, version, variant, step, metric), a
``state.analytics.Cell`` without its hour. Metrics: ``entered`` (an instance started, step
-1), ``reached`` (the flow suspended at the wait at step, or ran the send op at step),
``sent:<channel>`` / ``holdout`` / ``suppressed:<reason>`` (that send's outcome, under the
fire's variant), ``exited:<why>`` (ended by an event or segment change: its type, by
``send_if``, or ``restarted`` by its trigger), ``completed`` (it ran to its end, or its
rule version is gone). Step is -1 when it is not about an op. The processor builds the
notes so that counting an output needs no per-note Python (engine/analytics/tally.py)."""


def send_metric(fire: Fire) -> str:
    """The metric of a send op's outcome: ``sent:email``, ``holdout``, ``suppressed:cap``."""
    if fire.outcome == "sent":
        return "sent:" + fire.channel
    if fire.outcome == "holdout":
        return "holdout"
    return "suppressed:" + fire.outcome.removeprefix("suppressed_")


def exit_metric(why: str) -> str:
    """``exited:<why>``; a segment change's ``segment_entered:<id>`` counts as
    ``exited:segment_entered``."""
    return "exited:" + why.partition(":")[0]


@dataclass(slots=True)
class Output:
    """What one input produced."""

    customer_id: str = ""
    timer_due: int | None = None  # set when a timer produced this output
    actions: list[Action] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    conversions: list[Conversion] = field(default_factory=list)
    # experiment exposures: a goal window opened (rule id, variant); conversions count
    # once per exposure, so rate = conversions / exposures in every arm
    exposures: list[tuple[str, str]] = field(default_factory=list)
    duplicate: bool = False
    too_late: bool = False
    future: bool = False  # stamped ahead of the clock beyond tolerance: processed at ``now``
    lateness: int = 0
    errors: list[str] = field(default_factory=list)
    # events for other customers that the runtime must route to their owners (identity:
    # a merge, or an event under an id that was merged into another)
    forwards: list[Event] = field(default_factory=list)
    # segment membership changes: (customer id, segment id, entered?, at ms), in order
    # (the runtime keeps its segment index with them: engine/segment_index.py)
    segment_changes: list[tuple[str, str, bool, int]] = field(default_factory=list)
    # what the customer's flows did (``Note``), noted only when the runtime counts
    # campaign analytics (``Processor.notes``); None otherwise
    notes: list[Note] | None = None

    def extend(self, other: Output) -> None:
        self.actions += other.actions
        self.fires += other.fires
        self.conversions += other.conversions
        self.exposures += other.exposures
        self.errors += other.errors
        self.forwards += other.forwards
        self.segment_changes += other.segment_changes
        if other.notes:
            self.notes = [*(self.notes or ()), *other.notes]
