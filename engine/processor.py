"""The pure per-customer processor: state + one input (an event, or a timer that came due)
-> state changes, actions, fires, conversions and timer changes.

It does no I/O and reads no clock: callers pass ``now``. Timers go to the injected
:class:`~state.base.TimerStore` (one per open flow instance, id = customer + rule, so
re-scheduling replaces). Semantics (dedup, lateness, re-entry, limits) are documented in
docs/semantics.md; the stock recipes' scenario tests pin them down.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from typing import Any

import msgspec

from engine.flows import FlowRunner, seen_slot
from engine.identity import hand_over, merge, merge_event
from engine.intelligence.population import EMPTY, Population
from engine.output import Output, exit_metric
from engine.profile import apply_event
from engine.scope import RuleScope
from engine.segments import baseline, change_event, drop_removed, evaluate_segments
from engine.types import Conversion, Event
from rules.compiler import CompiledRule
from rules.expressions import ExpressionError
from rules.ruleset import RuleSet
from rules.segments import CompiledSegment
from state.base import StateStore, TimerStore
from state.customer import SEGMENT_TIMER, CustomerState, FlowInstance

__all__ = ["Processor", "assign_variant", "fingerprint", "kept_trigger"]

logger = logging.getLogger(__name__)

# message events (feedback on an action: opened, clicked, ...) that may carry ``rule_id``,
# ``template``, ``message_key``: an open flow records them by attribution (seen_slot)
_MESSAGE_TYPES = ("email_", "sms_", "push_")


def fingerprint(event_id: str) -> int:
    """A 64-bit fingerprint of an event id, stable across processes (CRC-32 and Adler-32
    side by side: a tenth of blake2b's cost; only the last 32 ids of one customer are
    compared, so collisions are negligible)."""
    raw = event_id.encode()
    return zlib.crc32(raw) << 32 | zlib.adler32(raw)


_pack_check = msgspec.msgpack.Encoder().encode


def kept_trigger(props: dict[str, Any], keys: tuple[str, ...] | None) -> dict[str, Any]:
    """What a flow keeps of its trigger's properties: the keys its rule reads (all when
    ``keys`` is None), less any value the state cannot be packed with (an integer beyond
    64 bits, nesting past the recursion limit), as if the event had not carried it. The
    properties are free-form: without this one such value in a stored flow would fail
    every checkpoint of its customer."""
    kept = props if keys is None else {k: props[k] for k in keys if k in props}
    return kept if _packs(kept) else {k: v for k, v in kept.items() if _packs(v)}


def _packs(value: Any) -> bool:
    try:
        _pack_check(value)
    except (OverflowError, RecursionError, msgspec.EncodeError):
        return False
    return True


_FACTS = frozenset({"order_completed", "order_refunded"})


def _fact(etype: str, props: dict[str, Any]) -> str:
    """What makes an order or a refund the same one: its ``order_id``; a refund's
    ``refund_id`` (without one: the order id and the amount)."""
    if etype == "order_completed":
        return f"order\0{props['order_id']}"
    refund = props.get("refund_id")
    if refund is not None:
        return f"refund\0{refund}"
    amount = props.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        amount = None
    return f"refund\0{props['order_id']}\0{None if amount is None else float(amount)}"


def assign_variant(customer_id: str, rule: CompiledRule) -> str:
    """Deterministic experiment arm for (customer, rule): ``holdout`` or a variant name."""
    if rule.holdout_upto == 0 and len(rule.variants) == 1:
        return rule.variants[0].name
    digest = hashlib.blake2b(f"{rule.id}\0{customer_id}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 10_000
    if bucket < rule.holdout_upto:
        return "holdout"
    for v in rule.variants:
        if bucket < v.upto:
            return v.name
    return rule.variants[-1].name


class Processor:
    """Runs a rule set over customer states. Swap ``ruleset`` to deploy new rules, and
    ``population`` to refresh what ``customer.rfm`` / ``customer.predicted`` are computed
    against (engine/intelligence/population.py; default: nothing, both null)."""

    def __init__(self, ruleset: RuleSet, store: StateStore, timers: TimerStore) -> None:
        self.store = store
        self.timers = timers
        self._pop = EMPTY
        # note what flows do in each Output (``Output.notes``): the runtime counts
        # campaign analytics from them (engine/analytics/observe.py)
        self.notes = False
        self.ruleset = ruleset

    @property
    def population(self) -> Population:
        return self._pop

    @population.setter
    def population(self, population: Population) -> None:
        self._pop = population
        self._runner.population = population

    @property
    def ruleset(self) -> RuleSet:
        return self._rs

    @ruleset.setter
    def ruleset(self, rs: RuleSet) -> None:
        self._rs = rs
        self._consent = dict(rs.settings.default_consent)
        self._runner = FlowRunner(rs, self.timers, self._pop)
        self._baseline = baseline(rs, self._consent) if rs.segments else ()
        # one customer's timers due at the same instant fire in priority order, then rule
        # id (docs/semantics.md), so a low-priority rule cannot take a channel cap first
        ranked = sorted(rs.rules.values(), key=CompiledRule.sort_key)
        self.timers.order({r.id: i for i, r in enumerate(ranked)})

    # --- events ------------------------------------------------------------------
    def on_event(self, ev: Event, now: int, ts: int | None = None) -> Output:
        """Apply one event at processing time ``now`` (``ts``: the event time in ms, when
        the caller already computed it)."""
        out = Output(ev.customer_id)
        if self.notes:
            out.notes = []
        rs = self._rs
        if ts is None:
            ts = ev.ts
        if ts > now + rs.future_tolerance:
            ts = now
            out.future = True
        st = self.store.get(ev.customer_id)
        created = st is None
        if st is None:
            st = CustomerState(ev.customer_id, ts, ts)
        if not st.remember(fingerprint(ev.event_id), now, rs.lateness):
            out.duplicate = True
            return out
        etype = ev.type
        if st.merged_into is not None or etype == "customer_aliased":
            self._identity(st, ev, ts, out)
            if created:
                self.store.put(st)
            return out
        if etype in _FACTS and not st.first_fact(fingerprint(_fact(etype, ev.properties))):
            out.duplicate = True  # an order (refund) counted before under another event id
            return out
        if etype == "customer_merged":
            self._merge(st, ev, out)
        if st.segments and st.segments_digest != rs.segments_digest:
            drop_removed(rs, st)  # a segment removed by a deploy stops at once
        out.lateness = now - ts if now > ts else 0
        out.too_late = out.lateness > rs.lateness
        plan = rs.plans.get(etype, rs.default_plan)
        apply_event(st, ev, ts, now, plan.counted, rs.settings.addresses)
        flows = st.flows
        if flows:
            message = etype.startswith(_MESSAGE_TYPES)  # may name the action it is about
            for rule_id in plan.seen:
                inst = flows.get(rule_id)
                if inst is not None and ts >= inst.started_at:
                    slot = etype
                    if message:  # attributed by the flow's own version's steps
                        slot = seen_slot(
                            rs.flow_rule(inst), inst, st.customer_id, etype, ev.properties
                        )
                    seen = inst.seen
                    if seen is None:
                        inst.seen = {slot: ts}
                    elif seen.get(slot, -1) < ts:
                        seen[slot] = ts
            if plan.exits:
                self._exits(st, ev, ts, now, plan.exits, out)
        if plan.goal and st.goals:
            self._conversions(st, ev, ts, now, out)
        if not out.too_late:
            for rule in plan.triggers:
                self._trigger(rule, st, ev, ts, now, out)
        if rs.segments:
            # a new customer starts from the rule set's baseline membership
            only = rs.segment_plan.get(etype, rs.segments_any)
            start = self._baseline if created else ()
            recount = etype == "customer_merged"
            if only or start:
                counted = (etype, ts) if etype in rs.segment_count_types else None
                self._segment_changes(st, now, out, only, recount, counted, start)
            if created or recount:  # every segment evaluated (a new one: from the baseline)
                st.segments_digest = rs.segments_digest
        if created:
            self.store.put(st)
        return out

    def _segment_changes(
        self,
        st: CustomerState,
        now: int,
        out: Output,
        only: tuple[CompiledSegment, ...] | None = None,
        recount: bool = True,
        counted: tuple[str, int] | None = None,
        start: tuple[str, ...] = (),
        timer: bool = False,
    ) -> None:
        """Re-evaluate the segments (``only``: those the input can have changed); each
        entry or exit runs the rules' exits and triggers like an event at ``now``
        (engine/segments.py)."""
        rs = self._rs
        changes = evaluate_segments(
            rs, st, now, self._consent, self.timers, out, only, recount, counted, start,
            self._pop, timer,
        )  # fmt: skip
        cid = st.customer_id
        record = out.segment_changes.append
        listened = rs.segment_inputs
        for seg_id, entered in changes:
            record((cid, seg_id, entered, now))
            if (seg_id, entered) not in listened:
                continue  # no rule triggers or exits on it: no input to build
            ev = change_event(cid, seg_id, entered, now)
            plan = rs.plans.get(ev.type)
            if plan is None:
                continue
            if plan.exits and st.flows:
                self._exits(st, ev, now, now, plan.exits, out)
            for rule in plan.triggers:
                self._trigger(rule, st, ev, now, now, out)

    def _timed(self, st: CustomerState, due: int) -> tuple[CompiledSegment, ...]:
        """The segments a segment timer due at ``due`` evaluates: those reading counts (or
        anything), plus those on RFM: the RFM-group ones always (they read one group
        lookup), others only if R drops at ``due``; and those on predictions only if
        their searched turn has come (engine/segment_flips.py)."""
        rs = self._rs
        timed = rs.segments_timed_counts
        if rs.segments_timed_rfm and (
            # RFM-group segments: their one group lookup costs less than finding out
            # whether it changes at ``due``
            rs.segments_rfm_groups or self._pop.next_rfm_change(st, due - 1) == due
        ):
            timed = rs.segments_timed_all
        flip = st.segments_flip
        if rs.segments_predicted and flip is not None and flip <= due:
            timed = (*timed, *(g for g in rs.segments_predicted if g not in timed))
        return timed

    def backfill_segments(self, customer_id: str, now: int) -> Output:
        """Evaluate every segment of the rule set for a customer whose state was last
        evaluated under other segments (``segments_digest`` differs: a segment added,
        changed or removed since), at processing time ``now``, with the segment timer
        worked out anew; the state is then marked with the rule set's digest, so a second
        call does nothing. The runtime calls it for existing customers after a start or a
        deploy (engine/embedded/segment_backfill.py).

        Entries and exits are inputs for the rules at ``now`` like any segment change: a
        customer already matching a segment added by a deploy enters it at the backfill's
        time, so a flow on ``segment_entered`` reaches the segment's existing members.
        Memberships of removed segments are dropped without an exit. Nothing happens for an
        unknown customer, an id merged into another (its state is a redirect) or a state
        already current."""
        out = Output(customer_id)
        if self.notes:
            out.notes = []
        st = self.store.get(customer_id)
        if st is None or st.merged_into is not None:
            return out
        if st.segments_digest == self._rs.segments_digest:
            return out
        self._segment_changes(st, now, out)
        return out

    def _identity(self, st: CustomerState, ev: Event, ts: int, out: Output) -> None:
        """An event for a redirect (an id merged into another) is forwarded there; a
        ``customer_aliased`` hands the state over (engine/identity.py). An alias of an id
        already merged is ignored: a shared device's anonymous id does not join two known
        customers."""
        if ts > st.last_seen:
            st.last_seen = ts
        target = st.merged_into
        if target is not None:
            if ev.type != "customer_aliased":
                out.forwards.append(msgspec.structs.replace(ev, customer_id=target))
            return
        target = str(ev.properties["user_id"])
        if target == st.customer_id:
            return
        handed = hand_over(st, self.timers)
        st.merged_into = target
        out.forwards.append(merge_event(ev, target, handed))

    def _merge(self, st: CustomerState, ev: Event, out: Output) -> None:
        try:
            other = CustomerState.from_row(ev.properties["state"])
        except (msgspec.ValidationError, KeyError, TypeError) as err:
            out.errors.append(f"customer_merged {ev.event_id}: bad state: {err}")
            return
        merge(st, other, self.timers)

    def _exits(
        self,
        st: CustomerState,
        ev: Event,
        ts: int,
        now: int,
        rules: tuple[CompiledRule, ...],
        out: Output,
    ) -> None:
        flows = st.flows
        assert flows is not None
        for rule in rules:
            inst = flows.get(rule.id)
            if inst is None or ts < inst.started_at:
                continue
            if inst.version != rule.version:  # an open flow leaves on its version's exits
                rule = self._rs.flow_rule(inst) or rule
            for etype, flt in rule.exits:
                if etype == ev.type and (
                    flt is None
                    or self._test(flt, RuleScope(st, now, self._consent, ev, None, self._pop), out)
                ):
                    if out.notes is not None:
                        out.notes.append(
                            (inst.rule_id, inst.version, inst.variant, -1, exit_metric(ev.type))
                        )
                    self._runner.close(st, inst)
                    break

    def _conversions(self, st: CustomerState, ev: Event, ts: int, now: int, out: Output) -> None:
        """A goal event inside an open goal window converts it (once); windows that ended
        longer ago than the allowed lateness are dropped."""
        assert st.goals is not None
        horizon = now - self._rs.lateness
        keep = []
        for g in st.goals:
            rule_id, variant, etype, start, deadline = g
            if etype == ev.type and start <= ts <= deadline:
                out.conversions.append(
                    Conversion(rule_id, variant, st.customer_id, ev.event_id, ts)
                )
            elif deadline >= horizon:
                keep.append(g)
        st.goals = keep or None

    def _test(self, expr: Any, scope: RuleScope, out: Output) -> bool:
        try:
            return bool(expr.test(scope))
        except ExpressionError as err:
            out.errors.append(f"{expr.source}: {err}")
            return False

    def _trigger(
        self, rule: CompiledRule, st: CustomerState, ev: Event, ts: int, now: int, out: Output
    ) -> None:
        inst = st.flows.get(rule.id) if st.flows else None
        if inst is not None:
            if not rule.restart:
                return
        elif (
            rule.reentry != "always"
            and st.entries
            and rule.id in st.entries
            and (rule.reentry == "once" or ts - st.entries[rule.id] < rule.reentry_period)
        ):
            return
        if rule.trigger_filter is not None or rule.when is not None:
            scope = RuleScope(st, now, self._consent, ev, None, self._pop)
            if rule.trigger_filter is not None and not self._test(rule.trigger_filter, scope, out):
                return
            if rule.when is not None and not self._test(rule.when, scope, out):
                return
        if inst is not None:  # on_retrigger: restart
            if out.notes is not None:
                out.notes.append((rule.id, inst.version, inst.variant, -1, "exited:restarted"))
            self._runner.close(st, inst)
        variant = assign_variant(st.customer_id, rule)
        trigger = kept_trigger(ev.properties, rule.trigger_keys) if rule.uses_trigger else None
        inst = FlowInstance(rule.id, rule.version, ev.event_id, ts, variant, trigger)
        if st.flows is None:
            st.flows = {}
        st.flows[rule.id] = inst
        if out.notes is not None:
            out.notes.append((rule.id, rule.version, variant, -1, "entered"))
        if rule.reentry != "always":  # only these policies ever read it back
            if st.entries is None:
                st.entries = {}
            st.entries[rule.id] = ts
        if rule.goal is not None and self._open_goal(st, rule, variant, ts, now):
            out.exposures.append((rule.id, variant))
        self._runner.run(rule, st, inst, ts, now, out)

    def _open_goal(
        self, st: CustomerState, rule: CompiledRule, variant: str, ts: int, now: int
    ) -> bool:
        """Open the goal window ``[ts, ts + within]``: an exposure (True). A window of the
        same rule still open at ``ts`` is extended instead (False: the same exposure; one
        goal event converts a rule once, however often the customer re-entered it);
        windows that ended longer ago than the allowed lateness are dropped, so a customer
        who never converts holds a bounded list."""
        assert rule.goal is not None
        etype, within = rule.goal
        horizon = now - self._rs.lateness
        start = ts
        keep = []
        extended = False
        for g in st.goals or ():
            if g[0] == rule.id and g[4] >= ts:
                start = min(start, g[3])
                extended = True
            elif g[4] >= horizon:
                keep.append(g)
        keep.append((rule.id, variant, etype, start, ts + within))
        st.goals = keep
        return not extended

    # --- timers ------------------------------------------------------------------
    def on_timer(self, customer_id: str, rule_id: str, due: int, now: int) -> Output:
        """Resume the flow instance whose timer came due, on the rule version it entered
        with (``RuleSet.flow_rule``). A timer whose instance is gone (customer erased)
        does nothing; one whose rule or version is gone (removed by a deploy, or past
        ``versions_kept``) ends the flow."""
        out = Output(customer_id, due)
        if self.notes:
            out.notes = []
        st = self.store.get(customer_id)
        if rule_id == SEGMENT_TIMER:
            # the timer fires at or after ``segments_due`` (later when the instants
            # before change no membership: engine/segments.py _first_change)
            if st is not None and st.segments_due is not None and st.segments_due <= due:
                out.lateness = now - due if now > due else 0
                st.segments_due = None  # fired: evaluating schedules the next one
                # with the state unchanged only time can move a segment: those reading
                # count() windows or anything else (predictions); all of them if the
                # state was evaluated under another segment set
                rs = self._rs
                timed = self._timed(st, due) if st.segments_digest == rs.segments_digest else None
                self._segment_changes(st, now, out, timed, timer=True)
            return out
        inst = st.flows.get(rule_id) if st is not None and st.flows else None
        if st is None or inst is None or inst.due != due:
            return out
        out.lateness = now - due if now > due else 0
        inst.due = None
        rule = self._rs.flow_rule(inst)
        if rule is None:
            if out.notes is not None:
                out.notes.append((inst.rule_id, inst.version, inst.variant, -1, "completed"))
            self._runner.close(st, inst)
            return out
        self._runner.run(rule, st, inst, due, now, out)
        return out
