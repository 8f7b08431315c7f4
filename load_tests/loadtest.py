"""``nudge loadtest``: open-loop load against a running engine, with latency figures.

What it does:

1. Precomputes the timeline: ``rate * duration`` events from
   :func:`load_tests.traffic.generate` (event ids prefixed by a run id), cut into batches of
   ``--batch``; request *k* is due at ``start + k * batch / rate``. Each request's last
   event is a *probe*: type ``loadtest_probe`` with ``properties.sent_at`` (epoch ms).
2. Starts a webhook receiver on ``--hook-port`` (all paths; load_tests/receiver.py). The
   engine under test must route actions there, e.g. ``nudge run --sinks sinks.json``
   with::

       {"default": "hook",
        "sinks": {"hook": {"type": "webhook", "url": "http://127.0.0.1:8099/hook"}}}

   and must run the probe rule (written to ``OUT/probe.yaml``): deploy it with
   ``nudge rules deploy YOUR_RULES OUT/probe.yaml --url TARGET`` (a deploy replaces the
   whole set), or pass ``--admin-token`` and this command appends it to the running set
   (GET then PUT /v1/rules) and restores the previous set at the end.
3. Sends on schedule, never waiting for replies (no coordinated omission), over at most
   ``--connections`` keep-alive connections (load_tests/sender.py on
   load_tests/http1.py; a request that finds none free waits for one, and that wait is
   part of its latency); a request that could not be sent on time is counted as late
   (``--late-ms``, default 10 ms) and its latency is also recorded from its *scheduled*
   time. Timestamps are rewritten to the send time.
4. Measures: ingest latency (request start to 202) in an HdrHistogram; event-to-action
   latency (probe ``sent_at`` to its arrival at the webhook); timer lateness from the
   target's ``/metrics`` (``nudge_timer_lateness_seconds``, delta over the run, p50/p99
   interpolated in the buckets); responses by status.
5. Writes ``OUT/report.json``, ``OUT/report.md`` and ``latency_over_time.png``,
   ``latency_distribution.png``, ``throughput.png``; prints the Markdown summary.

Overload runs (issue #18): ``--senders N`` forks N sender processes before the run
(load_tests/sender.py) so the generator does not share a core with the engine's event
loop when both are pinned (``taskset -c 0 nudge run ...``, ``taskset -c 1 nudge loadtest
... --senders 1``); the webhook receiver stays in this process. ``--recover S
--recover-rate R`` go on at a normal rate R for S seconds after the ``--duration`` at
``--rate``; ``--overload`` makes 429 answers part of the test (counted as refused, exit
0). The report then also has: the ingest latency of every answer (429s included), the
refused requests and events, the accepted throughput during the overload, event-to-action
latency of the probes sent during it, the target's RSS over the run (its
``process_resident_memory_bytes``, sampled every second) and the time back to normal:
the first second after the overload from which every one-second window of probes (by
send time) has an event-to-action p99 within 1.5 x the normal p99 (the p99 of the
recovery's second half, or ``--normal-p99-ms``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from load_tests.receiver import WebhookReceiver
from load_tests.recovery import back_to_normal
from load_tests.replay import events_url
from load_tests.report import (
    bucket_quantile,
    counts_per_second,
    hdr_distribution,
    hdr_summary,
    histogram_delta,
    parse_histogram,
    render_markdown,
    write_plots,
)
from load_tests.sender import SenderPool, SendResult, Timeline, send_requests
from load_tests.traffic import TrafficConfig, generate

__all__ = ["PROBE_RULE", "PROBE_TYPE", "LoadtestOptions", "loadtest", "run_loadtest"]

PROBE_TYPE = "loadtest_probe"
PROBE_RULE_ID = "loadtest-probe"
PROBE_FILE = "loadtest_probe.yaml"
PROBE_RULE = f"""\
# nudge loadtest: a webhook at once for every {PROBE_TYPE} event; params.sent_at is the
# probe's send time (epoch ms), so the receiver measures event-to-action latency.
id: {PROBE_RULE_ID}
trigger: {{event: {PROBE_TYPE}}}
steps:
  - send:
      channel: webhook
      template: {PROBE_TYPE}
      params: {{sent_at: "{{{{ trigger.sent_at }}}}"}}
