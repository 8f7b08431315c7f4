"""Compiling a RuleSpec into a CompiledRule: expressions compiled, durations in ms, the
step tree flattened into a list of ops with jumps (an ``if`` becomes a conditional jump
over its ``then`` ops), so an open flow's position is one integer, ``pc``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from rules.durations import parse_cap, parse_clock, parse_duration, parse_range
from rules.exceptions import RuleError
from rules.expressions import Expression, ExpressionError
from rules.fields import (
    ANY,
    CHANNELS,
    CUSTOMER,
    LEAF,
    Shape,
    check_selections,
    event_shape,
    known_properties,
    lint_warnings,
)
from rules.loader import PathKey, Positions
from rules.segments import Term, fast_terms
from rules.spec import IfStep, RuleSpec, SendStep, Settings, Step, Variant, WaitStep, WaitUntil
from state.windows import WINDOWS

__all__ = ["Branch", "CompiledRule", "Jump", "Op", "Send", "Wait", "compile_rule"]

_TEMPLATE = "{{"


@dataclass(frozen=True, slots=True)
class Wait:
    ms: int | None  # a duration, or None with until_minute set
    until_minute: int | None
    name: str | None


@dataclass(frozen=True, slots=True)
class Send:
    channel: str
    template: str
    params: dict[str, Any]
    dynamic: tuple[tuple[str, Expression], ...]  # params computed at send time
    name: str | None
    within_ms: int | None = None  # deliver_within: the send-by deadline after fire_at


@dataclass(frozen=True, slots=True)
class Branch:
    """Jump to ``target`` when ``expr`` is not true."""

    expr: Expression
    target: int


@dataclass(frozen=True, slots=True)
class Jump:
    target: int


Op = Wait | Send | Branch | Jump


@dataclass(frozen=True, slots=True)
class VariantPlan:
    name: str
    upto: int  # cumulative bucket bound out of 10,000
    # step name -> (template override or None, static params and "{{ expr }}" params,
    # each replacing the step's param of the same name)
    steps: dict[str, tuple[str | None, dict[str, Any], tuple[tuple[str, Expression], ...]]]


@dataclass(frozen=True)
class CompiledRule:
    """A rule ready to run. Immutable; shared by every customer's flow instances."""

    id: str
    version: int
    priority: int
    trigger: str
    trigger_filter: Expression | None
    when: Expression | None
    restart: bool
    reentry: str
    reentry_period: int
    exits: tuple[tuple[str, Expression | None], ...]
    ops: tuple[Op, ...]
    cap: tuple[int, int] | None
    quiet: tuple[int, int] | None
    holdout_upto: int  # buckets [0, holdout_upto) are the holdout
    variants: tuple[VariantPlan, ...]
    goal: tuple[str, int] | None
    counted: frozenset[str]
    digest: str
    uses_trigger: bool  # some expression reads ``trigger``: keep the trigger's properties
    # event types the flow's seen*() calls name: what an open instance records
    # in ``seen`` (None: every type, a call's argument is not a literal)
    seen_types: frozenset[str] | None = frozenset()
    # the trigger properties the expressions select (``trigger.product_id``): all a flow
    # keeps of them (None: the whole map, an expression uses ``trigger`` otherwise)
    trigger_keys: tuple[str, ...] | None = None  # sorted: the kept map's order is stable
    # re-checked before every send (holdout included); false: the flow ends there,
    # counted ``skipped_condition``
    send_if: Expression | None = None
    send_if_terms: tuple[Term, ...] | None = None  # its simple comparisons (rules/segments.py)

    def sort_key(self) -> tuple[int, str]:
        return (-self.priority, self.id)


def _collected(message: str) -> bool:
    """Inside rules.fields.lenient_fields (a stored rule set loading): note ``message`` as
    a lint warning and report no error."""
    sink = lint_warnings()
    if sink is None:
        return False
    sink.append(message)
    return True


