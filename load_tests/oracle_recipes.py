"""The stock recipes and settings (rules/recipes/*.yaml) written out as plain Python for
the oracle (load_tests/oracle.py), with the per-customer records it keeps and the time and
hashing helpers of docs/semantics.md. Imports nothing from engine/, rules/ or state/.

Each recipe's ``ops`` is its compiled op list (an ``if`` on a send is a Branch that jumps
over it), so an op's index is the ``pc`` in idempotency keys: abandoned-cart sends at pcs
1 and 4, welcome-series at 0, 2 and 6, the others at 0 (no wait) or 1 (after a wait).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

__all__ = [
    "ALLOWED_LATENESS",
    "BY_ID",
    "BY_PRIORITY",
    "CHANNEL_CAPS",
    "DAY",
    "DEFAULT_CONSENT",
    "DRAIN",
    "OPT_OUTS",
    "QUIET_END",
    "RECIPES",
    "VIEWED_MAX",
    "Branch",
    "Customer",
    "Flow",
    "Recipe",
    "Send",
    "Wait",
    "WaitUntil",
    "day_time",
    "experiment_arm",
    "idempotency_key",
    "in_local_window",
    "in_quiet_hours",
    "iso",
    "next_local_time",
    "number",
    "parse_ts",
    "trace_events",
    "valid_zone",
]

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
DRAIN = 400 * DAY

# --- settings.yaml -------------------------------------------------------------------
DEFAULT_TIMEZONE = "UTC"
DEFAULT_CONSENT = {"email": True, "sms": False, "push": False, "webhook": True}
CHANNEL_CAPS = {"email": (3, DAY), "sms": (1, DAY)}
ALLOWED_LATENESS = 24 * HOUR
DEDUP_RING = 32
VIEWED_MAX = 5
QUIET_START, QUIET_END = 21 * 60, 9 * 60  # "21:00-09:00", minutes after local midnight
# events that set one channel's consent (docs/semantics.md, delivery feedback)
OPT_OUTS = {
    "email_unsubscribed": ("email", False),
    "email_spam_reported": ("email", False),
    "email_resubscribed": ("email", True),
    "sms_unsubscribed": ("sms", False),
    "sms_resubscribed": ("sms", True),
}


# --- customers and flows ---------------------------------------------------------------
@dataclass
class Flow:
    """An open instance of a recipe for one customer."""

    recipe: Recipe
    instance_id: str
    started_at: int
    variant: str
    trigger: dict[str, Any]
    pc: int = 0
    due: int | None = None
    seen: dict[str, int] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)


@dataclass
class Customer:
    id: str
    timezone: str | None = None
    consent: dict[str, bool] = field(default_factory=dict)
    cart: dict[str, list[float]] = field(default_factory=dict)  # product -> [qty, price]
    orders: int = 0
    ltv: float = 0.0
    viewed: list[str] = field(default_factory=list)
    # event ids with the processing minute each was first seen at, oldest first: the
    # last DEDUP_RING always, younger ones than ALLOWED_LATENESS however many
    recent_ids: deque[tuple[str, int]] = field(default_factory=deque)
    counted: set[str] = field(default_factory=set)  # order and refund ids already counted
    ids_timed: bool = False  # the ring filled once: recent_ids' minutes count from then
    flows: dict[str, Flow] = field(default_factory=dict)
    last_entry: dict[str, int] = field(default_factory=dict)
    sends: list[tuple[int, str, str]] = field(default_factory=list)  # (at, rule, channel)

    def cart_value(self) -> float:
        return round(sum(qty * price for qty, price in self.cart.values()), 2)

    def cart_items(self) -> int:
        return int(sum(qty for qty, _ in self.cart.values()))

    def zone(self) -> str:
        return self.timezone or DEFAULT_TIMEZONE


# --- the recipes as plain Python -------------------------------------------------------
@dataclass(frozen=True)
class Wait:
    ms: int


@dataclass(frozen=True)
class WaitUntil:
    minute: int  # local minutes after midnight


@dataclass(frozen=True)
class Send:
    channel: str
    template: str
    params: Callable[[Customer, Flow], dict[str, Any]]
    name: str | None = None


@dataclass(frozen=True)
class Branch:
    """Go on with the next op when ``test`` holds, else jump to ``target``."""

    test: Callable[[Customer, Flow], bool]
    target: int


Op = Wait | WaitUntil | Send | Branch


@dataclass(frozen=True)
class Recipe:
    id: str
    priority: int
    trigger: str
    ops: tuple[Op, ...]
    when: Callable[[Customer], bool] | None = None
    # over the trigger's properties and the customer (after the event was applied)
    filter: Callable[[dict[str, Any], Customer], bool] | None = None
    restart: bool = False
    reentry: str = "always"  # always | once | once_per
    period: int = 0
    exits: tuple[tuple[str, Callable[[Customer], bool] | None], ...] = ()
    cap: tuple[int, int] | None = None
    quiet: bool = False  # 21:00-09:00 local
    holdout: int = 0  # percent
    # checked before every send (holdout too); false: the flow ends without sending
    send_if: Callable[[Customer, Flow], bool] | None = None
    variants: tuple[tuple[str, int, dict[str, str]], ...] = ()  # name, weight, step->template
    version: int = 1


def opened_since(f: Flow, etype: str, step: str) -> bool:
    """seen_since: an ``etype`` event since step ``step`` ran that names no action, or
    names the one that step sent (``Flow.seen`` keys: see Oracle.seen_key)."""
    mark = f.marks[step]
    return f.seen.get(etype, -1) >= mark or f.seen.get(f"{etype}/{step}", -1) >= mark


def _none(c: Customer, f: Flow) -> dict[str, Any]:
    return {}


def _static(**params: Any) -> Callable[[Customer, Flow], dict[str, Any]]:
    return lambda c, f: dict(params)


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "abandoned-cart",
        10,
        "cart_item_added",
        when=lambda c: c.cart_value() > 0.0,
        restart=True,
        exits=(("order_completed", None), ("cart_item_removed", lambda c: c.cart_items() == 0)),
        ops=(
            Wait(4 * HOUR),
            Send(
                "email",
                "cart_reminder",
                name="reminder",
                params=lambda c, f: {"cart_value": c.cart_value(), "items": c.cart_items()},
            ),
            Wait(4 * HOUR),
            Branch(lambda c, f: not opened_since(f, "email_opened", "reminder"), 5),
            Send("sms", "cart_10pct", _static(discount_pct=10)),
        ),
        cap=(2, 7 * DAY),
        quiet=True,
        holdout=10,
        send_if=lambda c, f: c.cart_value() > 0.0,
        variants=(("a", 45, {}), ("b", 45, {"reminder": "cart_reminder_urgent"})),
    ),
    Recipe(
        "back-in-stock",
        7,
        "product_back_in_stock",
        filter=lambda props, c: "product_id" in props and props["product_id"] not in c.cart,
        reentry="once_per",
        period=7 * DAY,
        quiet=True,
        ops=(
            Send(
                "email", "back_in_stock", lambda c, f: {"product_id": f.trigger.get("product_id")}
            ),
        ),
    ),
    Recipe(
        "welcome-series",
        5,
        "customer_signed_up",
        reentry="once",
        ops=(
            Send("email", "welcome_1", _none, name="welcome"),
            Wait(2 * DAY),
            Send("email", "welcome_2", _none),
            Wait(5 * DAY),
            Branch(lambda c, f: "order_completed" not in f.seen, 7),
            WaitUntil(10 * 60),
            Send("email", "welcome_3_offer", _static(discount_pct=15)),
        ),
    ),
    Recipe(
        "vip-segment",
        6,
        "order_completed",
        reentry="once",
        when=lambda c: c.ltv >= 500.0,
        ops=(
            Send("webhook", "vip_segment_joined", lambda c, f: {"ltv": c.ltv, "orders": c.orders}),
        ),
    ),
    Recipe(
        "loyalty-5th-order",
        4,
        "order_completed",
        reentry="once",
        when=lambda c: c.orders == 5,
        ops=(Send("email", "loyalty_5th_order", _none),),
    ),
    Recipe(
        "win-back",
        3,
        "order_completed",
        restart=True,
        quiet=True,
        ops=(Wait(60 * DAY), Send("email", "win_back", _static(discount_pct=20))),
    ),
    Recipe(
        "review-request",
        2,
        "order_delivered",
        quiet=True,
        exits=(("order_refunded", None),),
        ops=(
            Wait(3 * DAY),
            Send("email", "review_request", lambda c, f: {"order_id": f.trigger.get("order_id")}),
        ),
    ),
    Recipe(
        "browse-abandonment",
        1,
        "product_viewed",
        restart=True,
        reentry="once_per",
        period=7 * DAY,
        quiet=True,
        exits=(("cart_item_added", None), ("order_completed", None)),
        send_if=lambda c, f: c.cart_items() == 0,
        ops=(
            Wait(2 * HOUR),
            Send(
                "email",
                "browse_reminder",
                lambda c, f: {
                    "product_id": f.trigger.get("product_id"),
                    "recently_viewed": list(c.viewed),
                },
            ),
        ),
    ),
)
BY_PRIORITY = sorted(RECIPES, key=lambda r: (-r.priority, r.id))
BY_ID = {r.id: r for r in RECIPES}


# --- time helpers -------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_ts(text: str) -> int:
    """RFC 3339 with offset -> epoch ms (exact integer arithmetic)."""
    delta = datetime.fromisoformat(text) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def iso(ms: int) -> str:
    """Epoch ms -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def valid_zone(name: Any) -> bool:
    if not isinstance(name, str) or not name or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def day_time(day: date, minute: int, zone: str) -> int:
    """When a local date's ``minute`` (after midnight) comes, in epoch ms: the first instant
    of that date at which the local clock shows that time or later. So: the wall time
    itself; the first of the two when the clocks go back over it; the moment the clocks
    jump when they skip it (02:30 on a night 02:00 becomes 03:00: at 03:00)."""
    tz = ZoneInfo(zone)
    wall = datetime.combine(day, clock_time(minute // 60, minute % 60))
    candidates = {int(wall.replace(tzinfo=tz, fold=fold).timestamp()) for fold in (0, 1)}
    exact = [s for s in candidates if datetime.fromtimestamp(s, tz).replace(tzinfo=None) == wall]
    if exact:
        return min(exact) * 1000
    # skipped: from an instant after the jump, step back (minutes, then seconds) while the
    # clock still shows ``wall`` or later
    at = max(candidates)
    for step in (60, 1):
        while datetime.fromtimestamp(at - step, tz).replace(tzinfo=None) >= wall:
            at -= step
    return at * 1000


def _local_date(ms: int, zone: str) -> date:
    return datetime.fromtimestamp(ms // 1000, tz=ZoneInfo(zone)).date()


def next_local_time(ms: int, zone: str, minute: int) -> int:
    """The first ``day_time`` of ``minute`` strictly after ``ms``."""
    today = _local_date(ms, zone)
    for days in range(4):
        at = day_time(today + timedelta(days=days), minute, zone)
        if at > ms:
            return at
    raise AssertionError("a local time of day recurs within four days")


def in_local_window(ms: int, zone: str, start: int, end: int) -> bool:
    """Inside [start, end) local: one of the windows running from a date's ``start`` to
    that date's ``end`` (or the next date's, when ``start > end``: it wraps midnight)
    holds ``ms``; ``start == end``: never."""
    if start == end:
        return False
    today = _local_date(ms, zone)
    for days in range(-2, 2):
        opens = day_time(today + timedelta(days=days), start, zone)
        closes = day_time(today + timedelta(days=days + (start > end)), end, zone)
        if opens <= ms < closes:
            return True
    return False


def in_quiet_hours(ms: int, zone: str) -> bool:
    return in_local_window(ms, zone, QUIET_START, QUIET_END)


def number(value: Any, default: float = 0.0) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default


def experiment_arm(recipe: Recipe, customer_id: str) -> str:
    if not recipe.variants:
        return "default"
    digest = hashlib.blake2b(f"{recipe.id}\0{customer_id}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 10_000
    if bucket < recipe.holdout * 100:
        return "holdout"
    bound = recipe.holdout * 100
    for name, weight, _ in recipe.variants:
        bound += weight * 100
        if bucket < bound:
            return name
    return recipe.variants[-1][0]


def idempotency_key(recipe: Recipe, customer_id: str, instance_id: str, pc: int) -> str:
    raw = f"{recipe.id}\0{recipe.version}\0{customer_id}\0{instance_id}\0{pc}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def _is_event(ev: Any) -> bool:
    return isinstance(ev, dict) and all(
        isinstance(ev.get(k), str) and ev[k]
        for k in ("event_id", "type", "customer_id", "timestamp")
    )


def trace_events(lines: Iterable[bytes], on_skip: Callable[[], None]) -> Iterator[dict[str, Any]]:
    """The events of a JSONL trace, as dicts with the envelope's keys; blank lines are
    passed over, a line that is not an event object calls ``on_skip``."""
    for line in lines:
        if not line.strip():
            continue
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            on_skip()
            continue
        if _is_event(ev):
            yield ev
        else:
            on_skip()