"""
TIMER_METRIC = "nudge_timer_lateness_seconds"
_RSS = re.compile(r"^process_resident_memory_bytes(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)
_HDR_MAX_US = 3_600_000_000  # one hour


@dataclass
class LoadtestOptions:
    target: str
    token: str
    rate: float
    duration: float
    customers: int
    out: Path
    hook_port: int = 8099
    hook_host: str = "127.0.0.1"
    batch: int = 100
    admin_token: str | None = None
    seed: int = 1
    connections: int = 256
    drain: float = 15.0
    late_ms: float = 10.0
    warmup: float = 10.0
    senders: int = 0  # 0: send from this process
    recover: float = 0.0  # seconds at recover_rate after the run at rate
    recover_rate: float = 0.0
    normal_p99_ms: float | None = None
    overload: bool = False  # 429 answers are expected: refused, not errors


def _iso(epoch_s: float) -> bytes:
    ms = int(epoch_s * 1000)
    t = time.gmtime(ms // 1000)
    return (time.strftime('"%Y-%m-%dT%H:%M:%S', t) + f'.{ms % 1000:03d}Z"').encode()


def make_timeline(opts: LoadtestOptions, run_id: str) -> Timeline:
    """The run at ``rate`` for ``duration``, then the recovery at ``recover_rate``."""
    bodies, counts = build_timeline(opts, run_id)
    step = opts.batch / opts.rate
    dues = [k * step for k in range(len(bodies))]
    if opts.recover > 0 and opts.recover_rate > 0:
        tail = dataclasses.replace(opts, rate=opts.recover_rate, duration=opts.recover)
        more, more_counts = build_timeline(tail, run_id + "r")
        step = opts.batch / opts.recover_rate
        dues += [opts.duration + k * step for k in range(len(more))]
        bodies += more
        counts += more_counts
    return Timeline(bodies, counts, dues)


def _base(target: str) -> str:
    t = target.rstrip("/")
    return t.removesuffix("/v1/events")


def build_timeline(opts: LoadtestOptions, run_id: str) -> tuple[list[bytes], list[int]]:
    """Request bodies (with placeholders for the send time) and their event counts."""
    total = max(1, round(opts.rate * opts.duration))
    bodies: list[bytes] = []
    counts: list[int] = []
    batch: list[dict[str, Any]] = []
    seed = opts.seed
    made = 0

    def close() -> None:
        k = len(bodies)
        batch[-1] = {
            "event_id": f"{run_id}-probe-{k}",
            "type": PROBE_TYPE,
            "customer_id": f"{run_id}-probe-{k}",
            "timestamp": "@@LOADTEST_NOW@@",
            "properties": {"sent_at": "@@LOADTEST_SENT_AT@@"},
        }
        bodies.append(orjson.dumps(batch))
        counts.append(len(batch))
        batch.clear()

    while made < total:
        before = made
        cfg = TrafficConfig(customers=max(1, opts.customers), events=total - made, seed=seed)
        for ev in generate(cfg):
            batch.append(
                {
                    **ev,
                    "event_id": f"{run_id}-{ev['event_id']}",
                    "timestamp": "@@LOADTEST_NOW@@",
                }
            )
            made += 1
            if len(batch) >= opts.batch:
                close()
        if made == before:  # the generator cannot produce anything: give up
            break
        seed += 1  # every customer's life ended early: go on with new lives
    if batch:
        close()
    return bodies, counts


async def _metrics(session: Any, base: str) -> str | None:
    from aiohttp import ClientError

    try:
        async with session.get(base + "/metrics") as r:
            return str(await r.text()) if r.status == 200 else None
    except (TimeoutError, ClientError, OSError):
        return None


async def _deploy_probe(session: Any, base: str, token: str) -> dict[str, str] | None:
    """Append the probe rule to the running set; returns the previous files (to restore),
    or None if it was already there."""
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(base + "/v1/rules", headers=headers) as r:
        body = await r.json()
        if r.status != 200:
            raise RuntimeError(f"GET /v1/rules: {r.status} {body}")
    files: dict[str, str] = dict(body.get("files") or {})
    if any(f"id: {PROBE_RULE_ID}" in text for text in files.values()):
        return None
    async with session.put(
        base + "/v1/rules", json={"files": {**files, PROBE_FILE: PROBE_RULE}}, headers=headers
    ) as r:
        res = await r.json()
        if r.status != 200:
            raise RuntimeError(f"PUT /v1/rules: {r.status} {res}")
    print(f"deployed the probe rule: rules version {res.get('version')}", file=sys.stderr)
    return files


async def _restore(session: Any, base: str, token: str, files: dict[str, str]) -> None:
    async with session.put(
        base + "/v1/rules", json={"files": files}, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        res = await r.json()
    print(f"restored the previous rule set: {r.status} {res.get('version')}", file=sys.stderr)


async def _sample_rss(
    session: Any, base: str, start: float, out: list[tuple[float, float]]
) -> None:
    """The target's RSS (MB) every second, from its ``/metrics``."""
    while True:
        text = await _metrics(session, base)
        m = _RSS.search(text or "")
        if m:
            out.append((time.monotonic() - start, float(m.group(1)) / 1e6))
        await asyncio.sleep(1.0)


