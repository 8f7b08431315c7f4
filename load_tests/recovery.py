"""How long an engine takes to be back to normal after an overload ends (``nudge
loadtest --recover``).

Probes are grouped in one-second windows by their send time. The normal p99 is the
event-to-action p99 of the probes sent in the second half of the recovery (when the
engine has had time to settle), unless the caller measured it on its own (a run at the
sustained rate: ``--normal-p99-ms``). The engine is back to normal ``t`` seconds after the
overload ends when every window from then on has a p99 within 1.5 x the normal p99.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["FACTOR", "back_to_normal"]

FACTOR = 1.5


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def back_to_normal(
    samples: Sequence[tuple[float, float]],
    overload_end: float,
    recover: float,
    normal_p99_ms: float | None = None,
) -> dict[str, Any]:
    """``samples``: (send time s since the start, event-to-action ms) of every probe.
    Returns the normal p99, the threshold, each recovery window's p99 and
    ``back_to_normal_s`` (None: not back within the recovery)."""
    windows: dict[int, list[float]] = {}
    for t, ms in samples:
        if t >= overload_end:
            windows.setdefault(int(t - overload_end), []).append(ms)
    half = recover / 2
    if normal_p99_ms is None:
        tail = [ms for t, ms in samples if t >= overload_end + half]
        normal_p99_ms = _p99(tail) if tail else None
    out: dict[str, Any] = {
        "normal_p99_ms": None if normal_p99_ms is None else round(normal_p99_ms, 3),
        "threshold_ms": None,
        "back_to_normal_s": None,
        "window_p99_ms": [(sec, round(_p99(v), 3)) for sec, v in sorted(windows.items())],
    }
    if normal_p99_ms is None or not windows:
        return out
    threshold = FACTOR * normal_p99_ms
    out["threshold_ms"] = round(threshold, 3)
    back: int | None = None
    for sec, p99 in reversed(out["window_p99_ms"]):
        if p99 > threshold:
            break
        back = sec
    out["back_to_normal_s"] = back
    return out
