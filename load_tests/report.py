"""Figures for ``nudge loadtest``: Prometheus histogram quantiles, HdrHistogram summaries,
per-second series, the Markdown summary and the PNG plots.

Only the standard library at import time; numpy/matplotlib are imported inside the
functions that need them (``nudge run`` must not pay for them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "Buckets",
    "bucket_quantile",
    "hdr_summary",
    "histogram_delta",
    "parse_histogram",
    "per_second",
    "render_markdown",
    "write_plots",
]

Buckets = list[tuple[float, float]]  # cumulative (upper bound, count), sorted, +Inf last

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)
_LE = re.compile(r'le="([^"]+)"')


def parse_histogram(text: str, name: str) -> Buckets:
    """Cumulative buckets of histogram ``name`` in a Prometheus text exposition, summed
    over every label set other than ``le``; empty if the metric is absent."""
    prefix = name + "_bucket"
    acc: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        rest = line[len(prefix) :]
        if rest[:1] not in ("{", " "):
            continue
        m = _LE.search(rest)
        if m is None:
            continue
        try:
            le = math.inf if m.group(1) == "+Inf" else float(m.group(1))
            count = float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
        acc[le] = acc.get(le, 0.0) + count
    return sorted(acc.items())


def histogram_delta(before: Buckets, after: Buckets) -> Buckets:
    """``after - before`` bucket by bucket (a metric absent before counts as zeros)."""
    old = dict(before)
    return [(le, max(0.0, c - old.get(le, 0.0))) for le, c in after]


def bucket_quantile(q: float, buckets: Buckets) -> float | None:
    """Prometheus ``histogram_quantile``: linear interpolation inside the bucket holding
    rank ``q * total``; the highest finite bound if it falls in +Inf; None if empty."""
    if not buckets:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if math.isinf(le):
                return prev_le
            if c == prev_c:
                return le
            return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
        prev_le, prev_c = le, c
    return prev_le


def hdr_summary(hist: Any, unit: float = 1000.0) -> dict[str, float | int]:
    """Count, mean, max and percentiles of an ``hdrh`` histogram recorded in microseconds,
    in milliseconds (``unit`` = recorded units per reported unit)."""
    n = int(hist.get_total_count())
    out: dict[str, float | int] = {"count": n}
    if n == 0:
        return out
    for p in PERCENTILES:
        key = f"p{p:g}".replace(".", "")
        out[key] = round(hist.get_value_at_percentile(p) / unit, 3)
    out["max"] = round(hist.get_max_value() / unit, 3)
    out["mean"] = round(float(hist.get_mean_value()) / unit, 3)
    return out


def hdr_distribution(hist: Any, unit: float = 1000.0) -> list[tuple[float, float]]:
    """(percentile, value) points for a percentile distribution plot, 0 to 99.999."""
    if int(hist.get_total_count()) == 0:
        return []
    pts: list[tuple[float, float]] = []
    p = 0.0
    while p < 99.9995:
        pts.append((p, hist.get_value_at_percentile(p) / unit))
        p = 100.0 - (100.0 - p) / 1.25 if p >= 1.0 else p + 1.0
    pts.append((100.0, hist.get_max_value() / unit))
    return pts


def _pct(sorted_vals: Sequence[float], q: float) -> float:
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def per_second(samples: Iterable[tuple[float, float]]) -> list[dict[str, float]]:
    """Group (seconds since start, latency) samples by whole second: count, p50, p99."""
    by: dict[int, list[float]] = {}
    for t, v in samples:
        by.setdefault(int(t), []).append(v)
    out = []
    for sec in sorted(by):
        vals = sorted(by[sec])
        out.append(
            {
                "second": float(sec),
                "count": float(len(vals)),
                "p50": round(_pct(vals, 0.5), 3),
                "p99": round(_pct(vals, 0.99), 3),
            }
        )
    return out


def counts_per_second(
    times: Iterable[float], weights: Iterable[float] | None = None
) -> list[tuple[int, float]]:
    """Sum of ``weights`` (default 1 each) per whole second of ``times``."""
    by: dict[int, float] = {}
    ws = iter(weights) if weights is not None else None
    for t in times:
        w = next(ws) if ws is not None else 1.0
        by[int(t)] = by.get(int(t), 0.0) + w
    return sorted(by.items())


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _lat_row(name: str, s: Mapping[str, Any]) -> str:
    cells = [_fmt(s.get(k)) for k in ("count", "p50", "p90", "p99", "p999", "max", "mean")]
    return f"| {name} | " + " | ".join(cells) + " |"


def _overload_rows(report: Mapping[str, Any]) -> list[str]:
    """Throughput rows of an overload run: refused, accepted during the run, RSS, the
    recovery."""
    if "refused" not in report:
        return []
    req, rss = report["requests"], report.get("rss_mb") or {}
    rows = [
        f"| refused (429): requests / events | {_fmt(report['refused']['requests'])} / "
        f"{_fmt(report['refused']['events'])} |",
        f"| accepted rate during the run (events/s) | {_fmt(req['accepted_rate_during_run'])} |",
        f"| target RSS max / last (MB) | {_fmt(rss.get('max'))} / {_fmt(rss.get('last'))} |",
    ]
    rec = report.get("recovery")
    if rec:
        rows.append(
            f"| back to normal after the run (s) | {_fmt(rec['back_to_normal_s'])} "
            f"(normal p99 {_fmt(rec['normal_p99_ms'])} ms, threshold "
            f"{_fmt(rec['threshold_ms'])} ms) |"
        )
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human summary of a loadtest report (also written to report.md)."""
    cfg = report["config"]
    req = report["requests"]
    tl = report.get("timer_lateness_s") or {}
    lines = [
        "# nudge loadtest",
        "",
        f"Target `{cfg['target']}`: {_fmt(cfg['rate'])} events/s for {_fmt(cfg['duration'])} s "
        f"over {_fmt(cfg['customers'])} customers, batches of {cfg['batch']} "
        f"(open loop, {_fmt(req['scheduled'])} requests scheduled).",
        "",
        "| throughput | value |",
        "|---|---|",
        f"| events sent | {_fmt(req['events_sent'])} |",
        f"| events acknowledged (202) | {_fmt(req['events_acknowledged'])} |",
        f"| achieved send rate (events/s) | {_fmt(req['send_rate'])} |",
        *(
            [f"| achieved send rate at --rate (events/s) | {_fmt(req['send_rate_during_run'])} |"]
            if cfg.get("recover") and "send_rate_during_run" in req
            else []
        ),
        *(
            [
                f"| sender CPU (s) / events per sender CPU-second | {_fmt(req['sender_cpu_s'])}"
                f" / {_fmt(req['events_per_sender_cpu_s'])} |"
            ]
            if req.get("sender_cpu_s")
            else []
        ),
        f"| acknowledged rate (events/s) | {_fmt(req['ack_rate'])} |",
        f"| requests late to be sent (>{_fmt(req['late_threshold_ms'])} ms) "
        f"| {_fmt(req['late'])} (max lag {_fmt(req['max_send_lag_ms'])} ms) |",
        f"| actions received at the webhook | {_fmt(report['actions_received'])} |",
        *_overload_rows(report),
        "",
        "| latency (ms) | count | p50 | p90 | p99 | p99.9 | max | mean |",
        "|---|---|---|---|---|---|---|---|",
        _lat_row("ingest (request start to 202)", report["ingest_latency_ms"]),
        _lat_row("ingest from schedule", report["ingest_from_schedule_ms"]),
        _lat_row("event to action (probe to webhook)", report["event_to_action_ms"]),
        *(
            [
                _lat_row("ingest, every answer (429s too)", report["ingest_all_answers_ms"]),
                _lat_row(
                    "event to action, probes sent in the run",
                    report["event_to_action_during_run_ms"],
                ),
            ]
            if "ingest_all_answers_ms" in report
            else []
        ),
        "",
        f"Probes: {_fmt(report['probes']['sent'])} sent, "
        f"{_fmt(report['probes']['acknowledged'])} acknowledged, "
        f"{_fmt(report['probes']['received'])} received, "
        f"{_fmt(report['probes']['missing'])} missing.",
        "",
    ]
    if tl.get("available"):
        lines.append(
            f"Timer lateness during the run (`nudge_timer_lateness_seconds` delta): "
            f"{_fmt(tl.get('count'))} timers, p50 {_fmt(tl.get('p50'))} s, "
            f"p99 {_fmt(tl.get('p99'))} s."
        )
    else:
        lines.append("Timer lateness: `/metrics` not available on the target.")
    lines.append("")
    errors = report.get("errors") or {}
    if errors:
        lines.append(
            "Errors by status: "
            + ", ".join(f"{k}: {_fmt(v)}" for k, v in sorted(errors.items()))
            + "."
        )
    else:
        lines.append("Errors: none.")
    if report.get("plots"):
        lines += ["", "Plots: " + ", ".join(f"`{p}`" for p in report["plots"]) + "."]
    return "\n".join(lines) + "\n"