async def _run(
    opts: LoadtestOptions, run_id: str, timeline: Timeline, pool: SenderPool | None
) -> dict[str, Any]:
    from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector
    from hdrh.histogram import HdrHistogram

    base = _base(opts.target)
    url = events_url(opts.target)
    headers = {"Authorization": f"Bearer {opts.token}", "Content-Type": "application/json"}
    e2a = HdrHistogram(1, _HDR_MAX_US, 3)
    counts = timeline.counts

    recv = WebhookReceiver(e2a, PROBE_RULE_ID, PROBE_TYPE)
    await recv.listen(opts.hook_host, opts.hook_port)
    restore: dict[str, str] | None = None
    rss: list[tuple[float, float]] = []
    try:
        async with ClientSession(
            connector=TCPConnector(limit=opts.connections),
            timeout=ClientTimeout(total=60),
        ) as session:
            if opts.admin_token:
                restore = await _deploy_probe(session, base, opts.admin_token)
            before = await _metrics(session, base)

            # warm-up: one probe through the whole path (rule deployed, sinks routed here)
            warm = orjson.dumps(
                {
                    "event_id": f"{run_id}-warmup",
                    "type": PROBE_TYPE,
                    "customer_id": f"{run_id}-warmup",
                    "timestamp": _iso(time.time()).decode().strip('"'),
                    "properties": {"sent_at": time.time() * 1000},
                }
            )
            try:
                async with session.post(url, data=warm, headers=headers) as r:
                    warm_status = r.status
                    await r.read()
            except (TimeoutError, ClientError, OSError) as err:
                raise RuntimeError(f"{url}: {err}") from err
            if warm_status != 202:
                raise RuntimeError(f"{url}: warm-up probe refused with {warm_status}")
            try:
                await asyncio.wait_for(recv.warm.wait(), opts.warmup)
            except TimeoutError:
                print(
                    f"warning: the warm-up probe did not reach the webhook on port "
                    f"{opts.hook_port} within {opts.warmup:g}s: is the probe rule deployed "
                    f"({opts.out / 'probe.yaml'}) and are actions routed to "
                    f"http://{opts.hook_host}:{opts.hook_port}/hook? "
                    "Event-to-action latency will be missing.",
                    file=sys.stderr,
                )

            loop_start = time.monotonic() + 0.2
            recv.restart(loop_start)
            sampler = asyncio.create_task(_sample_rss(session, base, loop_start, rss))
            try:
                if pool is not None:
                    pool.start(loop_start)
                    span = timeline.dues[-1] if timeline.dues else 0.0
                    sent = await pool.results(timeout=span + 180)
                else:
                    sent = await send_requests(
                        url,
                        headers,
                        timeline,
                        range(len(timeline.bodies)),
                        loop_start,
                        opts.connections,
                        opts.late_ms,
                    )
            finally:
                sampler.cancel()
            send_end = loop_start + max((t for t, _ in sent.sent), default=0.0)
            timeline.bodies.clear()
            probes_acked = len(sent.acked)
            # wait for the probes still in the engine
            end = time.monotonic() + opts.drain
            while len(recv.probe_keys) < probes_acked and time.monotonic() < end:
                await asyncio.sleep(0.1)
            after = await _metrics(session, base)
            if restore is not None and opts.admin_token:
                await _restore(session, base, opts.admin_token, restore)
    finally:
        recv.close()
    return _report(opts, run_id, counts, sent, recv, send_end - loop_start, before, after, rss)


def _hdr(values_ms: Any) -> Any:
    from hdrh.histogram import HdrHistogram

    h = HdrHistogram(1, _HDR_MAX_US, 3)
    for v in values_ms:
        h.record_value(max(1, round(v * 1000)))
    return h


