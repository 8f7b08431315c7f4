"""An independent, deliberately simple oracle of the stock recipes (docs/semantics.md).

Contract: ``oracle_lines(trace_lines)`` returns, for a JSONL trace of events in send order,
exactly the action lines ``nudge backtest`` must print for ``rules/recipes`` (same JSON
keys, same bytes, sorted by fire_at, then customer_id, then rule_id, then
idempotency_key), with the drain running 400 days past the last clock.

It imports nothing from engine/, rules/, state/ or connectors/: the eight recipes and the
settings are written out as plain Python (load_tests/oracle_recipes.py), and every
semantic step (dedup ring of 32, lateness, profile and cart, exits, re-entry, restart,
waits from flow time, wait-until local time, quiet hours, consent, caps, experiment arms,
idempotency keys) is re-derived from the document. Readability over speed. Lines that
are not an event object with string ``event_id``, ``type``, ``customer_id`` and
``timestamp`` are skipped (the generator never writes any). CLI::

    python -m load_tests.oracle trace.jsonl > expected.jsonl
"""

from __future__ import annotations

import heapq
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from load_tests.oracle_recipes import (
    ALLOWED_LATENESS,
    BY_PRIORITY,
    CHANNEL_CAPS,
    DEDUP_RING,
    DEFAULT_CONSENT,
    DRAIN,
    OPT_OUTS,
    QUIET_END,
    RECIPES,
    VIEWED_MAX,
    Branch,
    Customer,
    Flow,
    Recipe,
    Send,
    Wait,
    WaitUntil,
    experiment_arm,
    idempotency_key,
    in_quiet_hours,
    iso,
    next_local_time,
    number,
    parse_ts,
    trace_events,
    valid_zone,
)

__all__ = ["RECIPES", "Oracle", "OracleStats", "iso", "main", "oracle_lines", "parse_ts"]

_RANK = {r.id: i for i, r in enumerate(BY_PRIORITY)}


# --- the oracle -----------------------------------------------------------------------
@dataclass
class OracleStats:
    events: int = 0
    skipped: int = 0
    duplicates: int = 0
    too_late: int = 0
    timers: int = 0


