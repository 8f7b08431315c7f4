"""Running a flow instance through its compiled ops until it waits or ends.

Send-time checks, in order: experiment holdout (no send, counted), quiet hours in the
customer's zone (defer to the end of the quiet period, then check again), consent for the
channel, the rule's per-customer cap, the channel's cap across rules. A suppressed send is
counted and the flow moves on to its next step.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.intelligence.population import EMPTY, Population
from engine.localtime import in_range, next_local
from engine.output import Output, send_metric
from engine.scope import RuleScope
from engine.types import Action, Fire
from rules.compiler import Branch, CompiledRule, Jump, Send, Wait
from rules.expressions import ExpressionError
from rules.ruleset import RuleSet
from rules.segments import test_condition
from state.base import TimerStore
from state.customer import CustomerState, FlowInstance

__all__ = ["FlowRunner", "address", "attributed_step", "idempotency_key", "seen_slot"]


def idempotency_key(rule_id: str, version: int, customer_id: str, instance: str, pc: int) -> str:
    """Stable across replays: the same input always yields the same key."""
    raw = f"{rule_id}\0{version}\0{customer_id}\0{instance}\0{pc}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def attributed_step(
    rule: CompiledRule, inst: FlowInstance, customer_id: str, key: str
) -> int | None:
    """The pc of the send op of ``inst`` whose action had idempotency key ``key`` (what
    provider feedback carries as ``message_key``), or None: another instance's or
    another rule's action."""
    for pc, op in enumerate(rule.ops):
        if isinstance(op, Send) and key == idempotency_key(
            inst.rule_id, inst.version, customer_id, inst.instance_id, pc
        ):
            return pc
    return None


def _templates(rule: CompiledRule, op: Send) -> set[str]:
    """The templates a send step can send: its own and the experiment arms' overrides."""
    out = {op.template}
    for v in rule.variants:
        override = v.steps.get(op.name) if op.name is not None else None
        if override is not None and override[0]:
            out.add(override[0])
    return out


def seen_slot(
    rule: CompiledRule | None, inst: FlowInstance, customer_id: str, etype: str, props: Any
) -> str:
    """Where an open instance records a message event (``seen``; docs/semantics.md):
    ``etype`` when the event names no action (unattributed: today's meaning),
    ``etype\0step`` when it is attributed to the action that named step of this instance
    sent (by ``message_key``; without a key, by ``rule_id`` and ``template``, the latest
    step already run that sends that template), ``etype\0`` when attributed to this
    instance's rule but no step is known, ``etype\0*`` when attributed to anything else
    (another rule, another instance: last week's reminder of the same rule)."""
    key = props.get("message_key")
    rid = props.get("rule_id")
    if not (isinstance(key, str) and key) and not (isinstance(rid, str) and rid):
        return etype
    if rule is None:
        return f"{etype}\0*"
    if isinstance(key, str) and key:
        pc = attributed_step(rule, inst, customer_id, key)
        if pc is None:
            return f"{etype}\0*"
        op = rule.ops[pc]
        assert isinstance(op, Send)
        return f"{etype}\0{op.name or ''}"
    if rid != inst.rule_id:
        return f"{etype}\0*"
    template = props.get("template")
    if isinstance(template, str):
        for pc in range(min(inst.pc, len(rule.ops)) - 1, -1, -1):
            op = rule.ops[pc]
            if isinstance(op, Send) and op.name and template in _templates(rule, op):
                return f"{etype}\0{op.name}"
    return f"{etype}\0"


def address(st: CustomerState, channel: str, attribute: str | None) -> str:
    """The customer's ``channel`` address, in profile attribute ``attribute`` ("" if
    none, or if a hard bounce marked that very address undeliverable: a new address
    clears it)."""
    if attribute is None or not st.attributes:
        return ""
    value = st.attributes.get(attribute)
    if not isinstance(value, str) or not value:
        return ""
    if st.undeliverable and st.undeliverable.get(channel) == value:
        return ""
    return value


def _mark(inst: FlowInstance, name: str, t: int) -> None:
    if inst.marks is None:
        inst.marks = {name: t}
    else:
        inst.marks[name] = t


