"""Identity: an anonymous visitor's state joins the known customer's.

Two events, each processed where its customer lives (the two ids may be on different
partitions, in either runtime):

1. ``customer_aliased`` for the previous (anonymous) id, ``{"user_id": known}``: the
   previous id's state is handed over whole (:func:`hand_over`) and the id is left as a
   *redirect*: a tombstone with ``merged_into`` set, whose later events the processor
   forwards to the known customer. The handed state travels in a ``customer_merged``
   event for the known id, which the runtime routes like any event (embedded: through
   the outbox into the journal; distributed: produced to the ``events`` topic before the
   tombstone's changelog row), so it is durable before the tombstone is.
2. ``customer_merged`` for the known id: :func:`merge` folds the handed state in, once:
   ``merged_from`` remembers the ids merged, so a merge re-sent after a crash or a
   retried alias is applied once.

What wins where both have a value (docs/semantics.md#identity): the known customer's
profile attributes, consent and time zone (both consent histories are kept, by event
time); carts are joined (an item in both keeps the larger quantity and the known
cart's price); counters, orders and revenue add up; an open flow of a rule moves over
unless the known customer has one of that rule open (then the known one's stays);
recently viewed products interleave by the order they were seen in each list, the
known customer's last.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.types import Event
from state.base import TimerStore
from state.customer import CONSENT_HISTORY_MAX, SEGMENT_TIMER, VIEWED_MAX, CustomerState

__all__ = ["MERGED_FROM_MAX", "hand_over", "merge", "merge_event"]

MERGED_FROM_MAX = 32
"""Ids remembered per customer as merged in (a merge re-sent beyond that many later
merges would be applied again: it cannot be, one alias is forwarded once)."""


def hand_over(st: CustomerState, timers: TimerStore) -> CustomerState:
    """Empty ``st`` into a redirect tombstone and return what it held (a new state under
    the same id). The tombstone keeps id, first/last seen, journal position and the
    duplicate window; its timers are cancelled (the flows move to the known customer)."""
    # everything it held, less what is this id's own (redirect, segments and their timer)
    handed = msgspec.structs.replace(
        st,
        dedup=bytearray(st.dedup) if st.dedup else None,
        dedup_at=bytearray(st.dedup_at) if st.dedup_at else None,
        merged_into=None,
        segments=None,
        segments_left=None,
        segments_due=None,
        segments_digest=None,
        segments_flip=None,
    )
    for inst in (st.flows or {}).values():
        if inst.due is not None:
            timers.cancel(st.customer_id, inst.rule_id)
    if st.segments_due is not None:
        timers.cancel(st.customer_id, SEGMENT_TIMER)
    st.segments = st.segments_left = st.segments_due = st.segments_flip = None
    st.timezone = st.consent = st.consent_changes = st.consent_history = st.attributes = None
    st.orders, st.revenue = 0, 0.0
    st.first_order = st.last_order = None
    st.cart = st.cart_updated = st.viewed = st.counters = None
    st.flows = st.entries = st.sends = st.goals = None
    st.merged_from = st.undeliverable = None
    return handed


def merge_event(alias: Event, target: str, handed: CustomerState) -> Event:
    """The ``customer_merged`` event carrying ``handed`` to ``target``. Its id derives
    from the alias event's, so a re-processed alias sends the same merge."""
    return Event(
        event_id=f"{alias.event_id}:merge"[-200:],
        type="customer_merged",
        customer_id=target,
        timestamp=alias.timestamp,
        properties={"from_id": handed.customer_id, "state": handed.to_row()},
    )


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _under(base: dict[str, Any] | None, over: dict[str, Any] | None) -> dict[str, Any] | None:
    """``base`` with ``over``'s keys on top (None when both are empty)."""
    if not base:
        return over
    if not over:
        return base
    return {**base, **over}


def merge(st: CustomerState, other: CustomerState, timers: TimerStore) -> bool:
    """Fold ``other`` (a handed-over state) into ``st``; False if ``other``'s id was
    merged in before (nothing changes). Moved flows are re-keyed to ``st`` and their
    timers scheduled under its id."""
    source = other.customer_id
    if st.merged_from and source in st.merged_from:
        return False
    st.merged_from = [*(st.merged_from or ())[-(MERGED_FROM_MAX - 1) :], source]
    st.first_seen = min(st.first_seen, other.first_seen)
    st.last_seen = max(st.last_seen, other.last_seen)
    st.timezone = st.timezone or other.timezone
    # a channel's opt-out record goes with the consent that wins for it
    known = st.consent or {}
    records = {ch: r for ch, r in (other.consent_changes or {}).items() if ch not in known}
    st.consent = _under(other.consent, st.consent)
    st.consent_changes = _under(records, st.consent_changes)
    if other.consent_history:  # both histories, by event time (the anonymous first on ties)
        both = sorted([*other.consent_history, *(st.consent_history or ())], key=lambda e: e[0])
        st.consent_history = both[-CONSENT_HISTORY_MAX:]
    st.attributes = _under(other.attributes, st.attributes)
    st.undeliverable = _under(other.undeliverable, st.undeliverable)
    st.orders += other.orders
    st.revenue = round(st.revenue + other.revenue, 2)
    st.first_order = _min(st.first_order, other.first_order)
    st.last_order = _max(st.last_order, other.last_order)
    if other.cart:
        cart = dict(other.cart)
        for pid, (qty, price) in (st.cart or {}).items():
            theirs = cart.get(pid)
            cart[pid] = [max(qty, theirs[0]) if theirs else qty, price]
        st.cart = cart
        st.cart_updated = _max(st.cart_updated, other.cart_updated)
    if other.viewed:
        mine = st.viewed or []
        viewed = [p for p in other.viewed if p not in mine] + mine
        st.viewed = viewed[-VIEWED_MAX:]
    if other.counters:
        counters = dict(st.counters or {})
        for k, v in other.counters.items():
            counters[k] = counters.get(k, 0) + v
        st.counters = counters
    if other.dedup:
        _join_dedup(st, other)
    if other.facts:  # orders and refunds of both ids count once each
        for i in range(0, len(other.facts), 8):
            st.first_fact(int.from_bytes(other.facts[i : i + 8], "little"))
    _move_flows(st, other, timers)
    if other.entries:
        st.entries = {**other.entries, **(st.entries or {})}
    if other.sends:
        st.sends = sorted([*(st.sends or ()), *other.sends])
    if other.goals:
        st.goals = [*(st.goals or ()), *other.goals]
    return True


def _move_flows(st: CustomerState, other: CustomerState, timers: TimerStore) -> None:
    if not other.flows:
        return
    flows = st.flows if st.flows is not None else {}
    for rule_id, inst in other.flows.items():
        if rule_id in flows:
            continue
        flows[rule_id] = inst
        if inst.due is not None:
            timers.schedule(st.customer_id, rule_id, inst.due)
    st.flows = flows or None


def _join_dedup(st: CustomerState, other: CustomerState) -> None:
    """Both ids' remembered event ids, ``other``'s first, each with the minute it was
    remembered (an earlier layout's entries: the latest minute known); what lies past
    the last DEDUP_WINDOW is forgotten at the next event as usual."""
    assert other.dedup is not None
    parts = []
    for s in (other, st):
        if not s.dedup:
            continue
        n = len(s.dedup) >> 3
        at = s.dedup_at
        if at is None or len(at) != 4 * n:
            at = bytearray((s.last_seen // 60_000).to_bytes(4, "little") * n)
        parts.append((s.dedup, at))
    st.dedup = bytearray(b"".join(d for d, _ in parts))
    st.dedup_at = bytearray(b"".join(a for _, a in parts))