class Oracle:
    """Feed events in send order with :meth:`event`, then :meth:`finish`; ``actions``
    holds ``(fire_at, customer_id, rule_id, key, action dict)`` in emission order."""

    def __init__(self) -> None:
        self.customers: dict[str, Customer] = {}
        self.timers: dict[tuple[str, str], int] = {}  # (customer, rule) -> due
        # (due, customer, priority rank, rule), lazy deletes: one customer's timers due at
        # the same instant fire in priority order, then rule id
        self.queue: list[tuple[int, str, int, str]] = []
        self.clock: int | None = None
        self.actions: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self.stats = OracleStats()

    # -- timers --
    def schedule(self, c: Customer, flow: Flow, due: int) -> None:
        flow.due = due
        self.timers[(c.id, flow.recipe.id)] = due
        heapq.heappush(self.queue, (due, c.id, _RANK[flow.recipe.id], flow.recipe.id))

    def close(self, c: Customer, flow: Flow) -> None:
        self.timers.pop((c.id, flow.recipe.id), None)
        flow.due = None
        del c.flows[flow.recipe.id]

    def fire_timers(self, upto: int) -> None:
        """Every timer due at or before ``upto``, in (due, customer, priority, rule) order,
        each at now = max(clock, due)."""
        while self.queue and self.queue[0][0] <= upto:
            due, cid, _, rid = heapq.heappop(self.queue)
            if self.timers.get((cid, rid)) != due:
                continue  # cancelled or rescheduled
            del self.timers[(cid, rid)]
            assert self.clock is not None
            self.clock = max(self.clock, due)
            c = self.customers[cid]
            flow = c.flows[rid]
            flow.due = None
            self.stats.timers += 1
            self.run(c, flow, t=due, now=self.clock)

    # -- events --
    def event(self, ev: dict[str, Any]) -> None:
        ts = parse_ts(ev["timestamp"])
        if self.clock is None:
            self.clock = ts
        self.fire_timers(ts)
        self.clock = max(self.clock, ts)
        self.stats.events += 1
        self.process(ev, ts, self.clock)

    def finish(self) -> None:
        if self.clock is not None:
            self.fire_timers(self.clock + DRAIN)

    def process(self, ev: dict[str, Any], ts: int, now: int) -> None:
        cid = ev["customer_id"]
        c = self.customers.get(cid)
        if c is None:
            c = self.customers[cid] = Customer(cid)
        if self.duplicate(c, ev, now):
            self.stats.duplicates += 1
            return
        too_late = now - ts > ALLOWED_LATENESS
        self.stats.too_late += too_late
        etype = ev["type"]
        self.apply(c, ev)
        for open_flow in c.flows.values():
            if ts >= open_flow.started_at:
                key = self.seen_key(c, open_flow, etype, ev.get("properties") or {})
                open_flow.seen[key] = max(open_flow.seen.get(key, ts), ts)
        for recipe in BY_PRIORITY:
            flow = c.flows.get(recipe.id)
            if flow is None or ts < flow.started_at:
                continue
            for exit_type, test in recipe.exits:
                if exit_type == etype and (test is None or test(c)):
                    self.close(c, flow)
                    break
        if too_late:
            return
        for recipe in BY_PRIORITY:
            if recipe.trigger == etype:
                self.trigger(recipe, c, ev, ts, now)

    def duplicate(self, c: Customer, ev: dict[str, Any], now: int) -> bool:
        """An event id seen before (the last DEDUP_RING ids, and every id first seen less
        than ALLOWED_LATENESS ago, at whole minutes rounded up; the ids seen before the
        customer first held DEDUP_RING count as seen when the next one came), or an order
        or refund counted before under another id."""
        eid = ev["event_id"]
        if any(seen == eid for seen, _ in c.recent_ids):
            return True
        minute = now // 60_000
        if len(c.recent_ids) >= DEDUP_RING and not c.ids_timed:
            # the ring is full for the first time: its ids count as seen now
            c.recent_ids = deque((seen, minute) for seen, _ in c.recent_ids)
            c.ids_timed = True
        horizon = (now - ALLOWED_LATENESS) // 60_000 - 1
        while len(c.recent_ids) >= DEDUP_RING and c.recent_ids[0][1] < horizon:
            c.recent_ids.popleft()
        c.recent_ids.append((eid, minute))
        props = ev.get("properties") or {}
        if ev["type"] == "order_completed":
            fact = f"order {props.get('order_id')}"
        elif ev["type"] == "order_refunded":
            if props.get("refund_id") is not None:
                fact = f"refund {props['refund_id']}"
            else:
                fact = f"refund {props.get('order_id')} {number(props.get('amount'), -1.0)}"
        else:
            return False
        if fact in c.counted:
            return True
        c.counted.add(fact)
        return False

    def seen_key(self, c: Customer, flow: Flow, etype: str, props: dict[str, Any]) -> str:
        """Where a flow keeps an event for seen/seen_since: its type when it names no
        action (or is not a message event); ``type/step`` when it names the action that
        step of this flow sent (the key; else this rule and a template a step already run
        sends); ``type/*`` when it names anything else."""
        key, rid = props.get("message_key"), props.get("rule_id")
        if not etype.startswith(("email_", "sms_", "push_")) or not (key or rid):
            return etype
        r = flow.recipe
        if isinstance(key, str) and key:
            for pc, op in enumerate(r.ops):
                if isinstance(op, Send) and idempotency_key(r, c.id, flow.instance_id, pc) == key:
                    return f"{etype}/{op.name or ''}"
            return f"{etype}/*"
        if rid != r.id:
            return f"{etype}/*"
        for op in reversed(r.ops[: flow.pc]):
            if isinstance(op, Send) and op.name:
                templates = {op.template} | {o[op.name] for _, _, o in r.variants if op.name in o}
                if props.get("template") in templates:
                    return f"{etype}/{op.name}"
        return f"{etype}/"

    def apply(self, c: Customer, ev: dict[str, Any]) -> None:
        """Profile, cart and recently viewed (arrival order)."""
        etype, props = ev["type"], ev.get("properties") or {}
        ctx_zone = (ev.get("context") or {}).get("timezone")
        if ctx_zone is not None and valid_zone(ctx_zone):
            c.timezone = ctx_zone
        if etype == "product_viewed":
            pid = str(props["product_id"])
            if pid in c.viewed:
                c.viewed.remove(pid)
            c.viewed.append(pid)
            c.viewed = c.viewed[-VIEWED_MAX:]
        elif etype == "cart_item_added":
            pid = str(props["product_id"])
            old_qty = c.cart[pid][0] if pid in c.cart else 0.0
            c.cart[pid] = [old_qty + number(props.get("quantity"), 1.0), number(props.get("price"))]
        elif etype == "cart_item_removed":
            pid = str(props["product_id"])
            if pid in c.cart:
                qty = props.get("quantity")
                left = 0.0 if qty is None else c.cart[pid][0] - number(qty)
                if left > 0:
                    c.cart[pid][0] = left
                else:
                    del c.cart[pid]
        elif etype == "order_completed":
            c.orders += 1
            c.ltv = round(c.ltv + number(props.get("total")), 2)
            c.cart = {}
        elif etype == "order_refunded":
            c.ltv = round(max(0.0, c.ltv - number(props.get("amount"))), 2)
        elif etype in ("customer_signed_up", "customer_updated"):
            consent = props.get("consent")
            if isinstance(consent, dict):
                for channel in ("email", "sms", "push"):
                    if isinstance(consent.get(channel), bool):
                        c.consent[channel] = consent[channel]
            if props.get("timezone") is not None and valid_zone(props["timezone"]):
                c.timezone = props["timezone"]
        elif etype in OPT_OUTS:
            # an unsubscribe / spam report / STOP, or a resubscribe / START, from a
            # provider or the storefront alike: that channel only, in arrival order
            channel, value = OPT_OUTS[etype]
            c.consent[channel] = value

    def trigger(self, r: Recipe, c: Customer, ev: dict[str, Any], ts: int, now: int) -> None:
        old = c.flows.get(r.id)
        if old is not None and not r.restart:
            return
        if old is None and r.id in c.last_entry:
            if r.reentry == "once":
                return
            if r.reentry == "once_per" and ts - c.last_entry[r.id] < r.period:
                return
        if r.filter is not None and not r.filter(ev.get("properties") or {}, c):
            return
        if r.when is not None and not r.when(c):
            return
        if old is not None:
            self.close(c, old)
        flow = Flow(
            r, ev["event_id"], ts, experiment_arm(r, c.id), dict(ev.get("properties") or {})
        )
        c.flows[r.id] = flow
        c.last_entry[r.id] = ts
        self.run(c, flow, t=ts, now=now)

    # -- steps --
    def run(self, c: Customer, flow: Flow, t: int, now: int) -> None:
        """Run ops from ``flow.pc`` with flow time ``t`` until a wait or the end."""
        ops = flow.recipe.ops
        while flow.pc < len(ops):
            op = ops[flow.pc]
            if isinstance(op, Wait | WaitUntil):
                flow.pc += 1
                if isinstance(op, Wait):
                    self.schedule(c, flow, t + op.ms)
                else:
                    self.schedule(c, flow, next_local_time(t, c.zone(), op.minute))
                return
            if isinstance(op, Branch):
                flow.pc = flow.pc + 1 if op.test(c, flow) else op.target
                continue
            if not self.send(c, flow, op, now):
                return  # waiting for the end of quiet hours
            flow.pc += 1
        self.close(c, flow)

    def send(self, c: Customer, flow: Flow, op: Send, now: int) -> bool:
        r = flow.recipe
        if r.send_if is not None and not r.send_if(c, flow):
            self.close(c, flow)  # re-checked before every send: the flow ends here
            return False
        # (1) holdout sends nothing but skips quiet hours; (2) quiet hours defer the send
        quiet = r.quiet and op.channel != "webhook"
        if flow.variant != "holdout" and quiet and in_quiet_hours(now, c.zone()):
            self.schedule(c, flow, next_local_time(now, c.zone(), QUIET_END))
            return False
        if op.name is not None:
            flow.marks[op.name] = now
        if flow.variant == "holdout" or not self.allowed(c, r, op.channel, now):
            return True
        template = op.template
        for name, _, overrides in r.variants:
            if name == flow.variant and op.name in overrides:
                template = overrides[op.name]
        key = idempotency_key(r, c.id, flow.instance_id, flow.pc)
        action = {
            "fire_at": iso(now),
            "rule_id": r.id,
            "customer_id": c.id,
            "channel": op.channel,
            "template": template,
            "params": op.params(c, flow),
            "variant": flow.variant,
            "idempotency_key": key,
        }
        self.actions.append((now, c.id, r.id, key, action))
        c.sends.append((now, r.id, op.channel))
        return True

    def allowed(self, c: Customer, r: Recipe, channel: str, now: int) -> bool:
        """Consent, then the rule's per-customer cap, then the channel cap."""
        if not c.consent.get(channel, DEFAULT_CONSENT.get(channel, False)):
            return False
        if r.cap is not None:
            limit, period = r.cap
            if sum(1 for at, rid, _ in c.sends if rid == r.id and at > now - period) >= limit:
                return False
        if channel in CHANNEL_CAPS:
            limit, period = CHANNEL_CAPS[channel]
            if sum(1 for at, _, ch in c.sends if ch == channel and at > now - period) >= limit:
                return False
        return True

    def sorted_lines(self) -> list[bytes]:
        return [orjson.dumps(a[4]) for a in sorted(self.actions, key=lambda a: a[:4])]


def oracle_lines(lines: Iterable[bytes], stats: OracleStats | None = None) -> list[bytes]:
    """The expected action lines (no trailing newlines) for a JSONL trace."""
    oracle = Oracle()

    def skipped() -> None:
        oracle.stats.skipped += 1

    for ev in trace_events(lines, skipped):
        oracle.event(ev)
    oracle.finish()
    if stats is not None:
        stats.__dict__.update(oracle.stats.__dict__)
    return oracle.sorted_lines()


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m load_tests.oracle trace.jsonl > expected.jsonl``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m load_tests.oracle trace.jsonl > expected.jsonl", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    stats = OracleStats()
    with open(args[0], "rb") as f:
        out = oracle_lines(f, stats)
    sys.stdout.buffer.write(b"".join(line + b"\n" for line in out))
    dt = time.perf_counter() - t0
    print(
        f"oracle: {stats.events} events ({stats.duplicates} duplicates, {stats.too_late} "
        f"too late, {stats.skipped} skipped), {stats.timers} timers, {len(out)} actions "
        f"in {dt:.2f}s ({stats.events / dt if dt else 0:,.0f} events/s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