def _report(
    opts: LoadtestOptions,
    run_id: str,
    counts: list[int],
    sent: SendResult,
    recv: WebhookReceiver,
    sent_time: float,
    before: str | None,
    after: str | None,
    rss: list[tuple[float, float]],
) -> dict[str, Any]:
    sent_time = max(1e-9, sent_time)
    answers = sent.answers
    statuses: dict[str, int] = {}
    for _, _, status, _ in answers:
        key = str(status) if status else "connection_error"
        statuses[key] = statuses.get(key, 0) + 1
    ok = [a for a in answers if a[2] == 202]
    refused = [a for a in answers if a[2] == 429]
    ingest = _hdr(ms for _, ms, _, _ in ok)
    ingest_all = _hdr(ms for _, ms, status, _ in answers if status)
    from_sched = _hdr((done - due) * 1000 for due, done in sent.acked)
    events_sent = sum(n for _, n in sent.sent)
    events_acked = sum(n for _, _, _, n in ok)
    in_run = [a for a in ok if a[0] < opts.duration]
    timer: dict[str, Any] = {"available": before is not None and after is not None}
    if before is not None and after is not None:
        delta = histogram_delta(
            parse_histogram(before, TIMER_METRIC), parse_histogram(after, TIMER_METRIC)
        )
        q50, q99 = bucket_quantile(0.5, delta), bucket_quantile(0.99, delta)
        timer.update(
            count=int(delta[-1][1]) if delta else 0,
            p50=None if q50 is None else round(q50, 4),
            p99=None if q99 is None else round(q99, 4),
        )
    lags = sorted(sent.lags)
    ingest_dist = hdr_distribution(ingest)
    e2a_dist = hdr_distribution(recv.hdr)
    # probes by send time (arrival minus latency)
    by_send = [(t - lat / 1000, lat) for t, lat in recv.samples]
    overload_e2a = _hdr(lat for t, lat in by_send if t < opts.duration)
    report: dict[str, Any] = {
        "run_id": run_id,
        "config": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in asdict(opts).items()
            if k not in ("token", "admin_token")
        },
        "requests": {
            "scheduled": len(counts),
            "sent": len(sent.sent),
            "late": sent.late,
            "late_threshold_ms": opts.late_ms,
            "max_send_lag_ms": round(lags[-1] * 1000, 3) if lags else 0.0,
            "p99_send_lag_ms": (
                round(lags[min(len(lags) - 1, int(0.99 * len(lags)))] * 1000, 3) if lags else 0.0
            ),
            "events_sent": events_sent,
            "events_acknowledged": events_acked,
            "send_rate": round(events_sent / sent_time, 1),
            # the rate offered at --rate alone (send_rate averages in the recovery)
            "send_rate_during_run": round(
                sum(n for t, n in sent.sent if t < opts.duration)
                / max(1e-9, min(opts.duration, sent_time)),
                1,
            ),
            "connections": sent.connections,
            # only forked senders: in this process the receiver's CPU would be in it
            "sender_cpu_s": round(sent.cpu_s, 3) if opts.senders > 0 else None,
            "events_per_sender_cpu_s": (
                round(events_sent / sent.cpu_s) if opts.senders > 0 and sent.cpu_s else None
            ),
            "ack_rate": round(events_acked / sent_time, 1),
            "accepted_rate_during_run": round(
                sum(n for _, _, _, n in in_run) / max(1e-9, min(opts.duration, sent_time)), 1
            ),
        },
        "refused": {"requests": len(refused), "events": sum(n for _, _, _, n in refused)},
        "statuses": dict(sorted(statuses.items())),
        "errors": {
            k: v
            for k, v in sorted(statuses.items())
            if k != "202" and not (opts.overload and k == "429")
        },
        "ingest_latency_ms": hdr_summary(ingest),
        "ingest_all_answers_ms": hdr_summary(ingest_all),
        "ingest_from_schedule_ms": hdr_summary(from_sched),
        "event_to_action_ms": hdr_summary(recv.hdr),
        "event_to_action_during_run_ms": hdr_summary(overload_e2a),
        "probes": {
            "sent": len(sent.sent),
            "acknowledged": len(ok),
            "received": len(recv.probe_keys),
            "missing": max(0, len(ok) - len(recv.probe_keys)),
            "redelivered": recv.duplicates,
        },
        "actions_received": recv.actions,
        "timer_lateness_s": timer,
        "rss_mb": {
            "max": round(max((v for _, v in rss), default=0.0), 1) or None,
            "last": round(rss[-1][1], 1) if rss else None,
            "series": [(round(t, 1), round(v, 1)) for t, v in rss],
        },
        "recovery": back_to_normal(by_send, opts.duration, opts.recover, opts.normal_p99_ms)
        if opts.recover > 0
        else None,
        "series": {
            "events_sent_per_s": counts_per_second(
                [t for t, _ in sent.sent], [float(n) for _, n in sent.sent]
            ),
            "events_acknowledged_per_s": counts_per_second(
                [t for t, _, _, _ in ok], [float(n) for _, _, _, n in ok]
            ),
            "events_refused_per_s": counts_per_second(
                [t for t, _, _, _ in refused], [float(n) for _, _, _, n in refused]
            ),
            "actions_per_s": counts_per_second(recv.arrivals),
        },
        "ingest_distribution_ms": ingest_dist,
        "event_to_action_distribution_ms": e2a_dist,
    }
    plots = write_plots(
        opts.out,
        [(t, ms) for t, ms, status, _ in answers if status],
        recv.samples,
        ingest_dist,
        e2a_dist,
        report["series"]["events_sent_per_s"],
        report["series"]["events_acknowledged_per_s"],
        report["series"]["actions_per_s"],
        refused_per_s=report["series"]["events_refused_per_s"],
        overload_end=opts.duration if opts.recover > 0 else None,
    )
    report["plots"] = [p.name for p in plots]
    return report


