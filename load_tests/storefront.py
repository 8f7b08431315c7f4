"""A deterministic synthetic storefront trace, streamed in time order (for the core
benchmark; the load-testing kit's richer generator lives in load_tests/traffic.py).

Each customer has sessions spread over ``days``: page and product views, sometimes cart
adds (and removes), a checkout and an order, a delivery a few days later, email opens;
about a third sign up during the trace. Customers' event streams are merged by time with a
heap, so memory is O(customers), not O(events).

    python -m load_tests.storefront --customers 100000 --events 1000000 -o trace.jsonl
"""

from __future__ import annotations

import argparse
import heapq
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["StorefrontConfig", "storefront"]

_MIN = 60_000
_DAY = 86_400_000
_ZONES = [
    "Europe/Paris",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "UTC",
]


@dataclass(frozen=True)
class StorefrontConfig:
    customers: int = 100_000
    events: int = 1_000_000
    seed: int = 1
    start: int = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)
    days: int = 30


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{ms % 1000:03d}Z"
    )


def _start(i: int, cfg: StorefrontConfig) -> int:
    return cfg.start + random.Random(cfg.seed * 7_919 + i).randrange(cfg.days * _DAY)


def _customer(i: int, cfg: StorefrontConfig, per_customer: float) -> list[Any]:
    """(time, type, properties) of one customer, sorted by time."""
    return sorted(_story(i, cfg, per_customer), key=lambda e: e[0])


def _story(
    i: int, cfg: StorefrontConfig, per_customer: float
) -> Iterator[tuple[int, str, dict[str, Any]]]:
    rng = random.Random(cfg.seed * 1_000_003 + i)
    t = _start(i, cfg)
    zone = rng.choice(_ZONES)
    budget = max(2, int(rng.expovariate(1 / per_customer)))
    if rng.random() < 0.35:
        yield (
            t,
            "customer_signed_up",
            {"consent": {"email": rng.random() < 0.9, "sms": rng.random() < 0.4}, "timezone": zone},
        )
        budget -= 1
    orders = 0
    while budget > 0:
        cart: list[str] = []
        for _ in range(rng.randint(1, 8)):  # one session
            t += rng.randint(20_000, 5 * _MIN)
            if rng.random() < 0.4:
                yield t, "page_viewed", {"url": f"/c/{rng.randrange(40)}"}
            else:
                pid = f"p{int(rng.paretovariate(1.2)) % 2000}"
                yield t, "product_viewed", {"product_id": pid, "price": 25.0}
                if rng.random() < 0.25:
                    t += rng.randint(5_000, 60_000)
                    cart.append(pid)
                    yield (
                        t,
                        "cart_item_added",
                        {
                            "product_id": pid,
                            "price": float(rng.choice([9, 25, 49, 120])),
                            "quantity": 1,
                        },
                    )
            budget -= 1
        if cart and rng.random() < 0.1:
            t += 30_000
            yield t, "cart_item_removed", {"product_id": cart.pop()}
        if cart and rng.random() < 0.45:
            t += rng.randint(60_000, 10 * _MIN)
            yield t, "checkout_started", {}
            if rng.random() < 0.75:
                orders += 1
                order = f"o{i}-{orders}"
                yield (
                    t + 60_000,
                    "order_completed",
                    {"order_id": order, "total": float(rng.randint(15, 400))},
                )
                yield t + rng.randint(2, 4) * _DAY, "order_delivered", {"order_id": order}
                budget -= 2
        if rng.random() < 0.3:
            yield t + rng.randint(1, 8) * 3_600_000, "email_opened", {}
            budget -= 1
        t += int(rng.expovariate(1 / (3 * _DAY)))  # until the next visit


def storefront(cfg: StorefrontConfig) -> Iterator[dict[str, Any]]:
    """Up to ``cfg.events`` events in time order. A customer's story is built when the
    merge reaches its first event, so only active customers are held in memory."""
    per_customer = cfg.events / cfg.customers
    starts = sorted((_start(i, cfg), i) for i in range(cfg.customers))
    heap: list[tuple[int, int, int, str, dict[str, Any], Iterator[Any]]] = []
    nxt_start = 0
    n = 0
    while n < cfg.events:
        while nxt_start < len(starts) and (not heap or starts[nxt_start][0] <= heap[0][0]):
            i = starts[nxt_start][1]
            nxt_start += 1
            it = iter(_customer(i, cfg, per_customer))
            first = next(it, None)
            if first is not None:
                heapq.heappush(heap, (first[0], i, 0, first[1], first[2], it))
        if not heap:
            return
        t, i, k, etype, props, it = heap[0]
        yield {
            "event_id": f"e{i}-{k}",
            "type": etype,
            "customer_id": f"c{i}",
            "timestamp": _iso(t),
            "properties": props,
        }
        n += 1
        nxt = next(it, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt[0], i, k + 1, nxt[1], nxt[2], it))
        del t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="synthetic storefront trace (JSONL)")
    p.add_argument("--customers", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-o", "--output", default="-")
    args = p.parse_args(argv)
    cfg = StorefrontConfig(customers=args.customers, events=args.events, seed=args.seed)
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        for ev in storefront(cfg):
            out.write(orjson.dumps(ev) + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
