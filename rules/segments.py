"""Segments: ``kind: segment`` documents compiled for the processor (docs/segments.md).

A segment's condition is CEL over ``customer``, ``cart`` and ``count(type, window)``. It
holds the customer's state only, so without an event it can change only when a counted
bucket leaves a window: its ``count()`` calls (literal arguments, checked here) are kept so
the processor can work out that instant exactly (``state.windows.next_change_of``).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rules.exceptions import RuleError
from rules.expressions import Expression, ExpressionError, Scope
from rules.loader import Positions
from rules.spec import SegmentSpec
from state.customer import CustomerState
from state.windows import WINDOWS, counter

__all__ = [
    "POPULATION_KEYS",
    "SEGMENT_VARIABLES",
    "CompiledSegment",
    "compile_segment",
    "count_thresholds",
    "direct_test",
    "directions",
    "fast_terms",
    "input_types",
    "population_reads",
    "rfm_group",
    "test_condition",
]

SEGMENT_VARIABLES = frozenset({"customer", "cart"})


# what each input type can change of what a condition reads (engine/profile.py)
_CART_TYPES = frozenset(
    {"cart_item_added", "cart_item_removed", "cart_replaced", "order_completed"}
)
_ORDER_TYPES = frozenset({"order_completed", "order_refunded"})
_PROFILE_TYPES = frozenset({"customer_updated", "customer_signed_up"})
_CONSENT_TYPES = _PROFILE_TYPES | {
    "email_unsubscribed",
    "email_spam_reported",
    "email_resubscribed",
    "sms_unsubscribed",
    "sms_resubscribed",
}
_CUSTOMER_KEYS: dict[str, frozenset[str]] = {
    "orders": _ORDER_TYPES,
    "ltv": _ORDER_TYPES,
    "aov": _ORDER_TYPES,
    "first_order": _ORDER_TYPES,
    "last_order": _ORDER_TYPES,
    "consent": _CONSENT_TYPES,
    "attributes": _PROFILE_TYPES,
    # computed from orders, order times and revenue (engine/intelligence/); what time and
    # a new population do to them, the segment timer and the backfill handle
    "rfm": _ORDER_TYPES,
    "predicted": _ORDER_TYPES,
}


def _field_inputs(expr: Expression) -> frozenset[str]:
    """The input types of ``expr``'s customer and cart terms (not its counts)."""
    types: set[str] = set()
    if "cart" in expr.variables:
        types |= _CART_TYPES
    keys = expr.keys.get("customer") if "customer" in expr.variables else frozenset()
    for key in keys or ():
        types |= _CUSTOMER_KEYS.get(key, frozenset())
    return frozenset(types)


def input_types(expr: Expression) -> frozenset[str] | None:
    """The event types whose processing can change ``expr``'s value (with the time
    standing still), or None when any event can (it reads ``last_seen``, the time zone,
    the whole customer map...). A merge (``customer_merged``) can change anything and is
    always evaluated; so is a customer's first event."""
    types: set[str] = set()
    if "cart" in expr.variables:
        types |= _CART_TYPES
    if "customer" in expr.variables:
        keys = expr.keys["customer"]
        if keys is None or not keys <= _CUSTOMER_KEYS.keys():
            return None
        for key in keys:
            types |= _CUSTOMER_KEYS[key]
    types |= {etype for fn, etype, _ in expr.calls if fn == "count"}
    return frozenset(types)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(
    r"^\s*(?:(customer|cart)\.([a-z_]+)(?:\.([a-z_0-9]+))?"
    r"|count\(\s*'([a-z0-9_]+)'\s*,\s*'([0-9a-z]+)'\s*\))"
    r"\s*(==|!=|>=|<=|>|<)\s*(-?\d+\.\d+|-?\d+|true|false|null|'[^'\\]*')\s*$"
)
Getter = Callable[[Scope], Any]
Term = tuple[Getter, Callable[[Any, Any], bool], Any]


def _literal(text: str) -> Any:
    if text == "null":
        return None
    if text in ("true", "false"):
        return text == "true"
    if text.startswith("'"):
        return text[1:-1]
    return float(text) if "." in text else int(text)


