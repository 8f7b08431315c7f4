"""Abandoned cart as a bare faust-streaming app: one ``app.agent`` over the events topic
and an ``app.Table`` (customer id -> state dict) — the layout faust's docs recommend.

    python -m load_tests.peers.faust_cart BOOTSTRAP TOPIC APP_ID EXPECTED RESULT_FILE

Consumes ``EXPECTED`` events (keyed by customer id), sends actions to ``<APP_ID>-actions``,
then writes ``{"processed", "seconds", "events_per_second", "emails", "sms", ...}`` to
RESULT_FILE and stops (faust redirects stdout into its logger, hence the file).

Where faust cannot express the rule as specified (faust-streaming 0.15.3):

* **No event-time or per-key timers.** faust's only scheduling primitive is
  ``@app.timer(interval=...)``/``@app.crontab``: wall-clock, per *app* (or leader), not per
  key and not in event time. A replayed 28-day trace runs in seconds, so a wall-clock 4h
  wait never elapses; and a timer cannot write the table anyway: table writes outside
  stream iteration raise ``RuntimeError("Cannot modify table outside of agent/stream.")``
  (faust/tables/base.py:300 ``_send_changelog``; ``partition_for_key`` raises
  ``TypeError("Cannot modify table key from outside of stream iteration")``), because the
  changelog partition is taken from the *current event*. So no ``@app.timer`` here.
* What this app does instead: event-time timers driven by the *partition's* stream time.
  The agent keeps, per partition, the highest event time seen and an in-memory heap of
  (due, customer); before each event it fires every timer in that partition due by then
  (writes are legal: we are inside stream iteration, same partition). Consequences: a
  timer fires only when *some* later event arrives on its partition (a quiet partition
  stalls its timers); nothing fires after the last event (the engine's backtest drains
  timers 400 days past the end; here the trailing ~8h of flows never fire); the heap is
  not persisted (after a rebalance/restart it would have to be rebuilt by scanning the
  recovered table — not done here).
* The engine's clock is global (max event time over all customers); here it is per
  partition, so lateness (24h "too late to trigger") is judged against a slightly
  different ``now``.
"""

from __future__ import annotations

import heapq
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import faust
import orjson

from engine.distributed.config import WorkerConfig
from load_tests.peers.cart_rule import due, fire_due, on_event, ts_ms

PARTITIONS = 4


def build(bootstrap: str, topic: str, app_id: str, expected: int, result_file: str) -> faust.App:
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=WorkerConfig.datadir,  # not an empty <app-id>-data in the working directory
        topic_partitions=PARTITIONS,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_standby_replicas=0,
    )
    Path(app.conf.datadir).mkdir(parents=True, exist_ok=True)
    source = app.topic(topic, key_type=str, value_type=bytes, value_serializer="raw")
    actions = app.topic(f"{app_id}-actions", key_type=str, value_type=bytes,
                        value_serializer="raw")  # fmt: skip
    carts = app.Table("carts", default=None, partitions=PARTITIONS)
    stream_time: dict[int, int] = {}
    timers: dict[int, list[tuple[int, str]]] = {}
    stats: dict[str, Any] = {"processed": 0, "duplicates": 0, "emails": 0, "sms": 0}
    t_first: list[float] = []

    async def emit(out: list[dict[str, Any]]) -> None:
        for a in out:
            stats["emails" if a["channel"] == "email" else "sms"] += 1
            await actions.send(key=a["customer_id"], value=orjson.dumps(a))

    @app.agent(source)
    async def abandoned_cart(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            if not t_first:
                t_first.append(time.monotonic())
            ev = orjson.loads(event.value)
            cid = ev["customer_id"]
            part = event.message.partition
            now = max(stream_time.get(part, 0), ts_ms(ev["timestamp"]))
            stream_time[part] = now
            heap = timers.setdefault(part, [])
            while heap and heap[0][0] <= now:  # other customers' due timers first
                at, other = heapq.heappop(heap)
                st = carts.get(other)
                if other != cid and st is not None and due(st) == at:
                    out = fire_due(st, other, now)
                    carts[other] = st
                    if (nxt := due(st)) is not None:
                        heapq.heappush(heap, (nxt, other))
                    await emit(out)
            st = carts.get(cid) or {}
            before = due(st)
            dup, out = on_event(st, ev, now)
            carts[cid] = st
            if (nxt := due(st)) is not None and nxt != before:
                heapq.heappush(heap, (nxt, cid))
            stats["duplicates"] += dup
            await emit(out)
            stats["processed"] += 1
            if stats["processed"] == expected:
                secs = time.monotonic() - t_first[0]
                stats["seconds"] = round(secs, 3)
                stats["events_per_second"] = round(expected / max(secs, 1e-9))
                stats["open_flows"] = sum(1 for s in carts.values() if s and due(s) is not None)
                with open(result_file, "w") as fh:
                    json.dump(stats, fh)
                os.kill(os.getpid(), signal.SIGTERM)

    return app


def main(argv: list[str]) -> None:
    bootstrap, topic, app_id, expected, result_file = argv
    app = build(bootstrap, topic, app_id, int(expected), result_file)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1:])
