"""The report API's bodies (docs/api.md, "Reports"), built from stored counts and the
counts still in memory: pure, so both runtimes and the tests build the same figures.

Metrics (state/analytics.py cells): ``entered``, ``exited:<event type>``, ``completed``,
``reached`` (a step), ``sent:<channel>``, ``holdout``, ``suppressed:<reason>``,
``conversions``, ``revenue_cents``, ``feedback:<kind>``. Revenue is reported in currency
units (the goal events' ``total``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from engine.analytics.observe import step_label
from engine.analytics.stats import lift, srm, verdict
from rules.compiler import CompiledRule, Send, Wait
from state.analytics import DAY_MS, HOUR_MS, SUMMARY, Cell, DayTotals, Period, summary_index

__all__ = [
    "Counts",
    "Totals",
    "counts_totals",
    "day_number",
    "day_totals",
    "experiment",
    "gather",
    "rule_detail",
    "rules_summary",
    "rules_summary_totals",
]

Counts = dict[tuple[int, str, int], Counter[tuple[str, int, str]]]
"""(period, rule id, version) -> (variant, step, metric) -> count."""

_EPOCH = date(1970, 1, 1)


def day_number(d: date) -> int:
    return (d - _EPOCH).days


def _period_iso(period: int, hourly: bool) -> str:
    if hourly:
        return datetime.fromtimestamp(period * HOUR_MS / 1000, tz=UTC).strftime("%Y-%m-%dT%H:00Z")
    return (_EPOCH + timedelta(days=period)).isoformat()


def gather(
    stored: Iterable[Period],
    mem: Counter[Cell],
    hourly: bool,
    first: int,
    last: int,
    rule_id: str | None = None,
    version: int | None = None,
) -> Counts:
    """Stored and in-memory counts of periods ``first``..``last`` (days, or hours)."""
    out: Counts = {}
    for period, rid, ver, entries in stored:
        if version is not None and ver != version:
            continue
        c = out.setdefault((period, rid, ver), Counter())
        for variant, step, metric, n in entries:
            c[(variant, step, metric)] += n
    for (rid, ver, variant, step, metric, hour), n in mem.items():
        period = hour if hourly else hour * HOUR_MS // DAY_MS
        if not first <= period <= last or (rule_id is not None and rid != rule_id):
            continue
        if version is not None and ver != version:
            continue
        out.setdefault((period, rid, ver), Counter())[(variant, step, metric)] += n
    return out


def _totals(counts: Iterable[Counter[tuple[str, int, str]]]) -> dict[str, float]:
    t = {"entered": 0, "sends": 0, "suppressed": 0, "holdout": 0, "conversions": 0, "cents": 0}
    for c in counts:
        for (_, _, metric), n in c.items():
            if metric == "entered":
                t["entered"] += n
            elif metric.startswith("sent:"):
                t["sends"] += n
            elif metric.startswith("suppressed:"):
                t["suppressed"] += n
            elif metric == "holdout":
                t["holdout"] += n
            elif metric == "conversions":
                t["conversions"] += n
            elif metric == "revenue_cents":
                t["cents"] += n
    return {**t, "revenue": t["cents"] / 100}


def _series_point(c: list[Counter[tuple[str, int, str]]]) -> dict[str, Any]:
    t = _totals(c)
    return {
        "entered": t["entered"],
        "sends": t["sends"],
        "conversions": t["conversions"],
        "revenue": t["revenue"],
    }


Totals = dict[tuple[int, str, int], list[int]]
"""(day, rule id, version) -> the ``SUMMARY`` figures (engine/embedded/storage/analytics.py)."""


def day_totals(stored: Iterable[DayTotals], mem: Counter[Cell], first: int, last: int) -> Totals:
    """The all-rules report's figures of days ``first``..``last``: the stored day totals
    (``analytics_day_totals``) and the counts still in memory."""
    out: Totals = {(day, rid, ver): list(t) for day, rid, ver, t in stored}
    width = len(SUMMARY)
    for (rid, ver, _, _, metric, hour), n in mem.items():
        i = summary_index(metric)
        day = hour * HOUR_MS // DAY_MS
        if i is None or not first <= day <= last:
            continue
        t = out.get((day, rid, ver))
        if t is None:
            t = out[(day, rid, ver)] = [0] * width
        t[i] += n
    return out


def counts_totals(counts: Counts) -> Totals:
    """``Counts`` (of days) rolled up into the all-rules report's figures."""
    out: Totals = {}
    for key, c in counts.items():
        t = out[key] = [0] * len(SUMMARY)
        for (_, _, metric), n in c.items():
            i = summary_index(metric)
            if i is not None:
                t[i] += n
    return out


