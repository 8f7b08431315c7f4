"""The abandoned-cart recipe (``rules/recipes/abandoned_cart.yaml``) as plain functions over
a JSON-able per-customer dict, shared by the peers so that only the *framework* wiring
(state storage, timers) differs between them.

What is modelled (docs/semantics.md): dedup on the last 32 event ids; cart from
``cart_item_added``/``cart_item_removed``/``order_completed``; consent from
``customer_signed_up``/``customer_updated`` (defaults email on, sms off); trigger
``cart_item_added`` with ``cart.value > 0`` and ``on_retrigger: restart``; exits
``order_completed`` and ``cart_item_removed`` leaving 0 items (only for events with
``ts >= flow start``); too-late events (lateness > 24h) start nothing; ``wait 4h`` ->
email ``reminder`` -> ``wait 4h`` -> SMS if no ``email_opened`` since the reminder; the
10 % holdout (same blake2b bucket as the engine); ``per_customer: 2/7d``.

Not modelled: ``quiet_hours`` (it only delays a send to 09:00 local; needs the customer's
time zone and a second timer), the cross-rule channel caps (``email: 3/1d``, ``sms: 1/1d``
in settings.yaml: the peers run this one rule only), goals/variants' templates.

``now`` is the caller's notion of processing time (each peer passes its partition's stream
time: the highest event time seen on that partition so far).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

__all__ = ["RULE_ID", "due", "fire_due", "on_event", "ts_ms"]

RULE_ID = "abandoned-cart"
WAIT_MS = 4 * 3600 * 1000
LATENESS_MS = 24 * 3600 * 1000
CAP_N, CAP_MS = 2, 7 * 24 * 3600 * 1000
HOLDOUT_UPTO = 1000  # holdout: 10 -> buckets [0, 1000) of 10_000
DEDUP = 32

State = dict[str, Any]
Action = dict[str, Any]


def ts_ms(stamp: str) -> int:
    """RFC 3339 (``Z`` or an offset) -> epoch milliseconds."""
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def _holdout(customer_id: str) -> bool:
    digest = hashlib.blake2b(f"{RULE_ID}\0{customer_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < HOLDOUT_UPTO


def due(st: State) -> int | None:
    """When this customer's open flow resumes next (None: no open flow)."""
    flow = st.get("flow")
    return None if flow is None else int(flow["due"])


def _send(st: State, cid: str, channel: str, now: int, out: list[Action]) -> None:
    if _holdout(cid):
        return
    consent = st.get("consent", {})
    if not consent.get(channel, channel == "email"):
        return
    sent = [t for t in st.get("sent", []) if t > now - CAP_MS]
    if len(sent) >= CAP_N:
        st["sent"] = sent
        return
    st["sent"] = [*sent, now]
    out.append({"rule_id": RULE_ID, "customer_id": cid, "channel": channel, "fire_at": now})


def fire_due(st: State, cid: str, now: int) -> list[Action]:
    """Run the flow's steps whose timer is due at or before ``now``, each at its due time."""
    out: list[Action] = []
    while (flow := st.get("flow")) is not None and flow["due"] <= now:
        t = int(flow["due"])
        if flow["pc"] == 0:
            _send(st, cid, "email", t, out)
            flow.update(pc=1, due=t + WAIT_MS, reminder=t)
        else:
            opened = flow.get("opened")
            if opened is None or opened < flow["reminder"]:
                _send(st, cid, "sms", t, out)
            st["flow"] = None
    return out


def on_event(st: State, ev: dict[str, Any], now: int) -> tuple[bool, list[Action]]:
    """Apply one event at processing time ``now`` (timers due by ``now`` fire first).
    Returns (duplicate?, actions)."""
    cid = ev["customer_id"]
    out = fire_due(st, cid, now)
    ids: list[str] = st.setdefault("ids", [])
    if ev["event_id"] in ids:
        return True, out
    ids.append(ev["event_id"])
    if len(ids) > DEDUP:
        del ids[0]
    ts = ts_ms(ev["timestamp"])
    typ, props = ev["type"], ev.get("properties") or {}
    cart: dict[str, list[float]] = st.setdefault("cart", {})
    if typ == "cart_item_added":
        pid = str(props["product_id"])
        qty = float(props.get("quantity", 1))
        cart[pid] = [qty + (cart[pid][0] if pid in cart else 0.0), float(props.get("price", 0))]
    elif typ == "cart_item_removed":
        pid = str(props["product_id"])
        if pid in cart:
            left = cart[pid][0] - float(props["quantity"]) if "quantity" in props else 0.0
            if left > 0:
                cart[pid][0] = left
            else:
                del cart[pid]
    elif typ == "order_completed":
        cart.clear()
    elif typ in ("customer_signed_up", "customer_updated"):
        consent = props.get("consent")
        if isinstance(consent, dict):
            mine = st.setdefault("consent", {})
            mine.update({k: v for k, v in consent.items() if isinstance(v, bool)})
    flow = st.get("flow")
    if flow is not None and ts >= flow["start"]:
        if typ == "email_opened":
            flow["opened"] = max(ts, flow.get("opened") or ts)
        items = sum(q for q, _ in cart.values())
        if typ == "order_completed" or (typ == "cart_item_removed" and items == 0):
            st["flow"] = None
    if typ == "cart_item_added" and now - ts <= LATENESS_MS:
        value = round(sum(q * p for q, p in cart.values()), 2)
        if value > 0.0:  # restart or enter: a fresh 4h clock from the event time
            st["flow"] = {"start": ts, "due": ts + WAIT_MS, "pc": 0}
            out += fire_due(st, cid, now)  # a late trigger's wait may be due already
    return False, out