class FlowRunner:
    """Executes ops for one rule set; holds no per-customer data. ``population``: the
    processor's, which it keeps up to date (engine/processor.py)."""

    def __init__(
        self, ruleset: RuleSet, timers: TimerStore, population: Population = EMPTY
    ) -> None:
        self.rs = ruleset
        self.population = population
        self.timers = timers
        self.consent = dict(ruleset.settings.default_consent)
        self.default_tz = ruleset.settings.default_timezone

    def close(self, st: CustomerState, inst: FlowInstance) -> None:
        """End an instance: forget it and cancel its timer."""
        if inst.due is not None:
            self.timers.cancel(st.customer_id, inst.rule_id)
            inst.due = None
        if st.flows is not None:
            st.flows.pop(inst.rule_id, None)
            if not st.flows:
                st.flows = None

    def _suspend(self, st: CustomerState, inst: FlowInstance, due: int) -> None:
        inst.due = due
        self.timers.schedule(st.customer_id, inst.rule_id, due)

    def run(
        self,
        rule: CompiledRule,
        st: CustomerState,
        inst: FlowInstance,
        t: int,
        now: int,
        out: Output,
    ) -> None:
        """Run from ``inst.pc``. ``t`` is the flow's own time (trigger event time, or the
        due time of the timer that resumed it): waits count from it, so replays give the
        same deadlines. Sends happen at ``now``."""
        ops = rule.ops
        n = len(ops)
        notes = out.notes
        while inst.pc < n:
            op = ops[inst.pc]
            if isinstance(op, Wait):
                if op.name:
                    _mark(inst, op.name, t)
                if notes is not None:
                    notes.append((rule.id, inst.version, inst.variant, inst.pc, "reached"))
                inst.pc += 1
                if op.ms is not None:
                    due = t + op.ms
                else:
                    assert op.until_minute is not None
                    due = next_local(t, st.timezone or self.default_tz, op.until_minute)
                self._suspend(st, inst, due)
                return
            if isinstance(op, Send):
                fired = len(out.fires)
                sent = self._send(rule, st, inst, op, now, out)
                if notes is not None and len(out.fires) > fired:
                    fire = out.fires[-1]
                    rid, version, pc = rule.id, inst.version, inst.pc
                    notes.append((rid, version, inst.variant, pc, "reached"))
                    notes.append((rid, version, fire.variant, pc, send_metric(fire)))
                if not sent:  # deferred by quiet hours, or send_if ended the flow
                    if notes is not None and len(out.fires) > fired:
                        notes.append((rule.id, inst.version, inst.variant, -1, "exited:send_if"))
                    return
                inst.pc += 1
            elif isinstance(op, Branch):
                scope = RuleScope(st, now, self.consent, flow=inst, population=self.population)
                try:
                    ok = op.expr.test(scope)
                except ExpressionError as err:
                    out.errors.append(f"{rule.id}: {op.expr.source}: {err}")
                    ok = False
                inst.pc = inst.pc + 1 if ok else op.target
            else:
                assert isinstance(op, Jump)
                inst.pc = op.target
        if notes is not None:
            notes.append((rule.id, inst.version, inst.variant, -1, "completed"))
        self.close(st, inst)

    def _blocked(self, rule: CompiledRule, st: CustomerState, channel: str, now: int) -> str | None:
        consent = self.consent.get(channel, False)
        if st.consent is not None and channel in st.consent:
            consent = st.consent[channel]
        if not consent:
            return "suppressed_consent"
        sends = st.sends
        if sends:
            if rule.cap is not None:
                limit, period = rule.cap
                if sum(1 for t, r, _ in sends if r == rule.id and t > now - period) >= limit:
                    return "suppressed_rule_cap"
            cap = self.rs.channel_caps.get(channel)
            if cap is not None:
                limit, period = cap
                if sum(1 for t, _, c in sends if c == channel and t > now - period) >= limit:
                    return "suppressed_channel_cap"
        return None

    def _send(
        self,
        rule: CompiledRule,
        st: CustomerState,
        inst: FlowInstance,
        op: Send,
        now: int,
        out: Output,
    ) -> bool:
        """Returns False when the send was deferred (quiet hours: the flow waits) or the
        rule's ``send_if`` no longer holds (the flow has ended)."""
        variant = inst.variant
        if rule.send_if is not None:
            scope = RuleScope(st, now, self.consent, flow=inst, population=self.population)
            try:
                ok = test_condition(rule.send_if, rule.send_if_terms, scope)
            except ExpressionError as err:
                out.errors.append(f"{rule.id}: send_if: {err}")
                ok = False
            if not ok:
                out.fires.append(Fire(rule.id, variant, op.channel, "skipped_condition", now))
                self.close(st, inst)
                return False
        if variant == "holdout":
            outcome: str | None = "holdout"
        else:
            quiet = rule.quiet
            tz = st.timezone or self.default_tz
            if quiet is not None and op.channel != "webhook" and in_range(now, tz, quiet):
                self._suspend(st, inst, next_local(now, tz, quiet[1]))
                return False
            outcome = self._blocked(rule, st, op.channel, now)
        if op.name:
            _mark(inst, op.name, now)
        if outcome is not None:
            out.fires.append(Fire(rule.id, variant, op.channel, outcome, now))
            return True
        params: dict[str, Any] = dict(op.params)
        template = op.template
        dynamic = op.dynamic
        if op.name is not None:
            plan = next((v for v in rule.variants if v.name == variant), None)
            override = plan.steps.get(op.name) if plan is not None else None
            if override is not None:
                template = override[0] or template
                over_static, over_dynamic = override[1], override[2]
                params.update(over_static)
                if over_static or over_dynamic:  # the variant's value wins, static or not
                    replaced = set(over_static).union(n for n, _ in over_dynamic)
                    dynamic = (*(d for d in dynamic if d[0] not in replaced), *over_dynamic)
        if dynamic:
            scope = RuleScope(st, now, self.consent, flow=inst, population=self.population)
            for name, expr in dynamic:
                try:
                    params[name] = expr.evaluate(scope)
                except ExpressionError as err:
                    out.errors.append(f"{rule.id}: param {name}: {err}")
                    params[name] = None
        key = idempotency_key(rule.id, inst.version, st.customer_id, inst.instance_id, inst.pc)
        to = address(st, op.channel, self.rs.settings.addresses.get(op.channel))
        if not to and self.rs.needs_address(rule.id, op.channel):
            out.fires.append(Fire(rule.id, variant, op.channel, "suppressed_no_address", now))
            return True
        out.actions.append(
            Action(
                rule.id,
                inst.version,
                st.customer_id,
                op.channel,
                template,
                params,
                variant,
                key,
                now,
                to,
            )
        )
        out.fires.append(Fire(rule.id, variant, op.channel, "sent", now))
        if rule.cap is None and op.channel not in self.rs.channel_caps:
            return True  # no cap will ever count this send
        sends = st.sends
        horizon = now - self.rs.max_cap_period
        if sends is None:
            st.sends = [(now, rule.id, op.channel)]
        else:
            sends.append((now, rule.id, op.channel))
            if sends[0][0] <= horizon:
                st.sends = [s for s in sends if s[0] > horizon]
        return True