def rules_summary(counts: Counts, first: int, last: int, known: Iterable[str]) -> list[Any]:
    """``GET /v1/reports/rules``'s ``rules``: every rule counted or running (``known``)."""
    return rules_summary_totals(counts_totals(counts), first, last, known)


def rules_summary_totals(totals: Totals, first: int, last: int, known: Iterable[str]) -> list[Any]:
    """``rules_summary`` from the day totals (``day_totals``)."""
    by_rule: dict[str, dict[int, list[int]]] = {r: {} for r in known}
    versions: dict[str, int] = {}
    width = len(SUMMARY)
    for (day, rid, ver), t in totals.items():
        days = by_rule.get(rid)
        if days is None:
            days = by_rule[rid] = {}
        have = days.get(day)
        if have is None:
            days[day] = list(t)
        else:
            for i in range(width):
                have[i] += t[i]
        if ver > versions.get(rid, 0):
            versions[rid] = ver
    isos = [_period_iso(d, False) for d in range(first, last + 1)]
    empty = [
        {"day": iso, "entered": 0, "sends": 0, "conversions": 0, "revenue": 0.0} for iso in isos
    ]
    out = []
    for rid in sorted(by_rule):
        days = by_rule[rid]
        s = [sum(col) for col in zip(*days.values(), strict=True)] if days else [0] * width
        entered, sends, suppressed, holdout, conversions, cents = s
        series = []
        for d, iso in enumerate(isos, first):
            figures = days.get(d)
            if figures is None:
                series.append(dict(empty[d - first]))
                continue
            series.append(
                {
                    "day": iso,
                    "entered": figures[0],
                    "sends": figures[1],
                    "conversions": figures[4],
                    "revenue": figures[5] / 100,
                }
            )
        out.append(
            {
                "rule_id": rid,
                "version": versions.get(rid, 0),
                "entered": entered,
                "sends": sends,
                "suppressed": suppressed,
                "holdout": holdout,
                "conversions": conversions,
                "revenue": cents / 100,
                "series": series,
            }
        )
    return out


def rule_detail(
    rule_id: str,
    rule: CompiledRule | None,
    counts: Counts,
    series_counts: Counts,
    hourly: bool,
    first: int,
    last: int,
) -> dict[str, Any]:
    """``GET /v1/reports/rules/{id}``: totals, exits, the funnel per step, variants, and
    the series (``series_counts``: by hour or day)."""
    all_c = [c for (_, rid, _), c in counts.items() if rid == rule_id]
    t = _totals(all_c)
    merged: Counter[tuple[str, int, str]] = Counter()
    for c in all_c:
        merged.update(c)
    exited: Counter[str] = Counter()
    variants: dict[str, list[Counter[tuple[str, int, str]]]] = {}
    for (variant, step, metric), n in merged.items():
        if metric.startswith("exited:"):
            exited[metric.removeprefix("exited:")] += n
        variants.setdefault(variant, []).append(Counter({(variant, step, metric): n}))
    funnel = []
    if rule is not None:
        for pc, op in enumerate(rule.ops):
            if not isinstance(op, Send | Wait):
                continue
            sent: Counter[str] = Counter()
            suppressed: Counter[str] = Counter()
            for (_, step, metric), n in merged.items():
                if step != pc:
                    continue
                if metric.startswith("sent:"):
                    sent[metric.removeprefix("sent:")] += n
                elif metric.startswith("suppressed:"):
                    suppressed[metric.removeprefix("suppressed:")] += n
                elif metric == "holdout":
                    suppressed["holdout"] += n
            feedback = {
                m.removeprefix("feedback:"): n
                for (_, step, m), n in merged.items()
                if step == pc and m.startswith("feedback:")
            }
            funnel.append(
                {
                    "step": pc,
                    "label": step_label(rule, pc),
                    "reached": sum(
                        n for (_, s, m), n in merged.items() if s == pc and m == "reached"
                    ),
                    "sent": dict(sorted(sent.items())),
                    "suppressed": dict(sorted(suppressed.items())),
                    "feedback": dict(sorted(_sum_keys(feedback).items())),
                }
            )
    by_period: dict[int, list[Counter[tuple[str, int, str]]]] = {}
    for (period, rid, _), c in series_counts.items():
        if rid == rule_id:
            by_period.setdefault(period, []).append(c)
    return {
        "rule_id": rule_id,
        "versions": sorted({ver for (_, rid, ver) in counts if rid == rule_id}),
        "entered": t["entered"],
        "sends": t["sends"],
        "suppressed": t["suppressed"],
        "exited": dict(sorted(exited.items())),
        "completed": sum(n for (_, _, m), n in merged.items() if m == "completed"),
        "conversions": t["conversions"],
        "revenue": t["revenue"],
        "funnel": funnel,
        "variants": [
            {"variant": v, **_series_point(cs)} for v, cs in sorted(variants.items()) if v
        ],
        "series": [
            {"at": _period_iso(p, hourly), **_series_point(by_period.get(p, []))}
            for p in range(first, last + 1)
        ],
    }