Parsed = tuple[str | None, str | None, str | None, str | None, str | None, str, Any]


def _parse(part: str) -> Parsed | None:
    """One simple comparison as (variable, key, sub-key, count type, count window,
    operator, literal value), or None when ``part`` is not one."""
    m = _TERM.match(part)
    if m is None:
        return None
    var, key, sub, etype, window, op, lit = m.groups()
    return var, key, sub, etype, window, op, _literal(lit)


def _getter(
    var: str | None, key: str | None, sub: str | None, etype: str | None, window: str | None
) -> Getter:
    if var is not None and key is not None:
        if sub is not None:
            return lambda scope: scope.field(var, key, sub)
        return lambda scope: scope.field(var, key)
    return lambda scope: scope.function("count")(etype, window)


def _term(part: str) -> tuple[Getter, Callable[[Any, Any], bool], Any] | None:
    """One simple comparison as (getter, operator, literal), or None. ``x == null`` /
    ``x != null`` become a presence test: (is x there?, ==, False / True)."""
    parsed = _parse(part)
    if parsed is None:
        return None
    var, key, sub, etype, window, op, value = parsed
    if value is None:
        if op not in ("==", "!=") or var is None or key is None:
            return None
        return (lambda scope: scope.present(var, key, sub)), _OPS["=="], op == "!="
    return _getter(var, key, sub, etype, window), _OPS[op], value


def fast_terms(source: str) -> tuple[Term, ...] | None:
    """``source`` as a conjunction of simple comparisons (``customer.orders >= 2``,
    ``cart.items > 0``, ``count('order_completed', '90d') == 0``, joined by ``&&``), each
    evaluated in Python; None when it is anything else (CEL evaluates it): a part that is
    not one such comparison (``||``, parentheses, negation, a literal holding ``&&``) does
    not match."""
    return _conjunction(source, _term)


_T = TypeVar("_T")


def _conjunction(source: str, parse: Callable[[str], _T | None]) -> tuple[_T, ...] | None:
    """Each ``&&``-joined part of ``source`` parsed by ``parse``; None if one is not."""
    terms = []
    for part in source.split("&&"):
        term = parse(part)
        if term is None:
            return None
        terms.append(term)
    return tuple(terms)


StateGetter = Callable[[CustomerState, int], Any]
DirectTest = Callable[[CustomerState, int], "bool | None"]

# the customer and cart fields read straight off the state, as engine/profile.py's
# CUSTOMER_FIELDS and engine/scope.py's cart view give them (a property test holds them
# equal: tests/engine/test_segment_fast_path.py)
_STATE_FIELDS: dict[tuple[str, str], StateGetter] = {
    ("customer", "orders"): lambda st, _: st.orders,
    ("customer", "ltv"): lambda st, _: st.revenue,
    ("customer", "aov"): lambda st, _: st.aov,
    ("customer", "first_order"): lambda st, _: st.first_order or 0,
    ("customer", "last_order"): lambda st, _: st.last_order or 0,
    ("cart", "items"): lambda st, _: st.cart_items,
    ("cart", "value"): lambda st, _: st.cart_value,
}


def _state_getter(part: str) -> tuple[StateGetter, Callable[[Any, Any], bool], Any] | None:
    parsed = _parse(part)
    if parsed is None:
        return None
    var, key, sub, etype, window, op, value = parsed
    if value is None or sub is not None:
        return None
    if etype is not None:
        if window is None or window not in WINDOWS:
            return None
        fn = counter(etype, window)
        return (lambda st, now: fn(st.counters, now)), _OPS[op], value
    get = None if var is None or key is None else _STATE_FIELDS.get((var, key))
    return None if get is None else (get, _OPS[op], value)


def direct_test(source: str) -> DirectTest | None:
    """For a condition of simple comparisons joined by ``&&`` on the fields the state
    holds (``customer.orders``, ``.ltv``, ``.aov``, ``.first_order``, ``.last_order``,
    ``cart.items``, ``cart.value``, ``count()``), ``fn(state, now)``: whether it holds,
    read straight off the state without a scope, or None where a value's type differs
    from its literal's (CEL decides then). None for any other condition."""
    checks = _conjunction(source, _state_getter)
    if checks is None:
        return None

    def test(st: CustomerState, now: int) -> bool | None:
        for get, op, literal in checks:
            value = get(st, now)
            if type(value) is not type(literal):
                return None
            if not op(value, literal):
                return False
        return True

    return test


