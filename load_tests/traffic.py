"""Deterministic, streaming generator of realistic storefront traffic.

Contract:

- ``generate(config)`` yields event dicts in the engine's envelope (``event_id``, ``type``,
  ``customer_id``, ``timestamp`` RFC 3339 with an offset, ``properties``, ``context``) in
  *send order*: the order a client would post them. Same config (including ``seed``), same
  sequence, byte for byte once serialized with orjson.
- It stops after ``config.events`` events (duplicates and late events included) or when
  every customer's life has ended, whichever comes first.
- Nothing is materialized: a heap merges per-customer sessions by time; what it holds at
  any moment is O(active customers + in-flight events), never O(trace).
- Model: ``customers`` customers arrive over the first 70% of ``days`` (``new_share`` of
  them sign up, with mixed consent and a time zone); each has browsing sessions
  (page_viewed, product_viewed, cart adds/removes, checkout_started, order_completed),
  orders are delivered 1-5 days later and sometimes refunded; consent changes
  (customer_updated) and email/sms engagement (email_opened, email_clicked, sms_clicked)
  happen with small probabilities. A ``back_in_stock_share`` of product views find the
  product sold out: the customer asks to be told (back_in_stock_requested) and most of
  the time the storefront sends them product_back_in_stock 6h to 10 days later (the
  per-subscriber restock event; 0 turns this off and leaves the rest of the trace as it
  was before these events existed). A share of events is re-sent (same ``event_id``:
  ``duplicate_share`` of all lines) and a share is held back and sent late
  (``late_share``): mostly by up to ``late_minutes``, a ``late_long_share`` of them by
  24h to ``late_long_hours`` and a ``late_hours_share`` of them (default none) by 1h to
  23h (offline devices syncing: late enough for a flow's first wait to be due already).
- The yielded dicts are fresh per event except that a duplicate is the *same* dict object
  as its original; treat them as read-only.

Uses only the standard library and orjson. CLI::

    python -m load_tests.traffic --customers 100000 --events 1000000 --seed 1 -o trace.jsonl
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

__all__ = ["DST_TIMEZONES", "TIMEZONES", "Traffic", "TrafficConfig", "generate", "main"]

DEFAULT_START = 1_767_571_200_000  # 2026-01-05T00:00:00Z
_S = 1000
_MIN = 60 * _S
_H = 60 * _MIN
_DAY = 24 * _H

TIMEZONES: tuple[str, ...] = (
    "Europe/Paris",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Asia/Kolkata",
    "Australia/Sydney",
    "UTC",
)
DST_TIMEZONES: tuple[str, ...] = (*TIMEZONES, "Australia/Lord_Howe")
"""TIMEZONES and a zone whose clocks move by 30 minutes (Lord Howe Island)."""
_LOCALES = ("fr-FR", "en-GB", "en-US", "en-US", "ja-JP", "en-IN", "en-AU", "en")
# the stock rules whose emails the generator's templates are (others: "newsletter")
_RULE_OF = {"cart_reminder": "abandoned-cart", "welcome_1": "welcome-series"}
_CATEGORIES = ("shoes", "bags", "shirts", "jackets", "accessories", "beauty", "home")


@dataclass(frozen=True)
class TrafficConfig:
    """What to generate. Times are epoch milliseconds UTC; shares are in [0, 1)."""

    customers: int = 10_000
    events: int = 100_000
    seed: int = 1
    start: int = DEFAULT_START
    days: float = 28.0
    duplicate_share: float = 0.01
    late_share: float = 0.02
    late_minutes: float = 30.0
    late_long_share: float = 0.1
    late_long_hours: float = 72.0
    late_hours_share: float = 0.0
    new_share: float = 0.4
    products: int = 2_000
    back_in_stock_share: float = 0.02
    # opt-outs the storefront sends itself (email_unsubscribed, sms_unsubscribed, ...)
    # after a session; 0 (the default) leaves the trace as it was before they existed
    unsubscribe_share: float = 0.0
    # the zones customers live in (DST_TIMEZONES adds a 30-minute DST shift)
    timezones: tuple[str, ...] = TIMEZONES
    # opens and clicks naming the action they are about, as provider feedback does:
    # rule_id and template (a stock rule's email, or another rule's), some with a
    # message_key of an action that is not this flow's; 0 leaves the trace as it was
    attributed_share: float = 0.0
    # storefront retries: an order or refund re-sent under a new event id 1-72 h later,
    # and duplicates re-sent 2-20 h later (past a busy customer's last 32 ids); refunds
    # carry a refund_id; 0 leaves the trace as it was
    retry_share: float = 0.0


# heap item kinds
_EVENT = 0  # a fresh event: (ts, customer, type, properties)
_LATE = 1  # a held-back event dict, released now (may still be duplicated)
_DUP = 2  # a re-sent event dict
_SESSION = 3  # a customer's next session starts
_ARRIVAL = 4  # the next customer arrives


class _Customer:
    __slots__ = ("cart", "cid", "ctx", "local_offset", "orders", "tz")

    def __init__(self, cid: str, tz: str | None, local_offset: bool, locale: str) -> None:
        self.cid = cid
        self.tz = tz
        self.local_offset = local_offset
        self.cart: dict[str, int] = {}
        self.orders = 0
        self.ctx: dict[str, Any] = {"channel": "web", "locale": locale}
        if tz is not None:
            self.ctx["timezone"] = tz


class Traffic:
    """The generator's state; iterate it once. ``max_pending`` is the high-water mark of
    the merge heap (the streaming bound: it scales with active customers, not events)."""

    def __init__(self, config: TrafficConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.heap: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.max_pending = 0
        self.end = config.start + int(config.days * _DAY)
        self.arrival_mean = max(1.0, 0.7 * config.days * _DAY / max(1, config.customers))
        per_customer = config.events / max(1, config.customers)
        extra_sessions = max(0.1, 1.2 * per_customer / 6.5 - 1.0)  # ~6.5 events a session
        self.session_gap = max(float(_H), 0.65 * config.days * _DAY / extra_sessions)
        n = max(1, config.products)
        self.prices = [round(4.99 + (i * 7919 % 190) + (i % 3) * 0.5, 2) for i in range(n)]
        self.skus = [f"sku-{i:05d}" for i in range(n)]
        self.arrived = 0
        self.next_event = 0
        self.next_order = 0
        self._offsets: dict[tuple[str, int], int] = {}
        self._zones = {tz: ZoneInfo(tz) for tz in config.timezones}
        self._prefix: dict[int, str] = {}

    # -- scheduling ------------------------------------------------------------------

    def _push(self, send_ts: int, kind: int, obj: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (send_ts, self.seq, kind, obj))

    def _ev(self, ts: int, c: _Customer, typ: str, props: dict[str, Any]) -> None:
        self._push(ts, _EVENT, (ts, c, typ, props))

    # -- formatting ------------------------------------------------------------------

    def _stamp(self, ts: int, c: _Customer) -> str:
        """RFC 3339 with milliseconds; ``Z``, or the customer's local offset."""
        off = 0
        if c.local_offset and c.tz is not None:
            key = (c.tz, ts // _H)
            off = self._offsets.get(key, -1)
            if off == -1:
                dt = datetime.fromtimestamp(ts // 1000, tz=self._zones[c.tz])
                delta = dt.utcoffset()
                off = 0 if delta is None else int(delta.total_seconds()) * 1000
                self._offsets[key] = off
        local = ts + off
        sec = local // 1000
        prefix = self._prefix.get(sec // 60)
        if prefix is None:
            if len(self._prefix) > 100_000:
                self._prefix.clear()
            prefix = time.strftime("%Y-%m-%dT%H:%M:", time.gmtime(sec - sec % 60))
            self._prefix[sec // 60] = prefix
        body = f"{prefix}{sec % 60:02d}.{local % 1000:03d}"
        if not c.local_offset or c.tz is None:
            return body + "Z"
        sign = "+" if off >= 0 else "-"
        mins = abs(off) // _MIN
        return f"{body}{sign}{mins // 60:02d}:{mins % 60:02d}"

    def _build(self, ts: int, c: _Customer, typ: str, props: dict[str, Any]) -> dict[str, Any]:
        self.next_event += 1
        return {
            "event_id": f"ev-{self.cfg.seed}-{self.next_event:09d}",
            "type": typ,
            "customer_id": c.cid,
            "timestamp": self._stamp(ts, c),
            "properties": props,
            "context": dict(c.ctx),
        }

    # -- the customer model ----------------------------------------------------------

    def _arrive(self, now: int) -> None:
        rng = self.rng
        i = self.arrived
        self.arrived += 1
        zones = self.cfg.timezones
        k = rng.randrange(len(zones))
        tz: str | None = zones[k] if rng.random() < 0.9 else None
        locale = _LOCALES[k] if k < len(_LOCALES) else "en"
        c = _Customer(f"cus-{i:07d}", tz, rng.random() < 0.3, locale)
        if rng.random() < 0.2:
            c.ctx["channel"] = "app"
        if rng.random() < self.cfg.new_share:
            self._sign_up(now, c)
            now += rng.randrange(2 * _S, 60 * _S)
        self._push(now, _SESSION, c)
        if self.arrived < self.cfg.customers:
            self._push(now + int(rng.expovariate(1.0 / self.arrival_mean)) + 1, _ARRIVAL, None)

    def _sign_up(self, ts: int, c: _Customer) -> None:
        rng = self.rng
        consent: dict[str, bool] = {}
        r = rng.random()
        if r < 0.7:
            consent["email"] = True
        elif r < 0.85:
            consent["email"] = False
        r = rng.random()
        if r < 0.3:
            consent["sms"] = True
        elif r < 0.7:
            consent["sms"] = False
        if rng.random() < 0.2:
            consent["push"] = rng.random() < 0.5
        props: dict[str, Any] = {"consent": consent}
        if c.tz is not None and rng.random() < 0.8:
            props["timezone"] = c.tz
        if rng.random() < 0.3:
            props["attributes"] = {"source": rng.choice(("ads", "organic", "referral"))}
        self._ev(ts, c, "customer_signed_up", props)

    def _session(self, t: int, c: _Customer) -> None:
        rng = self.rng
        ev = self._ev
        n = len(self.skus)

        def step() -> int:
            return rng.randrange(5 * _S, 180 * _S)

        for _ in range(1 + (rng.random() < 0.5)):
            ev(t, c, "page_viewed", {"url": "/", "title": "Home"})
            t += step()
        viewed: list[int] = []
        for _ in range(int(rng.expovariate(1 / 3.0)) + (0 if c.cart else 1)):
            p = min(n - 1, int(rng.paretovariate(1.2)) - 1 + rng.randrange(n) // 8)
            viewed.append(p)
            props = {"product_id": self.skus[p], "price": self.prices[p]}
            props["category"] = _CATEGORIES[p % len(_CATEGORIES)]
            ev(t, c, "product_viewed", props)
            t += step()
            if self.cfg.back_in_stock_share > 0 and rng.random() < self.cfg.back_in_stock_share:
                viewed.pop()  # sold out: not added to the cart
                self._back_in_stock(t, c, self.skus[p])
                t += step()
        if viewed and rng.random() < 0.35:
            for p in viewed[: rng.randrange(1, 4)]:
                qty = 1 if rng.random() < 0.85 else 2
                ev(
                    t,
                    c,
                    "cart_item_added",
                    {"product_id": self.skus[p], "price": self.prices[p], "quantity": qty},
                )
                c.cart[self.skus[p]] = c.cart.get(self.skus[p], 0) + qty
                t += step()
        if c.cart and rng.random() < 0.15:
            sku = rng.choice(sorted(c.cart))
            props = {"product_id": sku}
            if c.cart[sku] > 1 and rng.random() < 0.5:
                props["quantity"] = 1
                c.cart[sku] -= 1
            else:
                del c.cart[sku]
            ev(t, c, "cart_item_removed", props)
            t += step()
        if c.cart and rng.random() < 0.45:
            total = round(sum(self.prices[int(s[4:])] * q for s, q in c.cart.items()), 2)
            ev(t, c, "checkout_started", {"cart_value": total})
            t += step()
            if rng.random() < 0.7:
                self._order(t, c, total)
                t += step()
        self._engagement(t, c)
        if rng.random() < 0.03:
            self._consent_change(t + rng.randrange(_MIN, 6 * _H), c)
        if self.cfg.unsubscribe_share > 0 and rng.random() < self.cfg.unsubscribe_share:
            self._opt_out(t + rng.randrange(_MIN, 12 * _H), c)
        nxt = t + int(rng.expovariate(1.0 / self.session_gap)) + 10 * _MIN
        if nxt < self.end:
            self._push(nxt, _SESSION, c)

    def _order(self, t: int, c: _Customer, total: float) -> None:
        rng = self.rng
        self.next_order += 1
        oid = f"ord-{self.cfg.seed}-{self.next_order:08d}"
        items = sum(c.cart.values())
        order = {"order_id": oid, "total": total, "currency": "EUR", "items": items}
        self._ev(t, c, "order_completed", order)
        c.cart.clear()
        c.orders += 1
        delivered = t + rng.randrange(_DAY, 5 * _DAY)
        self._ev(delivered, c, "order_delivered", {"order_id": oid})
        retry = self.cfg.retry_share
        if retry > 0 and rng.random() < retry:
            self._retry(t, c, "order_completed", order)
        if rng.random() < 0.06:
            when = delivered + rng.randrange(-_DAY // 2, 10 * _DAY)
            amount = total if rng.random() < 0.7 else round(total / 2, 2)
            refund: dict[str, Any] = {"order_id": oid, "amount": amount}
            if retry > 0 and rng.random() < 0.5:
                refund["refund_id"] = f"rf-{oid}"
            self._ev(when, c, "order_refunded", refund)
            if retry > 0 and rng.random() < retry * 5:
                self._retry(when, c, "order_refunded", refund)

    def _retry(self, ts: int, c: _Customer, typ: str, props: dict[str, Any]) -> None:
        """The storefront sends ``typ`` again under a new event id, stamped ``ts``,
        1-72 h later (a lost acknowledgement)."""
        again = self._build(ts, c, typ, dict(props))
        self._push(ts + self.rng.randrange(_H, 72 * _H), _LATE, again)

    def _back_in_stock(self, t: int, c: _Customer, sku: str) -> None:
        """The customer asks to be told when ``sku`` is back; usually it comes back."""
        rng = self.rng
        self._ev(t, c, "back_in_stock_requested", {"product_id": sku})
        if rng.random() < 0.8:
            restock = t + rng.randrange(6 * _H, 10 * _DAY)
            self._ev(restock, c, "product_back_in_stock", {"product_id": sku})

    def _engagement(self, t: int, c: _Customer) -> None:
        rng = self.rng
        if rng.random() < 0.25:
            at = t + rng.randrange(10 * _MIN, 20 * _H)
            tpl = rng.choice(("newsletter", "cart_reminder", "welcome_1", "promo"))
            props: dict[str, Any] = {"template": tpl}
            if self.cfg.attributed_share > 0 and rng.random() < self.cfg.attributed_share:
                props["rule_id"] = _RULE_OF.get(tpl, "newsletter")
                if rng.random() < 0.2:  # an action of another flow, named by its key
                    props["message_key"] = f"{rng.getrandbits(128):032x}"
            self._ev(at, c, "email_opened", props)
            if rng.random() < 0.3:
                self._ev(at + rng.randrange(5 * _S, 10 * _MIN), c, "email_clicked", props)
        if rng.random() < 0.03:
            self._ev(t + rng.randrange(_MIN, 8 * _H), c, "sms_clicked", {"template": "promo"})

    def _consent_change(self, t: int, c: _Customer) -> None:
        rng = self.rng
        r = rng.random()
        props: dict[str, Any]
        if r < 0.45:
            props = {"consent": {"email": rng.random() < 0.4}}
        elif r < 0.9:
            props = {"consent": {"sms": rng.random() < 0.6}}
        else:
            tz = rng.choice(self.cfg.timezones)
            props = {"timezone": tz}
            c.tz = tz
            c.ctx = dict(c.ctx, timezone=tz)
        self._ev(t, c, "customer_updated", props)

    def _opt_out(self, t: int, c: _Customer) -> None:
        """An unsubscribe (or a change of mind) the storefront sends itself: from its
        preference centre (``context.source``) or with no source named."""
        rng = self.rng
        r = rng.random()
        typ = (
            "email_unsubscribed"
            if r < 0.5
            else "sms_unsubscribed"
            if r < 0.75
            else "email_spam_reported"
            if r < 0.85
            else "email_resubscribed"
            if r < 0.95
            else "sms_resubscribed"
        )
        props: dict[str, Any] = {}
        if typ.startswith("email") and rng.random() < 0.5:
            props["template"] = rng.choice(("newsletter", "cart_reminder", "promo"))
        ev = self._build(t, c, typ, props)  # built now: its own context
        if rng.random() < 0.5:
            ev["context"]["source"] = "preference_center"
        self._push(t, _LATE, ev)

    # -- the merge loop --------------------------------------------------------------

    def _maybe_dup(self, send_ts: int, event: dict[str, Any]) -> None:
        rng = self.rng
        if rng.random() < self.p_dup:
            gap = (
                rng.randrange(100, 30 * _S)
                if rng.random() < 0.8
                else rng.randrange(30 * _S, 2 * _H)
            )
            if self.cfg.retry_share > 0 and rng.random() < 0.2:
                gap = rng.randrange(2 * _H, 20 * _H)  # within the 24h the id is held
            self._push(send_ts + gap, _DUP, event)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        rng = self.rng
        d = min(0.9, max(0.0, cfg.duplicate_share))
        self.p_dup = d / (1.0 - d)
        late = cfg.late_share
        late_short = max(1, int(cfg.late_minutes * _MIN))
        long_lo, long_hi = _DAY + _MIN, max(_DAY + 2 * _MIN, int(cfg.late_long_hours * _H))
        if cfg.customers > 0:
            self._push(cfg.start, _ARRIVAL, None)
        heap = self.heap
        pop = heapq.heappop
        emitted = 0
        while heap and emitted < cfg.events:
            if len(heap) > self.max_pending:
                self.max_pending = len(heap)
            send_ts, _, kind, obj = pop(heap)
            if kind == _EVENT:
                ts, c, typ, props = obj
                event = self._build(ts, c, typ, props)
                if late > 0 and rng.random() < late:
                    r = rng.random()
                    if r < cfg.late_long_share:
                        delay = rng.randrange(long_lo, long_hi)
                    elif r < cfg.late_long_share + cfg.late_hours_share:
                        delay = rng.randrange(_H, 23 * _H)
                    else:
                        delay = rng.randrange(1, late_short) if late_short > 1 else 1
                    self._push(send_ts + delay, _LATE, event)
                    continue
            elif kind == _SESSION:
                self._session(send_ts, obj)
                continue
            elif kind == _ARRIVAL:
                self._arrive(send_ts)
                continue
            else:
                event = obj
            emitted += 1
            yield event
            if kind != _DUP:
                self._maybe_dup(send_ts, event)

    p_dup: float = 0.0


def generate(config: TrafficConfig) -> Iterator[dict[str, Any]]:
    """Stream ``config``'s traffic (see the module docstring for the contract)."""
    return iter(Traffic(config))


def main(argv: list[str] | None = None) -> int:
    """CLI: write the trace as JSONL (``-o -`` for stdout); stats go to stderr."""
    ap = argparse.ArgumentParser(
        prog="python -m load_tests.traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrafficConfig()
    ap.add_argument("--customers", type=int, default=d.customers)
    ap.add_argument("--events", type=int, default=d.events)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--start", default=None, help="RFC 3339 or epoch ms (default 2026-01-05Z)")
    ap.add_argument("--days", type=float, default=d.days)
    ap.add_argument("--duplicate-share", type=float, default=d.duplicate_share)
    ap.add_argument("--late-share", type=float, default=d.late_share)
    ap.add_argument("--late-minutes", type=float, default=d.late_minutes)
    ap.add_argument("--late-long-share", type=float, default=d.late_long_share)
    ap.add_argument("--late-long-hours", type=float, default=d.late_long_hours)
    ap.add_argument("--late-hours-share", type=float, default=d.late_hours_share)
    ap.add_argument("--new-share", type=float, default=d.new_share)
    ap.add_argument("--back-in-stock-share", type=float, default=d.back_in_stock_share)
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args(argv)
    start = DEFAULT_START
    if args.start is not None:
        s = str(args.start)
        start = (
            int(s)
            if s.isdigit()
            else int(datetime.fromisoformat(s).astimezone(UTC).timestamp() * 1000)
        )
    cfg = TrafficConfig(
        customers=args.customers,
        events=args.events,
        seed=args.seed,
        start=start,
        days=args.days,
        duplicate_share=args.duplicate_share,
        late_share=args.late_share,
        late_minutes=args.late_minutes,
        late_long_share=args.late_long_share,
        late_long_hours=args.late_long_hours,
        late_hours_share=args.late_hours_share,
        new_share=args.new_share,
        back_in_stock_share=args.back_in_stock_share,
    )
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    t0 = time.perf_counter()
    n = 0
    dumps = orjson.dumps
    buf: list[bytes] = []
    try:
        for ev in generate(cfg):
            buf.append(dumps(ev))
            n += 1
            if len(buf) >= 4096:
                out.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            out.write(b"\n".join(buf) + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    dt = time.perf_counter() - t0
    print(f"{n} events in {dt:.2f}s ({n / dt if dt else 0:,.0f}/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
