"""``nudge report``: the report API's figures as a file a marketer can mail around.
Markdown (PNG charts written beside it), HTML (charts inline as data URIs, one
self-contained file) or JSON (the API's bodies, as fetched). The figures are the API's,
unchanged: a reader can check them against it."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

__all__ = ["fetch", "render"]


async def fetch(
    url: str, token: str, rule: str | None, first: str | None, last: str | None
) -> dict[str, Any]:
    """``{"summary": /v1/reports/rules, "rules": {id: {"detail", "experiment"}}}``; raises
    ``RuntimeError`` on a refusal."""
    from aiohttp import ClientSession

    base = url.rstrip("/")
    q = "&".join(f"{k}={v}" for k, v in (("from", first), ("to", last)) if v)
    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession(headers=headers) as s:

        async def get(path: str) -> Any:
            async with s.get(f"{base}{path}?{q}") as r:
                body = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{path}: refused ({r.status}): {body}")
                return body

        summary = await get("/v1/reports/rules")
        ids = [rule] if rule else [r["rule_id"] for r in summary["rules"]]
        rules = {}
        for rid in ids:
            rules[rid] = {
                "detail": await get(f"/v1/reports/rules/{quote(rid, safe='')}"),
                "experiment": await get(f"/v1/reports/experiments/{quote(rid, safe='')}"),
            }
    return {"summary": summary, "rules": rules}


def _series_png(detail: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    xs = [p["at"] for p in detail["series"]]
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=100)
    for key in ("entered", "sends", "conversions"):
        ax.plot(range(len(xs)), [p[key] for p in detail["series"]], label=key)
    step = max(1, len(xs) // 6)
    ax.set_xticks(range(0, len(xs), step), [x[:10] for x in xs[::step]], fontsize=7)
    ax.set_title(f"{detail['rule_id']}: daily", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _funnel_png(detail: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = detail["funnel"]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, len(steps))), dpi=100)
    labels = [s["label"] for s in steps][::-1]
    ax.barh(labels, [s["reached"] for s in steps][::-1])
    ax.set_title(f"{detail['rule_id']}: funnel (reached per step)", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _table(head: list[str], rows: list[list[Any]], fmt: str) -> str:
    if fmt == "md":
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
        return "\n".join(out) + "\n"
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{cells}</tr>{body}</table>\n"


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"


def render(data: dict[str, Any], fmt: str, out: Path) -> list[Path]:
    """Write the report to ``out`` in ``fmt`` (md, html, json); returns every file written."""
    if fmt == "json":
        out.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
        return [out]
    summary = data["summary"]
    written = [out]

    def h(n: int, t: str) -> str:
        return f"{'#' * n} {t}\n\n" if fmt == "md" else f"<h{n}>{html.escape(t)}</h{n}>\n"

    parts = [h(1, f"Nudge campaign report {summary['from']} to {summary['to']}")]
    parts.append(
        _table(
            ["rule", "version", "entered", "sends", "suppressed", "conversions", "revenue"],
            [
                [
                    r["rule_id"],
                    r["version"],
                    r["entered"],
                    r["sends"],
                    r["suppressed"],
                    r["conversions"],
                    f"{r['revenue']:.2f}",
                ]
                for r in summary["rules"]
            ],
            fmt,
        )
    )
    for rid, both in data["rules"].items():
        d, e = both["detail"], both["experiment"]
        parts.append(h(2, rid))
        parts.append(
            _table(
                ["entered", "completed", "exited", "conversions", "revenue"],
                [
                    [
                        d["entered"],
                        d.get("completed", 0),
                        _counts(d["exited"]),
                        d["conversions"],
                        f"{d['revenue']:.2f}",
                    ]
                ],
                fmt,
            )
        )
        parts.append(
            _table(
                ["step", "reached", "sent", "suppressed"],
                [
                    [s["label"], s["reached"], _counts(s["sent"]), _counts(s["suppressed"])]
                    for s in d["funnel"]
                ],
                fmt,
            )
        )
        parts.append(
            _table(
                ["arm", "weight", "entered", "converted", "rate", "lift vs first (pts, 95% CI)"],
                [
                    [
                        a["variant"],
                        a["weight"],
                        a["entered"],
                        a["converted"],
                        f"{100 * a['rate']:.1f}%",
                        _lift(a["lift_vs_first"]),
                    ]
                    for a in e["arms"]
                ],
                fmt,
            )
        )
        verdict = f"Verdict: {e['verdict']}"
        parts.append(f"{verdict}\n\n" if fmt == "md" else f"<p>{html.escape(verdict)}</p>\n")
        for kind, png in (("series", _series_png(d)), ("funnel", _funnel_png(d))):
            if fmt == "md":
                name = f"{out.stem}-{_safe(rid)}-{kind}.png"
                (out.parent / name).write_bytes(png)
                written.append(out.parent / name)
                parts.append(f"![{rid} {kind}]({name})\n\n")
            else:
                uri = "data:image/png;base64," + base64.b64encode(png).decode()
                parts.append(f'<img alt="{html.escape(rid)} {kind}" src="{uri}">\n')
    text = "".join(parts)
    if fmt == "html":
        text = (
            '<!doctype html><html><head><meta charset="utf-8"><title>Nudge report</title>'
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:8px 0}"
            "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>\n"
            + text
            + "</body></html>\n"
        )
    out.write_text(text, encoding="utf-8")
    return written


def _lift(x: dict[str, float] | None) -> str:
    if x is None:
        return "-"
    return f"{x['pts']:+.1f} ({x['ci_low']:+.1f}..{x['ci_high']:+.1f})"


def _safe(rule_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in rule_id)
