"""The variables and functions a rule expression sees, built only when referenced."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.intelligence.population import EMPTY, Population
from engine.profile import CUSTOMER_FIELDS, customer_view
from engine.types import Event
from state.customer import CustomerState, FlowInstance
from state.windows import count

__all__ = ["RuleScope"]

_NEVER = 1 << 62
_CART_FIELDS: tuple[tuple[str, Callable[[CustomerState], Any]], ...] = (
    ("value", lambda st: st.cart_value),
    ("items", lambda st: st.cart_items),
    ("updated_at", lambda st: st.cart_updated or 0),
    ("products", lambda st: sorted(st.cart) if st.cart else []),
)
_CART = frozenset(k for k, _ in _CART_FIELDS)
_CART_GETTERS = dict(_CART_FIELDS)
_UNSET: Any = object()


class RuleScope:
    """One evaluation's view of a customer; ``event`` is set for trigger/exit filters and
    ``when``, ``flow`` for steps; ``population``: what ``customer.rfm`` and
    ``customer.predicted`` are computed against (default: nothing, both null)."""

    __slots__ = ("_rfm", "consent", "event", "flow", "now", "population", "state")

    def __init__(
        self,
        state: CustomerState,
        now: int,
        consent: dict[str, bool],
        event: Event | None = None,
        flow: FlowInstance | None = None,
        population: Population | None = None,
    ) -> None:
        self.state = state
        self.now = now
        self.consent = consent
        self.event = event
        self.flow = flow
        self.population = EMPTY if population is None else population
        self._rfm: Any = _UNSET  # customer.rfm, computed once per scope when read

    def variable(self, name: str, keys: frozenset[str] | None = None) -> Any:
        """The map bound to ``name`` (see rules.expressions.Scope); with ``keys``, only
        those of its top-level keys that exist."""
        if name == "customer":
            return customer_view(self.state, self.consent, keys, self.now, self.population)
        if name == "cart":
            fields = _CART if keys is None else keys & _CART
            return {k: getter(self.state) for k, getter in _CART_FIELDS if k in fields}
        if name == "event" and self.event is not None:
            ev = self.event
            view: dict[str, Any] = {
                "type": ev.type,
                "properties": ev.properties,
                "context": ev.context,
            }
            if keys is None or "timestamp" in keys:
                view["timestamp"] = ev.ts
            return view
        if name == "trigger" and self.flow is not None:
            trigger = self.flow.trigger or {}
            return trigger if keys is None else {k: trigger[k] for k in keys if k in trigger}
        return {}

    def field(self, name: str, key: str, sub: str | None = None) -> Any:
        """``variable(name, {key})[key]`` (``[sub]``) for ``customer`` and ``cart``,
        without the map (segment conditions' simple comparisons: rules/segments.py); a
        prediction alone is computed without the others."""
        if name == "customer":
            if key == "rfm":  # eleven RFM-group segments read it: once per evaluation
                value = self._rfm
                if value is _UNSET:
                    value = self._rfm = self.population.rfm_of(self.state, self.now)
            elif sub is not None and key == "predicted":
                return self.population.predicted_field(self.state, self.now, sub)
            else:
                value = CUSTOMER_FIELDS[key](self.state, self.consent, self.now, self.population)
        elif name == "cart":
            value = _CART_GETTERS[key](self.state)
        else:
            value = self.variable(name, frozenset({key}))[key]
        if sub is None:
            return value
        return None if value is None else value[sub]

    def present(self, name: str, key: str, sub: str | None = None) -> bool:
        if name == "customer" and key == "predicted" and sub is None:
            return self.population.has_predictions(self.state)
        return self.field(name, key, sub) is not None

    def function(self, name: str) -> Callable[..., Any]:
        return getattr(self, "_fn_" + name)  # type: ignore[no-any-return]

    def _fn_count(self, event_type: str, window: str) -> int:
        return count(self.state.counters or {}, event_type, window, self.now)

    # ``seen`` slots (engine/flows.py ``seen_slot``): ``type`` unattributed, ``type\0step``
    # / ``type\0`` attributed to this flow (a step of it / no step known), ``type\0*``
    # attributed to another rule's or instance's action
    def _last(self, event_type: str, own: bool) -> int:
        flow = self.flow
        if flow is None or flow.seen is None:
            return -1
        last = -1
        prefix = event_type + "\0"
        for slot, t in flow.seen.items():
            if t > last and (slot == event_type or slot.startswith(prefix)):
                if own and slot.endswith("\0*"):
                    continue
                last = t
        return last

    def _fn_seen(self, event_type: str) -> bool:
        """An event of the type since the flow started, unattributed or attributed to
        this flow."""
        return self._last(event_type, True) >= 0

    def _fn_seen_any(self, event_type: str) -> bool:
        """Any event of the type since the flow started, whatever it is attributed to."""
        return self._last(event_type, False) >= 0

    def _fn_seen_since(self, event_type: str, step: str) -> bool:
        """An event of the type since step ``step`` ran, unattributed or attributed to
        the action that step sent ("that email opened")."""
        flow = self.flow
        if flow is None or flow.seen is None or flow.marks is None:
            return False
        mark = flow.marks.get(step, _NEVER)
        seen = flow.seen
        return seen.get(event_type, -1) >= mark or seen.get(f"{event_type}\0{step}", -1) >= mark

    def _fn_seen_any_since(self, event_type: str, step: str) -> bool:
        """Any event of the type since step ``step`` ran ("any email opened")."""
        flow = self.flow
        if flow is None or flow.marks is None:
            return False
        return self._last(event_type, False) >= flow.marks.get(step, _NEVER)

    def _fn_segment_since(self, segment: str) -> int:
        return (self.state.segments or {}).get(segment, 0)

    def _fn_viewed(self) -> list[str]:
        return list(self.state.viewed or ())
