"""Campaign analytics cells (state/analytics.py) in Redis for the distributed runtime: the
folded counts the reports read (engine/analytics/source.py), written by the changelog
aggregator (engine/distributed/analytics.py).

Keys (``<prefix>:analytics:...``), each a hash of integer counts:

- ``d:<day>:<rule>``: ``version US variant US step US metric`` -> count, kept
  ``retention_days`` after the day (EXPIREAT);
- ``h:<hour>:<rule>``: the same by hour, kept ``HOUR_RETENTION_DAYS`` after the hour;
- ``t:<day>``: ``rule US version US i`` -> the i-th ``SUMMARY`` figure (entries, sends,
  suppressions, holdouts, conversions, revenue cents) of the day: what the all-rules
  report reads (one hash a day instead of every count);
- ``hw``: changelog partition -> the offset of the last changelog record folded;
- ``lease``: which aggregator folds now (the others stand by: :meth:`lease`).

(US: the ASCII unit separator, which no rule id, variant or metric holds.)

A fold is one Lua script: it adds the counts of a run of changelog records and moves the
partition's ``hw`` to the run's last offset, only if ``hw`` still is what the folder
read before (else it does nothing and the folder re-reads). So a run is folded once,
whichever aggregators run and however often one restarts.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from state.analytics import (
    DAY_MS,
    HOUR_MS,
    HOUR_RETENTION_DAYS,
    SUMMARY,
    Cell,
    DayTotals,
    Period,
    summary_index,
)

__all__ = ["RedisAnalytics"]

US = "\x1f"

# KEYS[1]: the hw hash. ARGV: partition, expected hw ('-1': none), new hw, n increments,
# then n (key, field, amount) triples, then (key, expire-at seconds) pairs.
_FOLD = """
local cur = redis.call('HGET', KEYS[1], ARGV[1]) or '-1'
if cur ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[4])
local i = 5
for _ = 1, n do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
while i <= #ARGV do
  redis.call('EXPIREAT', ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


# KEYS[1]: the lease. ARGV: owner, ms. Renew it if ours, take it if free.
_LEASE = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""


class RedisAnalytics:
    """Folded counts in Redis (``client``: a ``redis.asyncio.Redis``)."""

    def __init__(self, client: Any, prefix: str = "nudge", retention_days: float = 400.0) -> None:
        self.client = client
        self.base = f"{prefix}:analytics"
        self.hw_key = f"{self.base}:hw"
        self.lease_key = f"{self.base}:lease"
        self.retention_days = retention_days

    # --- writes (the aggregator) ---------------------------------------------------
    async def high_water(self) -> dict[int, int]:
        """Changelog partition -> offset of the last record folded."""
        raw = await self.client.hgetall(self.hw_key)
        return {int(k): int(v) for k, v in raw.items()}

    async def lease(self, owner: str, ms: int) -> bool:
        """Hold (take or renew) the folding lease for ``ms`` as ``owner``; False: another
        aggregator holds it. Only saves work: folds are compare-and-set anyway."""
        return bool(await self.client.eval(_LEASE, 1, self.lease_key, owner, ms))

    async def fold(
        self, partition: int, expected: int | None, last: int, counts: Counter[Cell], now_ms: int
    ) -> bool:
        """Add ``counts`` and set ``partition``'s high water to ``last``, if it is still
        ``expected`` (None: never folded). False (nothing written) when it is not."""
        incr: list[Any] = []
        expire: dict[str, int] = {}
        day_keep = int(self.retention_days * DAY_MS)
        hour_keep = HOUR_RETENTION_DAYS * DAY_MS
        totals: Counter[tuple[int, str, int, int]] = Counter()
        for (rid, ver, variant, step, metric, hour), n in counts.items():
            if not n:
                continue
            day = hour * HOUR_MS // DAY_MS
            field = f"{ver}{US}{variant}{US}{step}{US}{metric}"
            day_end = (day + 1) * DAY_MS
            if day_end + day_keep > now_ms:
                key = f"{self.base}:d:{day}:{rid}"
                incr += (key, field, n)
                expire[key] = (day_end + day_keep) // 1000
                i = summary_index(metric)
                # every rule-day gets a totals field (0 if need be): the day's rule index
                totals[(day, rid, ver, 0 if i is None else i)] += 0 if i is None else n
            hour_end = (hour + 1) * HOUR_MS
            if hour_end + hour_keep > now_ms:
                key = f"{self.base}:h:{hour}:{rid}"
                incr += (key, field, n)
                expire[key] = (hour_end + hour_keep) // 1000
        for (day, rid, ver, i), n in totals.items():
            key = f"{self.base}:t:{day}"
            incr += (key, f"{rid}{US}{ver}{US}{i}", n)
            expire[key] = ((day + 1) * DAY_MS + day_keep) // 1000
        args: list[Any] = [
            partition,
            -1 if expected is None else expected,
            last,
            len(incr) // 3,
            *incr,
        ]
        for key, at in expire.items():
            args += (key, at)
        return bool(await self.client.eval(_FOLD, 1, self.hw_key, *args))

    # --- reads (engine/analytics/source.py) ----------------------------------------
    async def day_totals(self, first: int, last: int) -> list[DayTotals]:
        """The ``SUMMARY`` figures of every rule and version on days ``first``..``last``."""
        days = list(range(first, last + 1))
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self.base}:t:{day}")
        out: list[DayTotals] = []
        for day, raw in zip(days, await pipe.execute(), strict=True):
            figures: dict[tuple[str, int], list[int]] = {}
            for k, v in raw.items():
                rid, ver, i = k.decode().split(US)
                t = figures.setdefault((rid, int(ver)), [0] * len(SUMMARY))
                t[int(i)] += int(v)
            out += [(day, rid, ver, tuple(t)) for (rid, ver), t in figures.items()]
        return out

    async def periods(
        self, hourly: bool, first: int, last: int, rule_id: str | None = None
    ) -> list[Period]:
        """Folded counts of days (or hours) ``first``..``last``, one rule or all (all:
        the rules the day totals of those periods name)."""
        if rule_id is not None:
            rules = [rule_id]
        else:
            d0, d1 = (first // 24, last // 24) if hourly else (first, last)
            rules = sorted({rid for _, rid, _, _ in await self.day_totals(d0, d1)})
        kind = "h" if hourly else "d"
        keys = [(p, rid) for p in range(first, last + 1) for rid in rules]
        pipe = self.client.pipeline(transaction=False)
        for p, rid in keys:
            pipe.hgetall(f"{self.base}:{kind}:{p}:{rid}")
        out: list[Period] = []
        for (p, rid), raw in zip(keys, await pipe.execute(), strict=True):
            by_version: dict[int, list[tuple[str, int, str, int]]] = {}
            for k, v in raw.items():
                ver, variant, step, metric = k.decode().split(US)
                by_version.setdefault(int(ver), []).append((variant, int(step), metric, int(v)))
            out += [(p, rid, ver, entries) for ver, entries in by_version.items()]
        return out

    # the report source (engine/analytics/source.py): every count is folded, none in memory
    async def analytics_counts(
        self, hourly: bool, first: int, last: int, rule_id: str | None = None
    ) -> tuple[list[Period], Counter[Cell]]:
        return await self.periods(hourly, first, last, rule_id), Counter()

    async def analytics_totals(
        self, first: int, last: int
    ) -> tuple[list[DayTotals], Counter[Cell]]:
        return await self.day_totals(first, last), Counter()
