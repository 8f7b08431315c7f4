"""The shapes of the variables rule expressions see, and the field selections of an
expression, so ``nudge rules check`` rejects a field that does not exist
(``customer.rfm_score``, ``cart.valu``) instead of a rule that silently never fires.

A shape is a dict of field name -> shape, :data:`ANY` (a free-form map: any key, any value
below it) or :data:`LEAF` (a value without fields: a number, a string, a list). The shapes
are those of docs/semantics.md (Expressions); tests/rules/test_fields.py checks them
against the code that builds the variables (engine/profile.py, engine/scope.py,
engine/intelligence/).

Selections are found with a small lexer, not by parsing CEL: a chain of ``.name`` after a
variable that is not itself behind a dot, outside string literals and comments (``has()``
included: ``has(customer.nosuchfield)`` is always false). A chain stops at an index
(``customer.attributes['x']``) or a method call (``cart.products.exists(...)``); an
expression whose comprehension macro binds a variable's name (``[1].exists(cart, cart >
0)``) is not checked for that name. So the check only ever rejects a selection that cannot
succeed at run time; it cannot reject a valid one.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Final

__all__ = [
    "ANY",
    "BASE_SHAPES",
    "CART",
    "CHANNELS",
    "CUSTOMER",
    "EVENT",
    "LEAF",
    "PREDICTED",
    "RFM",
    "FieldProblem",
    "Selection",
    "Shape",
    "check_selections",
    "event_shape",
    "known_properties",
    "lenient_fields",
    "lint_warnings",
    "macro_bound",
    "selections",
]

ANY: Final = "*"
"""A free-form map: any key, anything below it."""
LEAF: Final = ""
"""A value with no fields (number, string, bool, list)."""
Shape = Mapping[str, "Shape"] | str

CHANNELS: Final = ("email", "sms", "push", "webhook")
RFM: Final[dict[str, Shape]] = dict.fromkeys(("r", "f", "m", "score", "group"), LEAF)
PREDICTED: Final[dict[str, Shape]] = dict.fromkeys(
    (
        "p_alive",
        "expected_orders_90d",
        "clv_365d",
        "next_order_at",
        "churn_risk",
        "days_to_next_order",
    ),
    LEAF,
)
CUSTOMER: Final[dict[str, Shape]] = {
    "id": LEAF,
    "orders": LEAF,
    "ltv": LEAF,
    "aov": LEAF,
    "first_seen": LEAF,
    "last_seen": LEAF,
    "first_order": LEAF,
    "last_order": LEAF,
    "timezone": LEAF,
    # the settings' default_consent keys besides: the compiler narrows it (rules/compiler.py)
    "consent": ANY,
    "attributes": ANY,
    "segments": ANY,  # segment id -> when entered (members only)
    "rfm": RFM,
    "predicted": PREDICTED,
}
CART: Final[dict[str, Shape]] = {
    "value": LEAF,
    "items": LEAF,
    "updated_at": LEAF,
    "products": LEAF,
}
EVENT: Final[dict[str, Shape]] = {
    "type": LEAF,
    "properties": ANY,
    "context": ANY,
    "timestamp": LEAF,
}
BASE_SHAPES: Final[dict[str, Shape]] = {"customer": CUSTOMER, "cart": CART, "event": EVENT}
"""What every expression is checked against (``trigger`` depends on the rule)."""

# Event types whose properties Nudge defines itself: the segment changes it makes
# (engine/segments.py). The storefront's types (order_completed, product_viewed, ...)
# take any properties besides the required ones (docs/events.md: free-form), so theirs
# are not checked.
_SEGMENT_CHANGE = ("segment_entered:", "segment_exited:")


def known_properties(event_type: str) -> tuple[str, ...] | None:
    """The properties an event of ``event_type`` can have, when Nudge defines them all
    (a segment entered or left: ``segment``); None when they are free-form."""
    if event_type.startswith(_SEGMENT_CHANGE):
        return ("segment",)
    return None


def event_shape(event_type: str | None) -> dict[str, Shape]:
    """The shape of ``event`` (and of ``trigger``'s properties) for an event type."""
    props = None if event_type is None else known_properties(event_type)
    if props is None:
        return EVENT
    return {**EVENT, "properties": dict.fromkeys(props, ANY)}


# --- finding selections -------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<str>[rRbB]{0,2}(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
        |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[uU]?|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class Selection:
    """``root.a.b``: the variable (at 0-based ``offset``) and each selected field with its
    offset."""

    __slots__ = ("fields", "offset", "root")

    def __init__(self, root: str, fields: list[tuple[str, int]], offset: int = 0) -> None:
        self.root = root
        self.fields = fields
        self.offset = offset

    def __repr__(self) -> str:
        return f"Selection({self.root!r}, {self.fields!r}, {self.offset})"


def _tokens(source: str) -> Iterator[tuple[str, str, int]]:
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            yield kind, m.group(), m.start()


def _bound(toks: list[tuple[str, str, int]]) -> set[str]:
    bound: set[str] = set()
    for i in range(len(toks) - 3):
        if (
            toks[i][1] == "."
            and toks[i + 1][0] == "ident"
            and toks[i + 1][1] in _MACROS
            and toks[i + 2][1] == "("
            and toks[i + 3][0] == "ident"
        ):
            bound.add(toks[i + 3][1])
    return bound


def macro_bound(source: str) -> frozenset[str]:
    """The names comprehension macros bind in ``source`` (``p`` in
    ``cart.products.exists(p, p == 'x')``): CEL reports them as variables."""
    return frozenset(_bound(list(_tokens(source))))


def selections(source: str, roots: frozenset[str]) -> list[Selection]:
    """The field selections in ``source`` starting at one of ``roots`` (less any root a
    comprehension macro binds as its loop variable anywhere in ``source``)."""
    toks = list(_tokens(source))
    roots = roots - _bound(toks)
    out: list[Selection] = []
    n = len(toks)
    i = 0
    while i < n:
        kind, text, at = toks[i]
        prev = toks[i - 1][1] if i else ""
        if (
            kind != "ident"
            or text not in roots
            or prev == "."
            or (i + 1 < n and toks[i + 1][1] == "(")
        ):
            i += 1
            continue
        fields: list[tuple[str, int]] = []
        j = i + 1
        while j + 1 < n and toks[j][1] == ".":
            k = j + 1
            if toks[k][1] == "?" and k + 1 < n:  # optional selection: a.?b
                k += 1
            if toks[k][0] != "ident" or (k + 1 < n and toks[k + 1][1] == "("):
                break  # a method call, or not a name
            fields.append((toks[k][1], toks[k][2]))
            j = k + 1
        if fields:
            out.append(Selection(text, fields, at))
        i = j
    return out


# --- checking them ------------------------------------------------------------------
class FieldProblem:
    """A selection that cannot succeed: ``offset`` (0-based) of the offending name."""

    __slots__ = ("message", "offset")

    def __init__(self, offset: int, message: str) -> None:
        self.offset = offset
        self.message = message

    def __repr__(self) -> str:
        return f"FieldProblem({self.offset}, {self.message!r})"


_LENIENT: ContextVar[list[str] | None] = ContextVar("lenient_fields", default=None)


@contextlib.contextmanager
def lenient_fields() -> Iterator[list[str]]:
    """Within it, what this module's lint finds is collected (the list yielded) instead of
    reported as errors: a rule set stored by an earlier version, before the lint existed,
    must still load after an upgrade (a field that cannot exist evaluates false at run
    time, as it always did); new deploys and ``nudge rules check`` stay strict."""
    found: list[str] = []
    token = _LENIENT.set(found)
    try:
        yield found
    finally:
        _LENIENT.reset(token)


def lint_warnings() -> list[str] | None:
    """Where lint problems go instead of errors (inside :func:`lenient_fields`), else None."""
    return _LENIENT.get()


def check_selections(found: list[Selection], shapes: Mapping[str, Shape]) -> list[FieldProblem]:
    """The selections in ``found`` that name a field their variable's shape does not have
    (variables not in ``shapes`` are not checked); none inside :func:`lenient_fields`,
    which collects their messages instead."""
    problems: list[FieldProblem] = []
    for sel in found:
        shape = shapes.get(sel.root)
        if shape is None:
            continue
        path = sel.root
        for name, offset in sel.fields:
            if shape == ANY:
                break
            if isinstance(shape, str):  # LEAF
                problems.append(FieldProblem(offset, f"{path} has no fields ({name!r})"))
                break
            if name not in shape:
                problems.append(FieldProblem(offset, _unknown(path, name, shape)))
                break
            shape = shape[name]
            path = f"{path}.{name}"
    sink = _LENIENT.get()
    if sink is not None and problems:
        sink.extend(p.message for p in problems)
        return []
    return problems


def _unknown(path: str, name: str, shape: Mapping[str, Shape]) -> str:
    known = sorted(shape)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    what = "property" if path == "trigger" or path.endswith(".properties") else "field"
    return f"{path} has no {what} {name!r}{hint} (known: {', '.join(known)})"
