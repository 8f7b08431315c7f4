"""What one core Output counts for campaign analytics: pure, from the Output (its flow
notes, conversions and the input event) and the customer's state after it.

The core notes what each flow did when the runtime asks (``Processor.notes``,
``Output.notes``): an instance entered, a send op ran (with its fire's outcome), the flow
suspended at a wait, it exited (by an ``exit_on`` event or segment change, or by
``send_if``), it completed. Each note is its cell already (``engine.output.Note``: rule
version, arm, op and metric, without the hour), so counting an output's notes is one
C-level count; the counts are exact whatever the rule version: an instance that runs on
an earlier version counts on that version's steps.

Conversions count once per goal window (the core's ``_conversions``: one goal event
converts a rule once per customer however often it re-entered within the window), with
the goal event's ``total`` property as revenue (in cents). Delivery feedback events
naming a ``rule_id`` count against that rule; with a ``message_key`` matching a send of
the customer's open instance, against its step too.
"""

from __future__ import annotations

from typing import Any

from engine.flows import attributed_step
from engine.output import Note, Output
from engine.types import Event
from rules.compiler import CompiledRule, Send, Wait
from rules.ruleset import RuleSet
from state.customer import CustomerState

__all__ = ["FEEDBACK", "Add", "observe", "step_label"]

Add = list[tuple[Note, int]]
"""What ``observe`` counts: (cell without its hour, how many); the tally adds them to the
customer's counts of the hour (engine/analytics/tally.py)."""

FEEDBACK = {
    "email_delivered": "delivered",
    "sms_delivered": "delivered",
    "email_opened": "opened",
    "push_opened": "opened",
    "email_clicked": "clicked",
    "sms_clicked": "clicked",
    "email_bounced": "bounced",
    "email_dropped": "bounced",
    "sms_failed": "bounced",
    "email_unsubscribed": "unsubscribed",
    "sms_unsubscribed": "unsubscribed",
    "email_spam_reported": "unsubscribed",
}
"""Feedback event type -> what it counts as (``feedback:<kind>``)."""


def step_label(rule: CompiledRule, pc: int) -> str | None:
    """ "send email cart_reminder", "wait 4h", "wait until 09:00"; None for control ops."""
    op = rule.ops[pc] if 0 <= pc < len(rule.ops) else None
    if isinstance(op, Send):
        return f"send {op.channel} {op.template}"
    if isinstance(op, Wait):
        if op.ms is not None:
            return f"wait {_duration(op.ms)}"
        m = op.until_minute or 0
        return f"wait until {m // 60:02d}:{m % 60:02d}"
    return None


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def observe(
    rs: RuleSet,
    st: CustomerState | None,
    out: Output,
    event: Event | None,
) -> Add:
    """What ``out`` counts (``event``: the input, None for a timer): its flow notes,
    conversions and the feedback event. (Outputs with notes only are counted by the
    tally alone: ``Tally.add``.)"""
    add: Add = [(note, 1) for note in out.notes or ()]
    if out.conversions:
        post = st.flows if st is not None and st.flows else None
        cents = _revenue_cents(event)
        for c in out.conversions:
            version = _version(rs, post, c.rule_id)
            add.append(((c.rule_id, version, c.variant, -1, "conversions"), 1))
            if cents:
                add.append(((c.rule_id, version, c.variant, -1, "revenue_cents"), cents))
    if event is not None and event.type in FEEDBACK:
        _feedback(rs, add, st, event)
    return add


def _version(rs: RuleSet, post: Any, rid: str) -> int:
    if post and rid in post:
        return int(post[rid].version)
    rule = rs.rules.get(rid)
    return rule.version if rule is not None else 0


def _revenue_cents(event: Event | None) -> int:
    if event is None:
        return 0
    total = event.properties.get("total")
    if isinstance(total, bool) or not isinstance(total, int | float):
        return 0
    return round(total * 100)


def _feedback(rs: RuleSet, add: Add, st: CustomerState | None, event: Event) -> None:
    props = event.properties
    rid = props.get("rule_id")
    if not isinstance(rid, str) or not rid:
        return
    kind = f"feedback:{FEEDBACK[event.type]}"
    rule = rs.rules.get(rid)
    inst = st.flows.get(rid) if st is not None and st.flows else None
    key = props.get("message_key")
    if inst is not None and rule is not None and isinstance(key, str):
        pc = attributed_step(rule, inst, event.customer_id, key)
        if pc is not None:
            add.append(((rid, inst.version, inst.variant, pc, kind), 1))
            return
    variant = ""
    if inst is not None:
        variant = inst.variant
    elif st is not None and st.goals:
        variant = next((g[1] for g in st.goals if g[0] == rid), "")
    version = inst.version if inst is not None else rule.version if rule is not None else 0
    add.append(((rid, version, variant, -1, kind), 1))