def write_plots(
    out: Path,
    ingest: Sequence[tuple[float, float]],
    e2a: Sequence[tuple[float, float]],
    ingest_dist: Sequence[tuple[float, float]],
    e2a_dist: Sequence[tuple[float, float]],
    sent_per_s: Sequence[tuple[int, float]],
    acked_per_s: Sequence[tuple[int, float]],
    actions_per_s: Sequence[tuple[int, float]],
    *,
    refused_per_s: Sequence[tuple[int, float]] = (),
    overload_end: float | None = None,
) -> list[Path]:
    """latency_over_time.png, latency_distribution.png, throughput.png in ``out``
    (``refused_per_s``: events answered 429; ``overload_end``: a line where the overload
    stopped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    def finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
        """Label, grid, legend, save and close one figure."""
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if overload_end is not None and xlabel.startswith("seconds"):
            ax.axvline(overload_end, color="grey", linestyle=":", label="overload ends")
        ax.legend()
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path

    fig, ax = plt.subplots(figsize=(10, 5))
    for name, samples in (("ingest (every answer)", ingest), ("event to action", e2a)):
        series = per_second(samples)
        xs = [s["second"] for s in series]
        ax.plot(xs, [s["p50"] for s in series], label=f"{name} p50")
        ax.plot(xs, [s["p99"] for s in series], label=f"{name} p99", linestyle="--")
    ax.set_yscale("log")
    paths.append(
        finish(
            fig,
            ax,
            out / "latency_over_time.png",
            "seconds since start",
            "latency (ms)",
            "Latency over time (per second)",
        )
    )

    fig, ax = plt.subplots(figsize=(10, 5))
    for name, dist in (("ingest", ingest_dist), ("event to action", e2a_dist)):
        if dist:
            xs = [1.0 / max(1e-6, 1.0 - p / 100.0) for p, _ in dist]
            ax.plot(xs, [v for _, v in dist], label=name)
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000, 100000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    paths.append(
        finish(
            fig,
            ax,
            out / "latency_distribution.png",
            "percentile",
            "latency (ms)",
            "Latency by percentile (HdrHistogram)",
        )
    )

    fig, ax = plt.subplots(figsize=(10, 5))
    for name, counts in (
        ("events sent/s", sent_per_s),
        ("events acknowledged/s", acked_per_s),
        ("actions received/s", actions_per_s),
        *((("events refused (429)/s", refused_per_s),) if refused_per_s else ()),
    ):
        ax.plot([s for s, _ in counts], [v for _, v in counts], label=name)
    paths.append(
        finish(
            fig,
            ax,
            out / "throughput.png",
            "seconds since start",
            "per second",
            "Throughput over time",
        )
    )
    return paths
