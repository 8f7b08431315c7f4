"""Segment membership, kept per customer in the pure core (docs/segments.md).

After each event a customer's segments are evaluated; whatever changed becomes a
``segment_entered:<id>`` / ``segment_exited:<id>`` input for the rules (triggers, exits),
stamped with the time of the change. A condition reads only the customer's state, so with
no event it can change only when a counted bucket leaves a window of one of its
``count()`` calls: the earliest such instant is the customer's segment timer
(``SEGMENT_TIMER``), which re-evaluates then. Membership therefore changes at the instant
the condition turns true to within the counters' bucket rounding (state/windows.py), with
no polling and no bound beyond the timer's own lateness.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.output import Output
from engine.scope import RuleScope
from engine.segment_flips import next_flip
from engine.types import Event, from_ms
from rules.expressions import ExpressionError
from rules.ruleset import RuleSet
from rules.segments import CompiledSegment
from state.base import TimerStore
from state.customer import SEGMENT_TIMER, CustomerState
from state.windows import counted_change, crossings

if TYPE_CHECKING:
    from engine.intelligence.population import Population

__all__ = ["baseline", "change_event", "drop_removed", "evaluate_segments"]

_UNSET = object()


def baseline(rs: RuleSet, consent: dict[str, bool]) -> tuple[str, ...]:
    """The segments a customer with no state yet is in, among those only some event types
    can change (``inputs`` not None): their conditions read orders, cart, consent,
    attributes and counts, all empty and the same for every new customer, so they are
    worked out once per rule set instead of at every customer's first event."""
    empty = CustomerState("", 0, 0)
    scope = RuleScope(empty, 0, consent)
    members = []
    for seg in rs.segments:
        if seg.inputs is None:
            continue
        try:
            if seg.test(scope):
                members.append(seg.id)
        except ExpressionError:
            continue
    return tuple(members)


def drop_removed(rs: RuleSet, st: CustomerState) -> None:
    """Drop ``st``'s memberships of segments ``rs`` does not have (a state evaluated under
    another rule set), without an exit: the segment is gone, the customer did not change.
    Nothing else is touched (``segments_left``, the segment timer: the next evaluation of
    all segments works the timer out again)."""
    members = st.segments
    if members and not members.keys() <= rs.segment_ids:
        st.segments = {k: v for k, v in members.items() if k in rs.segment_ids} or None


def change_event(customer_id: str, seg_id: str, entered: bool, now: int) -> Event:
    """The rules' input for a change: ``segment_entered:<id>`` / ``segment_exited:<id>``
    at ``now`` (built only when a rule triggers or exits on it)."""
    kind = "segment_entered" if entered else "segment_exited"
    return Event(
        event_id=f"{kind}:{seg_id}:{now}",
        type=f"{kind}:{seg_id}",
        customer_id=customer_id,
        timestamp=from_ms(now),
        properties={"segment": seg_id},
    )


