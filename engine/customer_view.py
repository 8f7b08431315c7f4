"""The JSON view of one customer (GET /v1/customers/{id}, the console, the worker's
answer to a customer read); times as RFC 3339 UTC."""

from __future__ import annotations

from typing import Any

from engine.profile import consent_entries
from engine.types import iso
from rules.ruleset import RuleSet
from state.customer import CustomerState
from state.windows import WINDOWS, count

__all__ = ["customer_json"]


def _t(ms: int | None) -> str | None:
    return None if ms is None else iso(ms)


def customer_json(st: CustomerState, rs: RuleSet, now: int) -> dict[str, Any]:
    """Profile, cart, counters, open flows and pending timers of one customer."""
    consent = dict(rs.settings.default_consent)
    consent.update(st.consent or {})
    counters = {
        t: {w: count(st.counters or {}, t, w, now) for w in WINDOWS} for t in sorted(rs.counted)
    }
    flows = []
    timers = []
    for inst in (st.flows or {}).values():
        flows.append(
            {
                "rule_id": inst.rule_id,
                "version": inst.version,
                "instance_id": inst.instance_id,
                "started_at": _t(inst.started_at),
                "step": inst.pc,
                "variant": inst.variant,
                "due": _t(inst.due),
            }
        )
        if inst.due is not None:
            timers.append({"rule_id": inst.rule_id, "due": _t(inst.due)})
    out: dict[str, Any] = {"customer_id": st.customer_id}
    if st.merged_into is not None:
        out["merged_into"] = st.merged_into
    return out | {
        "profile": {
            "first_seen": _t(st.first_seen),
            "last_seen": _t(st.last_seen),
            "timezone": st.timezone or rs.settings.default_timezone,
            "consent": consent,
            # where each channel's consent last came from (event time, type, source)
            "consent_changes": {
                ch: {"at": iso(at), "event": etype, "source": source}
                for ch, (at, etype, source) in sorted((st.consent_changes or {}).items())
            },
            # every consent change kept (the last CONSENT_HISTORY_MAX), oldest first
            "consent_history": [
                {"at": iso(at), "consent": chans, "event": etype, "source": source}
                for at, chans, etype, source in consent_entries(st.consent_history)
            ],
            "orders": st.orders,
            "ltv": st.revenue,
            "aov": st.aov,
            "first_order": _t(st.first_order),
            "last_order": _t(st.last_order),
            "attributes": st.attributes or {},
        },
        "cart": {
            "items": [
                {"product_id": pid, "quantity": q, "price": p}
                for pid, (q, p) in (st.cart or {}).items()
            ],
            "value": st.cart_value,
            "updated_at": _t(st.cart_updated),
        },
        "recently_viewed": list(st.viewed or ()),
        "counters": counters,
        "flows": flows,
        "pending_timers": sorted(timers, key=lambda t: str(t["due"])),
    }
