"""What one core Output counts for campaign analytics: pure, from the Output, the rule set,
the customer's open flows before the input (``snapshot``) and its state after it.

The core's Output names fires (send steps reached, by outcome), actions and conversions;
entries, exits and the step each fire belongs to are read off the flow instances:

- an instance that is new after the input (another instance id) entered; a rule that
  fired with no instance before nor after entered and ran to its end in one input;
- an instance gone after an event of one of the rule's ``exit_on`` types (or a segment
  change the rule exits on) exited, counted by that type; one gone after its own timer
  ran the flow to its end completed;
- the ops the instance ran are found by walking the compiled rule from its position
  before (0 for an entry) to its position after, consuming the fires in order (a send
  op per fire of its channel; a branch either way); the wait it stops at is ``reached``.
  If no walk matches (the rule changed under an open instance), fires count at step -1
  (the rule as a whole): totals never depend on the walk.

Conversions count once per goal window (the core's ``_conversions``: one goal event
converts a rule once per customer however often it re-entered within the window), with
the goal event's ``total`` property as revenue (in cents). Delivery feedback events
naming a ``rule_id`` count against that rule; with a ``message_key`` matching a send of
the customer's open instance, against its step too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine.flows import attributed_step
from engine.output import Output
from engine.types import Event, Fire
from rules.compiler import Branch, CompiledRule, Jump, Send, Wait
from rules.ruleset import RuleSet
from state.analytics import HOUR_MS, Cell
from state.customer import CustomerState

__all__ = ["FEEDBACK", "Add", "Snapshot", "observe", "step_label"]

Snapshot = dict[str, tuple[str, int, str, int, int | None]] | None
"""rule id -> (instance id, version, variant, pc, due) of a customer's open flows."""

Add = Counter[Cell]
"""Where ``observe`` adds its counts (a customer's pending counts: engine/analytics/tally.py)."""

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

_SEGMENT_TYPES = ("segment_entered", "segment_exited")


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


def _walk(
    rule: CompiledRule, start: int, fires: list[Fire], end: tuple[int, bool] | None
) -> list[tuple[int, Fire | None]] | None:
    """The ops run from ``start``: [(pc, fire)] for sends, [(pc, None)] for the wait it
    stopped at. ``end``: (pc after, suspended at a wait?) of the instance after, None if
    it ended. None if no path matches."""
    ops = rule.ops
    n = len(ops)
    budget = [4 * n + 16]

    def go(pc: int, k: int, path: list[tuple[int, Fire | None]]) -> list[Any] | None:
        while True:
            budget[0] -= 1
            if budget[0] < 0:
                return None
            if pc >= n:
                return path if end is None and k == len(fires) else None
            op = ops[pc]
            if isinstance(op, Wait):
                if end is not None and end == (pc + 1, True) and k == len(fires):
                    return [*path, (pc, None)]
                return None  # a flow runs on past a wait only on its timer: not here
            if isinstance(op, Send):
                if k == len(fires) and end == (pc, True):
                    return path  # deferred by quiet hours at this send
                if k < len(fires) and fires[k].channel == op.channel:
                    pc, k, path = pc + 1, k + 1, [*path, (pc, fires[k])]
                    continue
                return None
            if isinstance(op, Jump):
                pc = op.target
                continue
            assert isinstance(op, Branch)
            taken = go(pc + 1, k, path)
            if taken is not None:
                return taken
            pc = op.target

    return go(start, 0, [])


def _outcome_metric(f: Fire) -> str:
    if f.outcome == "sent":
        return f"sent:{f.channel}"
    if f.outcome == "holdout":
        return "holdout"
    return "suppressed:" + f.outcome.removeprefix("suppressed_")


_Run = tuple[CompiledRule | None, tuple[tuple[str, int, str, int, str], ...]]
_runs: dict[tuple[Any, ...], _Run] = {}
_RUNS_MAX = 50_000
"""Memo of ``_count_run``'s cells (without the hour): the same few runs (a rule's
entry to its first wait, a timer to the next) recur for most customers. Entries name
the rule object they were walked on, so a reloaded rule is walked again."""


def _count_run(
    add: Add,
    rule: CompiledRule | None,
    rid: str,
    version: int,
    variant: str,
    start: int,
    fires: list[Fire],
    end: tuple[int, bool] | None,
    hour: int,
) -> None:
    key = (rid, version, variant, start, end, *[(f.variant, f.channel, f.outcome) for f in fires])
    run = _runs.get(key)
    if run is None or run[0] is not rule:
        run = (rule, _run_cells(rule, rid, version, variant, start, fires, end))
        if len(_runs) >= _RUNS_MAX:
            _runs.clear()
        _runs[key] = run
    for cell in run[1]:
        add[(*cell, hour)] += 1