def evaluate_segments(
    rs: RuleSet,
    st: CustomerState,
    now: int,
    consent: dict[str, bool],
    timers: TimerStore,
    out: Output,
    segments: tuple[CompiledSegment, ...] | None = None,
    recount: bool = True,
    counted: tuple[str, int] | None = None,
    start: tuple[str, ...] = (),
    population: Population | None = None,
    timer: bool = False,
) -> list[tuple[str, bool]]:
    """Re-evaluate ``st``'s segments at ``now`` (``segments``: only these, the ones the
    input can have changed; default all): record entries (with their time) and exits,
    (re)schedule the segment timer, and return the changes, entries and exits in segment
    order, as (segment id, entered?) (:func:`change_event` makes the rules' input of
    one). A condition that fails to evaluate keeps the membership it had (the error goes
    to ``out.errors``). ``recount``: work the timer's instant out again over all counters
    (a first event, a merge, the timer firing): the first instant a count crosses a
    threshold its conditions compare it with (state.windows.next_crossing); ``counted``:
    instead, one event of this type at this time was counted, the only bucket that
    changed: the timer moves to that bucket's leaving if earlier (never late; at worst
    early, when the timer recounts); neither: the instant stands. ``start``: a new
    customer's membership before its first event (:func:`baseline`), entered now.
    ``population``: for ``customer.rfm`` / ``.predicted``; for segments reading them the
    timer also comes back when time alone turns them: the instant R drops a score
    (``Population.next_rfm_change``), the instant a predicted segment turns, searched to
    the minute when an input can move the predictions (engine/segment_flips.py; kept in
    ``segments_flip``). ``timer``: the segment timer is the input.

    A state last evaluated under another rule set (``segments_digest`` differs) first
    loses its memberships of segments the rule set no longer has, without an exit.
    Evaluating all segments (``segments`` None) marks the state with the rule set's
    ``segments_digest``."""
    if (
        counted is not None
        and segments is not None
        and not (start or recount or timer)
        and counted[0] in rs.segment_quiet
        and st.segments_digest == rs.segments_digest
        and (st.segments_due is None or st.segments_due > now)
    ):
        return _counted(rs, st, now, consent, timers, out, segments, counted, population)
    members = st.segments or {}
    changes: list[tuple[str, bool]] = []
    if members and st.segments_digest != rs.segments_digest:
        drop_removed(rs, st)
        members = st.segments or {}
    if start:
        members = {**members, **dict.fromkeys(start, now)}
        changes += [(seg_id, True) for seg_id in start]
    etype = counted[0] if counted is not None and segments is not None else None
    segs = rs.segments if segments is None else segments
    _turn(st, now, consent, population, out, segs, etype, members, changes)
    if segments is None:  # all of them: the state is current for this rule set's segments
        st.segments_digest = rs.segments_digest
    # over every segment's count() windows and what they read of the population: one
    # timer serves them all
    moves = None
    if population is not None and rs.segments_population:
        if rs.segments_rfm_groups:  # only the group matters: when it changes
            moves = population.next_rfm_group_change(st, now)
        elif rs.segments_rfm:
            moves = population.next_rfm_change(st, now)
        predicted = rs.segments_predicted
        if predicted:
            flip = st.segments_flip
            # searched (~30 evaluations) when the input can move the predictions (the
            # predicted segments evaluated, not by the timer: orders, a merge, a
            # backfill) or once the turn found before has come; else kept
            fresh = segments is None or (
                not timer and any("predicted" in g.population for g in segments)
            )
            if fresh or (flip is not None and flip <= now):
                flip = st.segments_flip = next_flip(predicted, st, now, consent, population)
            if flip is not None and (moves is None or flip < moves):
                moves = flip
    # the timer: at ``due`` (the earliest instant a segment can turn), later only when a
    # recount finds the memberships unchanged at the instants before (see _first_change);
    # any input that can move a count-timed segment puts it back at ``due``
    if st.segments_due is not None and st.segments_due <= now:
        recount = True  # passed over (no change then): the next crossing is unknown
    elif counted is not None and segments is not None and _falls(segments, counted[0]):
        # an order (a count compared with 0) usually leaves its windows with the counts
        # it turned off (the checkout, the views): search now rather than fire for nothing
        recount = True
    found: list[int] = []
    if recount:
        found = crossings(st.counters or {}, rs.segment_thresholds, now)
        due = found[0] if found else None
    elif counted is not None:
        due = st.segments_due
        at = counted_change(rs.segment_windows, counted[0], counted[1], now)
        if at is not None and (due is None or at < due):
            due = at
    elif moves is None:
        if st.segments_due is not None and _counts_moved(segments):
            timers.schedule(st.customer_id, SEGMENT_TIMER, st.segments_due)
        return changes
    else:
        due = st.segments_due
    if moves is not None and (due is None or moves < due):
        due = moves
    fire = due
    if recount and due is not None and st.segments_digest == rs.segments_digest:
        fire = _first_change(rs, st, found, consent, population, moves)
    if fire is None:
        if st.segments_due is not None or recount:
            timers.cancel(st.customer_id, SEGMENT_TIMER)
    elif (
        recount
        or counted is not None  # a count moved: re-armed at ``due``
        or due != st.segments_due
        or _counts_moved(segments)
    ):
        timers.schedule(st.customer_id, SEGMENT_TIMER, fire)
    st.segments_due = due
    return changes


def _turn(
    st: CustomerState,
    now: int,
    consent: dict[str, bool],
    population: Population | None,
    out: Output,
    segments: tuple[CompiledSegment, ...],
    etype: str | None,
    members: dict[str, int],
    changes: list[tuple[str, bool]],
) -> None:
    """Evaluate ``segments`` for ``st`` at ``now`` against ``members`` (its memberships
    so far) and keep the result in ``st.segments`` (exits in ``segments_left``), each
    change appended to ``changes`` as (segment id, entered?). ``etype``: one more counted
    event of this type is the input (the segments it cannot move are skipped). The
    RFM-group segments share one group lookup; a condition that fails to evaluate keeps
    the membership (the error goes to ``out.errors``)."""
    scope: RuleScope | None = None  # built for the first condition that needs it
    group: object = _UNSET  # customer.rfm.group, worked out once
    for seg in segments:
        was = seg.id in members
        if seg.rfm_group is not None:  # the condition is exactly "in this RFM group"
            if group is _UNSET:
                group = None if population is None else population.rfm_group(st, now)
            inside = group == seg.rfm_group
        else:
            if etype is not None and seg.unchanged_by(etype, was):
                continue
            direct = seg.direct
            test = None if direct is None else direct(st, now)
            if test is not None:
                inside = test
            else:
                if scope is None:
                    scope = RuleScope(st, now, consent, population=population)
                try:
                    inside = seg.test(scope)
                except ExpressionError as err:
                    out.errors.append(f"segment {seg.id}: {err}")
                    inside = was
        if inside != was:
            if inside:
                members = {**members, seg.id: now}
            else:
                members = {k: v for k, v in members.items() if k != seg.id}
                st.segments_left = {**(st.segments_left or {}), seg.id: now}
            changes.append((seg.id, inside))
    st.segments = members or None


