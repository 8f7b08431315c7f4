"""What campaign analytics costs a ``nudge worker`` in CPU, without Kafka's noise: the
worker's processing path in-process (engine/distributed/processing.py ``PartitionEngine``,
4 partitions, batches of ``--batch`` records of a storefront trace with the stock
recipes), each batch's changelog rows encoded as the worker produces them
(``TableLog.records``, with the counts framed in front when analytics is on) and then
dropped. Analytics off and on alternate, ``--repeat`` rounds; prints the best and median
events per CPU second of each, and the bytes the counts add to the changelog.

The end-to-end figures (Kafka, Redis, the aggregator) are ``load_tests.bench_worker
--analytics both``.

    python -m load_tests.bench_worker_analytics [--events 100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

import orjson

from engine.distributed.processing import InputRecord, PartitionEngine
from engine.distributed.storage.changelog import TableLog
from engine.distributed.topics import key_partition
from load_tests.traffic import TrafficConfig, generate
from rules.ruleset import RECIPES_DIR, load_ruleset
from state.customer import CustomerState

PARTITIONS = 4


class _Sink:
    """The flush: rows encoded like the worker's, then dropped; sizes kept."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0
        self.count_bytes = 0

    async def __call__(
        self,
        actions: Any,
        rows: dict[int, list[CustomerState]],
        forwards: Any,
        segments: Any,
        erased: Any,
        counts: dict[int, dict[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        for p, states in rows.items():
            got = (counts or {}).get(p)
            for _, value in TableLog.records(states, got):
                self.rows += 1
                self.bytes += len(value or b"")
            self.count_bytes += sum(len(b) for b in (got or {}).values())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def _run(records: list[InputRecord], batch: int, analytics: bool) -> tuple[float, _Sink]:
    sink = _Sink()
    engine = PartitionEngine(load_ruleset([str(RECIPES_DIR)]), 1, sink)
    engine.analytics = analytics
    for p in range(PARTITIONS):
        engine.assign(p, [])
    t0 = time.process_time()  # CPU seconds: steadier than wall time on a shared machine
    for i in range(0, len(records), batch):
        await engine.process(records[i : i + batch])
    return len(records) / (time.process_time() - t0), sink


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = TrafficConfig(events=args.events, customers=args.customers, days=7.0)
    records = []
    for offset, e in enumerate(generate(cfg)):
        body = orjson.dumps(e)
        p = key_partition(e["customer_id"].encode(), PARTITIONS)
        ts = int(datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)
        records.append(InputRecord(p, offset, ts, body))
    rates: dict[str, list[float]] = {"off": [], "on": []}
    sinks: dict[str, _Sink] = {}
    for i in range(args.repeat):  # off, on, on, off, ...
        for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
            rate, sinks[mode] = asyncio.run(_run(records, args.batch, mode == "on"))
            rates[mode].append(rate)
    out: dict[str, Any] = {"events": len(records), "batch": args.batch}
    for mode, rs in rates.items():
        out[f"analytics_{mode}"] = {
            "best_events_per_cpu_second": round(max(rs)),
            "median_events_per_cpu_second": round(statistics.median(rs)),
            "changelog_rows": sinks[mode].rows,
            "changelog_bytes": sinks[mode].bytes,
        }
    on, off = out["analytics_on"], out["analytics_off"]
    out["best_on_vs_off"] = round(
        on["best_events_per_cpu_second"] / off["best_events_per_cpu_second"], 3
    )
    out["median_on_vs_off"] = round(
        on["median_events_per_cpu_second"] / off["median_events_per_cpu_second"], 3
    )
    out["count_bytes_per_row"] = round(sinks["on"].count_bytes / max(sinks["on"].rows, 1), 1)
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
