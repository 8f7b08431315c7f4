"""CEL expressions (common-expression-language, a Rust CEL implementation).

An :class:`Expression` is compiled once when the rule set loads. Evaluating it needs only
the variables it references (``program.variables()``), so the caller passes a
:class:`Scope` that builds those lazily: converting a Python dict into CEL values is the
dominant cost (measured: 250k evaluations/s with one small map, 64k/s with a nested
customer map, 5M/s with none). Where every mention of a variable is a field selection
(``customer.orders == 5``), only the selected top-level keys are built and converted
(``customer.orders == 5``: 41 us with the whole customer map, 4.4 us with ``orders`` alone).

Variables: ``event`` (type, properties, context, timestamp ms), ``customer``, ``cart``,
``trigger`` (the properties of the event that started the flow). Functions:
``count(type, window)``, ``seen(type)``, ``seen_since(type, step)``, ``seen_any(type)``,
``seen_any_since(type, step)`` (docs/semantics.md#steps: which feedback counts),
``viewed()``, ``segment_since(id)`` (when the customer entered segment ``id``; 0 when not
a member).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import cel

from engine.exceptions import NudgeError
from rules.fields import BASE_SHAPES, check_selections, macro_bound, selections

__all__ = ["FUNCTIONS", "VARIABLES", "Expression", "ExpressionError", "Scope"]

VARIABLES = frozenset({"event", "customer", "cart", "trigger"})
FUNCTIONS = frozenset(
    {"count", "seen", "seen_since", "seen_any", "seen_any_since", "segment_since", "viewed"}
)
_POS = re.compile(r"<input>:(\d+):(\d+): (.*?)(\n|$)")
# A bare field selection ("cart.value", "trigger.product_id") or a no-argument call
# ("viewed()") is looked up directly: same result as CEL, without converting the variable
# into CEL values first (the dominant cost). Anything else runs in CEL.
_PATH = re.compile(r"^\s*([a-z_][a-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*$")
_NOARG = re.compile(r"^\s*(viewed)\(\s*\)\s*$")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_CALL_NAME = re.compile(r"\b(?:count|seen|seen_since|seen_any|seen_any_since)\s*\(")
_CALL = re.compile(
    r"\b(count|seen|seen_since|seen_any|seen_any_since)\("
    r"\s*(['\"])([^'\"]*)\2(?:\s*,\s*(['\"])([^'\"]*)\4)?"
)


_CEL_ERRORS = (RuntimeError, TypeError, KeyError, ValueError)
"""What CEL (and the scope's lookups) raise while evaluating: wrapped in ExpressionError."""


class ExpressionError(NudgeError):
    """An expression that does not compile (``line`` and ``column`` are 1-based within
    the source; ``line`` is more than 1 only in a multi-line source), or one that failed
    while evaluating (CEL's runtime error wrapped, as ``__cause__``)."""

    def __init__(self, message: str, column: int = 1, line: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.column = column
        self.line = line
        self.others: list[ExpressionError] = []  # more problems of the same expression

    @classmethod
    def at(cls, source: str, offset: int, message: str) -> ExpressionError:
        """An error at 0-based ``offset`` in ``source``."""
        line = source.count("\n", 0, offset) + 1
        start = source.rfind("\n", 0, offset) + 1
        return cls(message, offset - start + 1, line)


class Scope(Protocol):
    """Builds the variables and functions an expression may use, on demand."""

    def variable(self, name: str, keys: frozenset[str] | None = None) -> Any:
        """The map bound to ``name``; with ``keys``, a map holding at most those keys
        (the ones the expression selects; the others may be left out)."""
        ...

    def function(self, name: str) -> Callable[..., Any]: ...

    def field(self, name: str, key: str, sub: str | None = None) -> Any:
        """One top-level key of the map bound to ``name`` (KeyError when it has none):
        what ``variable(name, {key})[key]`` gives, without building the map; with
        ``sub``, that key's value's ``sub`` (None when the value is null)."""
        ...

    def present(self, name: str, key: str, sub: str | None = None) -> bool:
        """Whether ``field(name, key, sub)`` is not null (without computing more of it
        than that takes)."""
        ...


class Expression:
    """A compiled CEL expression and what it references."""

    __slots__ = (
        "calls",
        "dynamic_calls",
        "fast",
        "functions",
        "keys",
        "program",
        "selections",
        "source",
        "variables",
    )

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self.program = cel.compile(source)
        except ValueError as err:
            m = _POS.search(str(err))
            if m:
                raise ExpressionError(m.group(3), int(m.group(2)), int(m.group(1))) from None
            raise ExpressionError(str(err)) from None
        refs = self.program.references()
        # names bound by macros (x in list.exists(x, ...)) show up as variables too (CEL
        # expands the macros: their names are not among the functions)
        unknown_vars = set(refs["variables"]) - VARIABLES - macro_bound(source)
        if unknown_vars:
            name = sorted(unknown_vars)[0]
            m = re.search(rf"(?<![\w.]){name}\b", source)
            raise ExpressionError.at(
                source,
                m.start() if m else 0,
                f"unknown variable {name!r}; use one of " + ", ".join(sorted(VARIABLES)),
            )
        self.variables = tuple(sorted(set(refs["variables"]) & VARIABLES))
        # field selections (``customer.ltv``): one that cannot exist is an error here
        # (rules/fields.py); the compiler checks those that depend on the rule
        self.selections = selections(source, frozenset(self.variables))
        problems = check_selections(self.selections, BASE_SHAPES)
        if problems:
            errs = [ExpressionError.at(source, p.offset, p.message) for p in problems]
            errs[0].others = errs[1:]
            raise errs[0]
        self.functions = tuple(sorted(set(refs["functions"]) & FUNCTIONS))
        # literal arguments of count/seen/seen_since, for checks at compile time
        self.calls: tuple[tuple[str, str, str | None], ...] = tuple(
            (m.group(1), m.group(3), m.group(5)) for m in _CALL.finditer(source)
        )
        # a count/seen/seen_since call whose arguments are not all literals
        self.dynamic_calls = len(_CALL_NAME.findall(source)) > len(self.calls)
        self.keys = {name: selected_keys(source, name) for name in self.variables}
        self.fast: tuple[str, str, tuple[str, ...]] | None = None
        if (m := _PATH.match(source)) and m.group(1) in VARIABLES:
            self.fast = ("var", m.group(1), tuple(m.group(2).split(".")[1:]))
        elif m := _NOARG.match(source):
            self.fast = ("call", m.group(1), ())

    def evaluate(self, scope: Scope) -> Any:
        """Run against ``scope``; a CEL runtime error raises ExpressionError."""
        try:
            return self._evaluate(scope)
        except _CEL_ERRORS as err:
            raise ExpressionError(str(err)) from err

    def _evaluate(self, scope: Scope) -> Any:
        fast = self.fast
        if fast is not None:
            if fast[0] == "call":
                return scope.function(fast[1])()
            value = scope.variable(fast[1], frozenset(fast[2][:1]) or None)
            for key in fast[2]:
                if not isinstance(value, dict):
                    raise TypeError(f"no such key: {key!r} on a non-map value")
                value = value[key]  # KeyError, as CEL's "no such key"
            return value
        keys = self.keys
        ctx: dict[str, Any] = {name: scope.variable(name, keys[name]) for name in self.variables}
        for name in self.functions:
            ctx[name] = scope.function(name)
        return self.program.execute(ctx)

    def test(self, scope: Scope) -> bool:
        """Evaluate as a condition: true only for the boolean ``true``."""
        return self.evaluate(scope) is True


def selected_keys(source: str, variable: str) -> frozenset[str] | None:
    """The top-level keys of ``variable`` that ``source`` selects, when every mention of
    the variable is a field selection (``customer.ltv``); None (the whole map) otherwise.

    Sound without parsing CEL: a key left out would have to be reached through a mention
    that is not ``variable.key``, and any such mention makes the answer None. Text inside
    string literals can only add keys or force None, never hide one."""
    mentions = re.findall(rf"(?<![\w.]){variable}\b(\s*\.\s*{_IDENT})?", source)
    if not mentions or not all(mentions):
        return None
    return frozenset(m.lstrip(" \t\n.") for m in mentions)
