"""``nudge run --demo``: a small synthetic storefront feeding the running engine, and a
live print of every rule fire. The demo's clock runs 1800 times real time (4 hours in 8
seconds) so abandoned carts, browse abandonment and welcome series fire within a minute."""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
from typing import Any

import orjson

from engine.clock import Clock
from engine.embedded.runtime import Runtime
from engine.events import decode_event
from engine.output import Output
from engine.types import iso

__all__ = ["run_demo"]

_PRODUCTS = [("sneaker-42", 89.0), ("hoodie-m", 49.0), ("cap", 19.0), ("jacket", 159.0)]
_ZONES = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC"]


def _print_fires(out: Output) -> None:
    for a in out.actions:
        sys.stdout.write(
            f"{iso(a.fire_at)}  FIRE {a.rule_id:<20} {a.channel:<8} "
            f"{a.template:<22} -> {a.customer_id} {orjson.dumps(a.params).decode()}\n"
        )
    for f in out.fires:
        if f.outcome != "sent":
            sys.stdout.write(
                f"{iso(f.at)}  {f.outcome.upper():<12} {f.rule_id} "
                f"({f.channel}, variant {f.variant})\n"
            )
    sys.stdout.flush()


async def run_demo(runtime: Runtime, clock: Clock, seed: int = 7) -> None:
    """Every virtual few minutes a shopper signs up, browses, fills a cart and maybe buys."""
    runtime.observers.append(_print_fires)
    rng = random.Random(seed)
    ids = itertools.count(1)
    shoppers = itertools.count(1)
    while True:
        cid = f"demo-{next(shoppers)}"
        zone = rng.choice(_ZONES)
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "customer_signed_up",
                {"consent": {"email": True, "sms": rng.random() < 0.6}, "timezone": zone},
            )
        ]
        for pid, price in rng.sample(_PRODUCTS, 2):
            events.append(("product_viewed", {"product_id": pid}))
            if rng.random() < 0.6:
                events.append(
                    ("cart_item_added", {"product_id": pid, "price": price, "quantity": 1})
                )
        if rng.random() < 0.3:
            events.append(("order_completed", {"order_id": f"o-{cid}", "total": 99.0}))
        for etype, props in events:
            raw = orjson.dumps(
                {
                    "event_id": f"demo-{next(ids)}",
                    "type": etype,
                    "customer_id": cid,
                    "timestamp": iso(clock.now()),
                    "properties": props,
                    "context": {"timezone": zone},
                }
            )
            await runtime.accept(([decode_event(raw)], b"[" + raw + b"]"))
            sys.stdout.write(f"{iso(clock.now())}  event {etype:<20} {cid}\n")
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.0)