def _counted(
    rs: RuleSet,
    st: CustomerState,
    now: int,
    consent: dict[str, bool],
    timers: TimerStore,
    out: Output,
    segments: tuple[CompiledSegment, ...],
    counted: tuple[str, int],
    population: Population | None,
) -> list[tuple[str, bool]]:
    """:func:`evaluate_segments` for the commonest input, an event counted for the
    segments (a product view) whose type is in ``rs.segment_quiet``: none of
    ``segments`` reads the population and one more such event cannot only turn one of
    them false, with the state current for the rule set and its timer ahead (or none).
    What the general path does then, without its searches: the memberships the type can
    turn, and the timer at its instant or the counted bucket's leaving if earlier,
    re-armed (an instant passed over before may matter now). What the population turns
    is in ``segments_due`` already: every evaluation takes the earlier of the two (no
    timer: it turns nothing), and nothing it depends on moved."""
    etype, ts = counted
    changes: list[tuple[str, bool]] = []
    _turn(st, now, consent, population, out, segments, etype, st.segments or {}, changes)
    due = st.segments_due
    at = counted_change(rs.segment_windows, etype, ts, now)
    if at is not None and (due is None or at < due):
        due = st.segments_due = at
    if due is not None:
        timers.schedule(st.customer_id, SEGMENT_TIMER, due)
    return changes


_SEARCHED = 8
"""Instants a recount evaluates before setting the timer at the next one anyway."""


def _counts_moved(segments: tuple[CompiledSegment, ...] | None) -> bool:
    """Whether an input that evaluated ``segments`` (None: all) can have moved a
    count-timed segment's future (it is among them: the input is one of its types)."""
    return segments is None or any(g.counts or g.inputs is None for g in segments)


def _falls(segments: tuple[CompiledSegment, ...], event_type: str) -> bool:
    """Whether one more ``event_type`` can only turn one of ``segments`` false (its
    count is compared with ``== 0`` or ``<``: rules.segments.directions)."""
    return any(g.falling is not None and event_type in g.falling for g in segments)


def _first_change(
    rs: RuleSet,
    st: CustomerState,
    found: list[int],
    consent: dict[str, bool],
    population: Population | None,
    moves: int | None,
) -> int | None:
    """When the segment timer must fire, the state as it is: the first instant a count
    crosses a threshold (``found``: state.windows.crossings) at which a count-timed segment's
    membership differs from ``st``'s, or ``moves`` (what the population turns) if that
    comes first; None: never. An instant where several counts drop at once and no
    condition turns (a checkout and its order leaving the 24 hours together) is passed
    over. Exact with no input in between, the counts being the only thing that moves
    between those instants; an input that can move a count-timed segment puts the timer
    back at ``segments_due`` (the earliest crossing: evaluate_segments), so nothing is
    missed. Only instants where several counts cross are evaluated (where one crosses
    alone the timer stops: the crossing is there because a condition compares that
    count). A condition failing to evaluate, or more than ``_SEARCHED`` instants
    evaluated, stops the search there (the timer fires then and searches again)."""
    members = st.segments or {}
    timed = rs.segments_timed_counts
    i, n, searched = 0, len(found), 0
    while i < n:
        at = found[i]
        j = i + 1
        while j < n and found[j] == at:
            j += 1
        if moves is not None and at >= moves:
            return moves
        if j - i == 1 or searched == _SEARCHED:
            return at  # one count crossing alone: taken as turning a condition
        searched += 1
        scope: RuleScope | None = None
        for seg in timed:
            direct = seg.direct
            inside = None if direct is None else direct(st, at)
            if inside is None:
                if scope is None:
                    scope = RuleScope(st, at, consent, population=population)
                try:
                    inside = seg.test(scope)
                except ExpressionError:
                    return at
            if inside != (seg.id in members):
                return at
        i = j
    return moves