def _run_cells(
    rule: CompiledRule | None,
    rid: str,
    version: int,
    variant: str,
    start: int,
    fires: list[Fire],
    end: tuple[int, bool] | None,
) -> tuple[tuple[str, int, str, int, str], ...]:
    path = _walk(rule, start, fires, end) if rule is not None else None
    if path is None:  # fires at the rule's level
        return tuple((rid, version, f.variant, -1, _outcome_metric(f)) for f in fires)
    cells: list[tuple[str, int, str, int, str]] = []
    for pc, fire in path:
        cells.append((rid, version, variant, pc, "reached"))
        if fire is not None:
            cells.append((rid, version, fire.variant, pc, _outcome_metric(fire)))
    return tuple(cells)


def _exit_type(rule: CompiledRule | None, out: Output, event: Event | None) -> str | None:
    if rule is None:
        return None
    types = {t for t, _ in rule.exits}
    if event is not None and event.type in types:
        return event.type
    for _, _, entered, _ in out.segment_changes:
        t = _SEGMENT_TYPES[0] if entered else _SEGMENT_TYPES[1]
        if t in types:
            return t
    return None


def observe(
    rs: RuleSet,
    pre: Snapshot,
    st: CustomerState | None,
    out: Output,
    event: Event | None,
    now: int,
    add: Add,
) -> None:
    """Count what ``out`` did (``event``: the input, None for a timer) at processing
    time ``now`` into ``add``. ``pre``: the customer's flows before the input."""
    hour = now // HOUR_MS
    post = st.flows if st is not None and st.flows else None
    by_rule: dict[str, list[Fire]] = {}
    for f in out.fires:
        by_rule.setdefault(f.rule_id, []).append(f)
    rids = set(by_rule)
    if pre:
        rids.update(pre)
    if post:
        rids.update(post)
    rules = rs.rules
    no_fires: list[Fire] = []
    for rid in sorted(rids) if len(rids) > 1 else rids:
        rule = rules.get(rid)
        a = pre.get(rid) if pre else None
        b = post.get(rid) if post else None
        fires = by_rule.get(rid, no_fires)
        b_end = None if b is None else (b.pc, b.due is not None)
        if a is not None and b is not None and a[0] == b.instance_id:
            if fires or a[3] != b.pc or (a[4] != b.due and b.due is not None):
                _count_run(add, rule, rid, a[1], a[2], a[3], fires, b_end, hour)
            continue
        if a is not None:  # closed: by its own timer, or an exit
            resumed = out.timer_due is not None and a[4] == out.timer_due and b is None
            why = None if resumed else _exit_type(rule, out, event)
            if why is not None:
                add[(rid, a[1], a[2], -1, f"exited:{why}", hour)] += 1
            elif resumed:
                _count_run(add, rule, rid, a[1], a[2], a[3], fires, None, hour)
                add[(rid, a[1], a[2], -1, "completed", hour)] += 1
                continue
            if b is None and not fires:
                continue
            if b is None:  # and it fired: entered again and ran to its end at once
                _entry(add, rule, rid, out, fires, None, hour)
                continue
        if b is not None:
            _entry(add, rule, rid, out, fires, b, hour)
        elif fires:
            _entry(add, rule, rid, out, fires, None, hour)
    if out.conversions:
        cents = _revenue_cents(event)
        for c in out.conversions:
            version = _version(rs, pre, post, c.rule_id)
            add[(c.rule_id, version, c.variant, -1, "conversions", hour)] += 1
            if cents:
                add[(c.rule_id, version, c.variant, -1, "revenue_cents", hour)] += cents
    if event is not None and event.type in FEEDBACK:
        _feedback(rs, add, st, event, hour)


def _entry(
    add: Add,
    rule: CompiledRule | None,
    rid: str,
    out: Output,
    fires: list[Fire],
    b: Any,
    hour: int,
) -> None:
    if b is not None:
        version, variant = int(b.version), str(b.variant)
        end: tuple[int, bool] | None = (b.pc, b.due is not None)
    else:
        variant = fires[0].variant
        version = next(
            (a.rule_version for a in out.actions if a.rule_id == rid),
            rule.version if rule is not None else 0,
        )
        end = None
    add[(rid, version, variant, -1, "entered", hour)] += 1
    _count_run(add, rule, rid, version, variant, 0, fires, end, hour)
    if b is None:
        add[(rid, version, variant, -1, "completed", hour)] += 1


def _version(rs: RuleSet, pre: Snapshot, post: Any, rid: str) -> int:
    if post and rid in post:
        return int(post[rid].version)
    if pre and rid in pre:
        return pre[rid][1]
    rule = rs.rules.get(rid)
    return rule.version if rule is not None else 0


def _revenue_cents(event: Event | None) -> int:
    if event is None:
        return 0
    total = event.properties.get("total")
    if isinstance(total, bool) or not isinstance(total, int | float):
        return 0
    return round(total * 100)


def _feedback(rs: RuleSet, add: Add, st: CustomerState | None, event: Event, hour: int) -> None:
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
            add[(rid, inst.version, inst.variant, pc, kind, hour)] += 1
            return
    variant = ""
    if inst is not None:
        variant = inst.variant
    elif st is not None and st.goals:
        variant = next((g[1] for g in st.goals if g[0] == rid), "")
    version = inst.version if inst is not None else rule.version if rule is not None else 0
    add[(rid, version, variant, -1, kind, hour)] += 1
