"""What one input (an event, or a timer that came due) produced in the core: the record
the runtimes turn into sends, metrics, forwards and index updates. A leaf beside
engine/types.py, so the processor and the modules it calls (flows, segments) share it
without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.types import Action, Conversion, Event, Fire

__all__ = ["Note", "Output"]

Note = tuple[str, str, int, str, int, Fire | str | None]
"""What a flow did, for campaign analytics (engine/analytics/observe.py): (kind, rule id,
version, variant, pc, detail). Kinds: ``enter`` (an instance started), ``send`` (the send
op at pc ran: detail is its Fire), ``reach`` (the flow suspended at the wait at pc),
``exit`` (it was ended by an event or segment change of the type in detail, by
``send_if``, or ``restarted`` by its trigger), ``complete`` (it ran to its end, or its
rule version is gone). pc is -1 when it is not about an op."""


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