def _sum_keys(d: dict[str, int]) -> dict[str, int]:
    return dict(Counter(d))


def arms(rule: CompiledRule) -> list[tuple[str, bool, float]]:
    """(variant, holdout?, weight) of a rule's experiment, variants first, in file order."""
    out: list[tuple[str, bool, float]] = []
    prev = rule.holdout_upto
    for i, v in enumerate(rule.variants):
        upto = 10_000 if i == len(rule.variants) - 1 else v.upto
        out.append((v.name, False, (upto - prev) / 10_000))
        prev = upto
    if rule.holdout_upto:
        out.append(("holdout", True, rule.holdout_upto / 10_000))
    return out


def experiment(rule_id: str, rule: CompiledRule | None, counts: Counts) -> dict[str, Any]:
    """``GET /v1/reports/experiments/{rule}``: arms, lifts, SRM and the verdict."""
    per: dict[str, dict[str, float]] = {}
    for (_, rid, _), c in counts.items():
        if rid != rule_id:
            continue
        for (variant, _, metric), n in c.items():
            d = per.setdefault(variant, {"entered": 0, "converted": 0, "cents": 0})
            if metric == "entered":
                d["entered"] += n
            elif metric == "conversions":
                d["converted"] += n
            elif metric == "revenue_cents":
                d["cents"] += n
    layout = arms(rule) if rule is not None else [(v, v == "holdout", 0.0) for v in sorted(per)]
    rows: list[dict[str, Any]] = []
    for name, hold, weight in layout:
        d = per.get(name, {"entered": 0, "converted": 0, "cents": 0})
        n, x = int(d["entered"]), int(d["converted"])
        rows.append(
            {
                "variant": name,
                "holdout": hold,
                "weight": weight,
                "entered": n,
                "converted": x,
                "rate": x / n if n else 0.0,
                "revenue_per_recipient": round(d["cents"] / 100 / n, 4) if n else 0.0,
            }
        )
    variants = [r for r in rows if not r["holdout"]]
    holdout = next((r for r in rows if r["holdout"]), None)
    first = variants[0] if variants else None
    words = []
    for r in rows:
        vs_first = vs_hold = None
        if first is not None and r is not first and not r["holdout"]:
            vs_first = lift(first["converted"], first["entered"], r["converted"], r["entered"])
            words.append(
                verdict(
                    first["variant"],
                    first["converted"],
                    first["entered"],
                    r["variant"],
                    r["converted"],
                    r["entered"],
                )
            )
        if holdout is not None and r is not holdout:
            vs_hold = lift(holdout["converted"], holdout["entered"], r["converted"], r["entered"])
        r["lift_vs_first"] = vs_first.to_json() if vs_first is not None else None
        r["lift_vs_holdout"] = vs_hold.to_json() if vs_hold is not None else None
    if not words and first is not None and holdout is not None:
        words.append(
            verdict(
                "holdout",
                holdout["converted"],
                holdout["entered"],
                first["variant"],
                first["converted"],
                first["entered"],
            )
        )
    check = srm([r["entered"] for r in rows], [r["weight"] for r in rows]) if rule else None
    if check is not None and check.mismatch:
        words.insert(
            0,
            f"sample ratio mismatch (p = {check.p_value:.2g}): arm sizes differ from the "
            "configured weights; fix the assignment before reading the results",
        )
    return {
        "rule_id": rule_id,
        "arms": rows,
        "srm": check.to_json() if check is not None else None,
        "verdict": "; ".join(words) if words else "no experiment: the rule has one arm",
    }