def _count_terms(source: str) -> list[tuple[str, str, str, Any]] | None:
    """The ``count(type, window) op literal`` terms of a condition of simple comparisons
    joined by ``&&`` as (type, window, op, literal), or None when it is not that shape."""
    parts = _conjunction(source, _parse)
    if parts is None:
        return None
    return [
        (etype, window, op, value)
        for _var, _key, _sub, etype, window, op, value in parts
        if etype is not None and window is not None
    ]


def directions(source: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """For a condition of simple comparisons joined by ``&&`` whose only ``count()`` terms
    compare with a literal, the event types that can only make it turn true (``rising``:
    ``count(t) > k``, ``>= k``) and only false (``falling``: ``== 0``, ``< k``, ``<= k``)
    when one more event of the type is counted; a type in both, or counted with ``==
    k``/``!= k`` (k > 0), can do either. None when not that shape. A segment whose
    members see an event of a type that is not ``falling`` stays a member; a non-member
    with a type not ``rising`` stays out (engine/segments.py skips those)."""
    rising: set[str] = set()
    falling: set[str] = set()
    counts = _count_terms(source)
    if counts is None:
        return None
    for etype, _window, op, value in counts:
        if op in (">", ">="):
            rising.add(etype)
        elif op in ("<", "<=") or (op == "==" and value == 0):
            falling.add(etype)
        else:
            rising.add(etype)
            falling.add(etype)
    return frozenset(rising), frozenset(falling)


def count_thresholds(source: str) -> dict[tuple[str, str], int | None] | None:
    """For a condition of simple comparisons joined by ``&&``, each ``count(t, w)``
    term's threshold: the ``k`` such that, as the count only falls with time, the term
    can turn only when it drops to ``k`` or below (``> k``, ``<= k``: ``k``; ``>= k``,
    ``< k``: ``k - 1``; ``== 0``: 0); None for a term any drop can turn (``== k``,
    ``!= k``, a non-integer literal). None when the condition is not that shape (every
    bucket leaving then matters: state.windows.next_crossing)."""
    out: dict[tuple[str, str], int | None] = {}
    counts = _count_terms(source)
    if counts is None:
        return None
    for etype, window, op, value in counts:
        limit: int | None = None
        if type(value) is int:
            if op in (">", "<="):
                limit = value
            elif op in (">=", "<"):
                limit = value - 1
            elif op == "==" and value == 0:
                limit = 0
        key = (etype, window)
        out[key] = None if key in out else limit  # counted twice: any drop may matter
    return out


POPULATION_KEYS = frozenset({"rfm", "predicted"})

_RFM_GROUP = re.compile(
    r"^\s*customer\.rfm\s*!=\s*null\s*&&\s*customer\.rfm\.group\s*==\s*'([a-z_]+)'\s*$"
)


def rfm_group(source: str) -> str | None:
    """The group ``g`` of a condition of the stock RFM-group shape, ``customer.rfm !=
    null && customer.rfm.group == 'g'`` (rules/segments/rfm.yaml), or None. Such a
    condition holds exactly when the customer's group is ``g`` (a customer without RFM
    scores has none): the processor works the group out once for all of them
    (engine/segments.py) and, when every segment reading ``customer.rfm`` has this shape,
    sets the segment timer at the instant the group changes rather than every instant R
    drops (``RuleSet.segments_rfm_groups``)."""
    m = _RFM_GROUP.match(source)
    return None if m is None else m.group(1)


def population_reads(expr: Expression) -> frozenset[str]:
    """The population-dependent ``customer`` fields ``expr`` reads (``rfm``,
    ``predicted``; both when it reads the whole map)."""
    if "customer" not in expr.variables:
        return frozenset()
    keys = expr.keys["customer"]
    return POPULATION_KEYS if keys is None else keys & POPULATION_KEYS


@dataclass(frozen=True, slots=True)
class CompiledSegment:
    """A segment ready to evaluate; ``counts``: the (type, window) its condition counts;
    ``inputs``: the event types that can change it (None: any)."""

    id: str
    description: str
    condition: Expression
    counts: tuple[tuple[str, str], ...]
    inputs: frozenset[str] | None
    # the condition as simple comparisons evaluated in Python (None: CEL evaluates it)
    terms: tuple[Term, ...] | None = None
    # count types that can only turn it true / false (see ``directions``; None: unknown)
    rising: frozenset[str] | None = None
    falling: frozenset[str] | None = None
    # the input types of its terms other than count() (they may move it either way)
    field_inputs: frozenset[str] = frozenset()
    # (type, window) -> the count's threshold (see ``count_thresholds``); None: unknown
    thresholds: dict[tuple[str, str], int | None] | None = None
    # what it reads that depends on the whole base: "rfm", "predicted" (time moves both)
    population: frozenset[str] = frozenset()
    # the RFM group its condition is exactly membership of (see ``rfm_group``), or None
    rfm_group: str | None = None
    # the condition read straight off the state (see ``direct_test``), or None
    direct: DirectTest | None = None

    def unchanged_by(self, event_type: str, member: bool) -> bool:
        """Whether one more counted event of ``event_type`` certainly leaves membership
        as it is (``member``: the customer is in the segment now)."""
        if (
            self.rising is None
            or self.falling is None
            or self.inputs is None  # reads what any event moves (last_seen...)
            or event_type in self.field_inputs
        ):
            return False
        return event_type not in (self.falling if member else self.rising)

    def test(self, scope: Scope) -> bool:
        """Whether the customer ``scope`` shows is in the segment (CEL errors raise)."""
        return test_condition(self.condition, self.terms, scope)


def test_condition(condition: Expression, terms: tuple[Term, ...] | None, scope: Scope) -> bool:
    """``condition.test(scope)``, with ``terms`` (its :func:`fast_terms`) when it has them:
    a condition made of simple comparisons is evaluated in Python, a few times faster than
    converting the values for CEL; wherever a value's type differs from its literal's
    (``customer.orders == 1.0``: CEL refuses int == double), CEL decides, so the answer is
    always CEL's."""
    if terms is None:
        return condition.test(scope)
    for get, op, literal in terms:
        try:
            value = get(scope)
        except (KeyError, TypeError) as err:
            raise ExpressionError(str(err)) from err
        if type(value) is not type(literal):
            return condition.test(scope)
        if not op(value, literal):
            return False
    return True


def compile_segment(
    spec: SegmentSpec, pos: Positions
) -> tuple[CompiledSegment | None, list[RuleError]]:
    """The compiled segment, or None and every error found (file, line, reason)."""
    key = ("condition",)
    try:
        expr = Expression(spec.condition)
    except ExpressionError as err:
        return None, [pos.error(key, f"expression: {err.message}", err.column)]
    errors: list[RuleError] = []
    for var in sorted(set(expr.variables) - SEGMENT_VARIABLES):
        errors.append(pos.error(key, f"a segment condition cannot use {var!r}: customer, cart"))
    for fn in expr.functions:
        if fn != "count":
            errors.append(pos.error(key, f"a segment condition cannot call {fn}()"))
    if expr.dynamic_calls:
        errors.append(pos.error(key, "count() arguments must be literal strings in a segment"))
    counts = []
    for fn, etype, window in expr.calls:
        if fn == "count":
            if window not in WINDOWS:
                errors.append(
                    pos.error(key, f"count(): unknown window {window!r}; use {', '.join(WINDOWS)}")
                )
            else:
                counts.append((etype, window))
    if errors:
        return None, errors
    inputs = input_types(expr)
    dirs = directions(spec.condition)
    compiled = CompiledSegment(
        spec.id,
        spec.description,
        expr,
        tuple(counts),
        inputs,
        fast_terms(spec.condition),
        None if dirs is None else dirs[0],
        None if dirs is None else dirs[1],
        _field_inputs(expr),
        count_thresholds(spec.condition),
        population_reads(expr),
        rfm_group(spec.condition),
        direct_test(spec.condition),
    )
    return compiled, []