class _Compiler:
    def __init__(self, spec: RuleSpec, pos: Positions, settings: Settings) -> None:
        self.spec = spec
        self.pos = pos
        self.settings = settings
        self.ops: list[Op] = []
        self.errors: list[RuleError] = []
        self.names: dict[str, int] = {}
        self.counted: set[str] = set()
        self.pending_seen: list[tuple[PathKey, str, int]] = []
        self.uses_trigger = False
        self.trigger_keys: set[str] | None = set()
        self.seen: set[str] | None = set()

    def expr(
        self,
        source: str,
        key: PathKey,
        *,
        in_flow: bool,
        event_type: str | None = None,
        shift: int = 0,
    ) -> Expression | None:
        """Compile one expression at ``key``: in a step (``in_flow``), or in a trigger
        filter, ``when`` or exit filter where ``event`` is an event of ``event_type``;
        ``shift``: where the expression starts in the scalar (after a param's ``{{ ``)."""
        problems: list[ExpressionError] = []
        try:
            e = Expression(source)
        except ExpressionError as err:
            problems = [err, *err.others]
            e = None
        if e is not None:
            problems = [
                ExpressionError.at(source, p.offset, p.message)
                for p in check_selections(e.selections, self.shapes(in_flow, event_type))
            ]
            if in_flow and "event" in e.variables and not _collected("'event' in a step"):
                at = next((sel.offset for sel in e.selections if sel.root == "event"), 0)
                problems.append(
                    ExpressionError.at(
                        source,
                        at,
                        "'event' is only available in trigger filters, when and exit "
                        "filters (in steps: trigger.<property>, the starting event's "
                        "properties)",
                    )
                )
        for problem in problems:
            column = problem.column + (shift if problem.line == 1 else 0)
            self.errors.append(
                self.pos.error(key, f"expression: {problem.message}", column, problem.line)
            )
        if e is None:
            return None
        for fn, arg, arg2 in e.calls:
            if fn == "count":
                self.counted.add(arg)
                if arg2 is not None and arg2 not in WINDOWS:
                    self.errors.append(
                        self.pos.error(
                            key, f"count(): window {arg2!r} is not one of {', '.join(WINDOWS)}"
                        )
                    )
            elif not in_flow:
                self.errors.append(self.pos.error(key, f"{fn}() is only available in steps"))
            else:
                if self.seen is not None:
                    self.seen.add(arg)
                if fn in ("seen_since", "seen_any_since") and arg2 is not None:
                    self.pending_seen.append((key, arg2, len(self.ops)))
        if e.dynamic_calls:
            self.seen = None
        if "trigger" in e.variables:
            self.uses_trigger = True
            keys = e.keys["trigger"]
            if keys is None:
                self.trigger_keys = None
            elif self.trigger_keys is not None:
                self.trigger_keys |= keys
        if not in_flow and "trigger" in e.variables:
            self.errors.append(self.pos.error(key, "'trigger' is only available in steps"))
        return e

    def shapes(self, in_flow: bool, event_type: str | None) -> dict[str, Shape]:
        """What the rule's own context knows of its variables beyond rules.fields'
        BASE_SHAPES: the consent channels (the stock ones and the settings' defaults),
        ``event`` of ``event_type``, and ``trigger``, when its type's properties are known
        (a segment change)."""
        channels = dict.fromkeys((*CHANNELS, *self.settings.default_consent), LEAF)
        shapes: dict[str, Shape] = {"customer": {**CUSTOMER, "consent": channels}}
        if in_flow:
            props = known_properties(self.spec.trigger.type)
            shapes["trigger"] = ANY if props is None else dict.fromkeys(props, ANY)
        else:
            shapes["event"] = event_shape(event_type)
        return shapes

    def steps(self, steps: list[Step], key: PathKey) -> None:
        for i, step in enumerate(steps):
            k = (*key, i)
            name = step.name
            if name is not None:
                if name in self.names:
                    self.errors.append(
                        self.pos.error((*k, "name"), f"duplicate step name {name!r}")
                    )
                self.names[name] = len(self.ops)
            if isinstance(step, WaitStep):
                if isinstance(step.wait, WaitUntil):
                    self.ops.append(Wait(None, parse_clock(step.wait.until), name))
                else:
                    self.ops.append(Wait(parse_duration(step.wait), None, name))
            elif isinstance(step, SendStep):
                branch_at = None
                if step.if_ is not None:
                    cond = self.expr(step.if_, (*k, "if"), in_flow=True)
                    branch_at = len(self.ops)
                    self.ops.append(Branch(cond or Expression("false"), -1))
                self.ops.append(self.send(step, k))
                if branch_at is not None:
                    b = self.ops[branch_at]
                    assert isinstance(b, Branch)
                    self.ops[branch_at] = Branch(b.expr, len(self.ops))
            else:
                self.branch(step, k)

    def branch(self, step: IfStep, k: PathKey) -> None:
        cond = self.expr(step.if_, (*k, "if"), in_flow=True) or Expression("false")
        at = len(self.ops)
        self.ops.append(Branch(cond, -1))
        self.steps(step.then, (*k, "then"))
        if step.else_:
            jump_at = len(self.ops)
            self.ops.append(Jump(-1))
            self.ops[at] = Branch(cond, len(self.ops))
            self.steps(step.else_, (*k, "else"))
            self.ops[jump_at] = Jump(len(self.ops))
        else:
            self.ops[at] = Branch(cond, len(self.ops))

    def params(
        self, params: dict[str, Any], key: PathKey
    ) -> tuple[dict[str, Any], tuple[tuple[str, Expression], ...]]:
        """Split send params into static values and ``"{{ expr }}"`` templates (CEL)."""
        static: dict[str, Any] = {}
        dynamic: list[tuple[str, Expression]] = []
        for pname, value in params.items():
            if isinstance(value, str) and value.startswith(_TEMPLATE) and value.endswith("}}"):
                inner = value[2:-2]
                shift = 2 + len(inner) - len(inner.lstrip())
                e = self.expr(inner.strip(), (*key, pname), in_flow=True, shift=shift)
                if e is not None:
                    dynamic.append((pname, e))
            else:
                static[pname] = value
        return static, tuple(dynamic)

    def send(self, step: SendStep, k: PathKey) -> Send:
        static, dynamic = self.params(step.send.params, (*k, "send", "params"))
        within = step.send.deliver_within
        return Send(
            step.send.channel,
            step.send.template,
            static,
            dynamic,
            step.name,
            None if within is None else parse_duration(within),
        )

    def variants(self) -> tuple[int, tuple[VariantPlan, ...]]:
        exp = self.spec.experiment
        if exp is None:
            return 0, (VariantPlan("default", 10_000, {}),)
        upto = exp.holdout * 100
        holdout = upto
        plans = []
        for name, v in exp.variants.items():
            weight = v.weight if isinstance(v, Variant) else v
            upto += weight * 100
            steps = {}
            if isinstance(v, Variant):
                for step, o in v.steps.items():
                    if step not in self.names:
                        self.errors.append(
                            self.pos.error(
                                ("experiment", "variants", name, "steps", step),
                                f"no step named {step!r}",
                            )
                        )
                    key = ("experiment", "variants", name, "steps", step, "params")
                    steps[step] = (o.template, *self.params(o.params, key))
            plans.append(VariantPlan(name, upto, steps))
        return holdout, tuple(plans)

    def run(self, digest: str) -> CompiledRule | None:
        s = self.spec
        trig = s.trigger.type
        tfilter = (
            self.expr(s.trigger.filter, ("trigger", "filter"), in_flow=False, event_type=trig)
            if s.trigger.filter
            else None
        )
        when = self.expr(s.when, ("when",), in_flow=False, event_type=trig) if s.when else None
        exits = []
        for i, m in enumerate(s.exit_on):
            f = (
                self.expr(m.filter, ("exit_on", i, "filter"), in_flow=False, event_type=m.type)
                if m.filter
                else None
            )
            exits.append((m.type, f))
        self.steps(s.steps, ("steps",))
        send_if = self.expr(s.send_if, ("send_if",), in_flow=True) if s.send_if else None
        for key, step_name, at in self.pending_seen:
            if step_name not in self.names:
                self.errors.append(
                    self.pos.error(key, f"seen_since(): no step named {step_name!r}")
                )
            elif self.names[step_name] >= at:
                self.errors.append(
                    self.pos.error(key, f"seen_since(): step {step_name!r} comes after this one")
                )
        holdout, variants = self.variants()
        if self.errors:
            return None
        reentry = s.reentry if isinstance(s.reentry, str) else s.reentry.policy
        period = (
            0
            if isinstance(s.reentry, str) or s.reentry.period is None
            else parse_duration(s.reentry.period)
        )
        quiet_text = s.limits.quiet_hours or self.settings.quiet_hours
        goal = None
        if s.experiment is not None and s.experiment.goal is not None:
            goal = (s.experiment.goal.event, parse_duration(s.experiment.goal.within))
        return CompiledRule(
            id=s.id,
            version=s.version,
            priority=s.priority,
            trigger=s.trigger.type,
            trigger_filter=tfilter,
            when=when,
            restart=s.on_retrigger == "restart",
            reentry=reentry,
            reentry_period=period,
            exits=tuple(exits),
            ops=tuple(self.ops),
            cap=parse_cap(s.limits.per_customer) if s.limits.per_customer else None,
            quiet=parse_range(quiet_text) if quiet_text else None,
            holdout_upto=holdout,
            variants=variants,
            goal=goal,
            counted=frozenset(self.counted),
            digest=digest,
            uses_trigger=self.uses_trigger,
            seen_types=None if self.seen is None else frozenset(self.seen),
            trigger_keys=None if self.trigger_keys is None else tuple(sorted(self.trigger_keys)),
            send_if=send_if,
            send_if_terms=fast_terms(s.send_if) if s.send_if else None,
        )


def compile_rule(
    spec: RuleSpec, pos: Positions, settings: Settings
) -> tuple[CompiledRule | None, list[RuleError]]:
    """Compile one rule; on errors return (None, errors) naming file, line and column."""
    digest = hashlib.sha256(spec.model_dump_json(by_alias=True).encode()).hexdigest()[:12]
    c = _Compiler(spec, pos, settings)
    rule = c.run(digest)
    return rule, c.errors