def loadtest(opts: LoadtestOptions) -> dict[str, Any]:
    """Run a load test; writes probe.yaml, report.json, report.md and the plots to
    ``opts.out`` and returns the report."""
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "probe.yaml").write_text(PROBE_RULE, encoding="utf-8")
    run_id = "lt" + uuid.uuid4().hex[:8]
    t_gen = time.monotonic()
    timeline = make_timeline(opts, run_id)
    print(
        f"timeline: {sum(timeline.counts):,} events in {len(timeline.bodies):,} requests "
        f"(built in {time.monotonic() - t_gen:.1f}s)",
        file=sys.stderr,
    )
    pool = None
    if opts.senders > 0:  # forked before any event loop runs here
        headers = {"Authorization": f"Bearer {opts.token}", "Content-Type": "application/json"}
        pool = SenderPool(
            opts.senders,
            events_url(opts.target),
            headers,
            timeline,
            opts.connections,
            opts.late_ms,
        )
    try:
        report = _run_loop(opts, run_id, timeline, pool)
    finally:
        if pool is not None:
            pool.close()
    md = render_markdown(report)
    (opts.out / "report.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    (opts.out / "report.md").write_text(md, encoding="utf-8")
    report["markdown"] = md
    return report


def _run_loop(
    opts: LoadtestOptions, run_id: str, timeline: Timeline, pool: SenderPool | None
) -> dict[str, Any]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(_run(opts, run_id, timeline, pool))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_run(opts, run_id, timeline, pool))


def run_loadtest(args: Any) -> int:
    """The ``loadtest`` command handler (argparse namespace from load_tests.cli)."""
    token = args.token or os.environ.get("NUDGE_WRITE_TOKEN")
    if not token:
        print("no write token: --token or NUDGE_WRITE_TOKEN", file=sys.stderr)
        return 2
    if not (args.rate > 0 and args.duration > 0 and args.customers > 0):
        print("--rate, --duration and --customers must be > 0", file=sys.stderr)
        return 2
    if not 2 <= args.batch <= 1000:
        print("--batch: 2 to 1000 events (one of them is the probe)", file=sys.stderr)
        return 2
    if not math.isfinite(args.rate):
        return 2
    if args.recover > 0 and not (args.recover_rate or 0) > 0:
        print("--recover needs --recover-rate (the normal rate after the run)", file=sys.stderr)
        return 2
    out = Path(args.out)
    opts = LoadtestOptions(
        target=args.target,
        token=token,
        rate=float(args.rate),
        duration=float(args.duration),
        customers=int(args.customers),
        out=out,
        hook_port=args.hook_port,
        hook_host=args.hook_host,
        batch=args.batch,
        admin_token=args.admin_token or None,
        seed=args.seed,
        connections=args.connections,
        drain=args.drain,
        late_ms=args.late_ms,
        senders=args.senders,
        recover=args.recover,
        recover_rate=args.recover_rate or 0.0,
        normal_p99_ms=args.normal_p99_ms,
        overload=args.overload,
    )
    if not opts.admin_token:
        print(
            f"probe rule: {out / 'probe.yaml'}; deploy it with your rules, e.g.\n"
            f"  nudge rules deploy RULES_DIR {out / 'probe.yaml'} --url {_base(args.target)}\n"
            f"and route actions to http://{opts.hook_host}:{opts.hook_port}/hook "
            "(or pass --admin-token to deploy it for the run)",
            file=sys.stderr,
        )
    try:
        report = loadtest(opts)
    except (RuntimeError, OSError) as err:
        print(f"loadtest: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(report["markdown"])
    sys.stdout.flush()
    if report["errors"]:  # refused (401, 429, 5xx...) or no answer: the rate was not met
        refused = sum(report["errors"].values())
        statuses = ", ".join(f"{k}: {v}" for k, v in report["errors"].items())
        print(f"loadtest: {refused} requests not accepted ({statuses})", file=sys.stderr)
        return 1
    return 0
