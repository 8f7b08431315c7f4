"""The ``nudge`` command line: rules check|schema|list|rollback, sinks check, backtest, segments
list|export (run and worker come with their runtimes)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from engine.admin import add_admin_parsers
from engine.distributed.cli import add_topics_parser, add_worker_parser
from engine.distributed.purge import add_purge_parser
from engine.embedded import CHECKPOINT_MODES
from engine.embedded.storage.crypt import DataKeyError, generate_key
from engine.erasure import add_erase_parser
from engine.logs import configure_logging
from engine.rollback import add_rollback_parser
from engine.settings import SettingsError, environment
from engine.types import to_ms
from load_tests.cli import add_loadtest_parsers
from rules.exceptions import RuleErrors
from rules.ruleset import RECIPES_DIR, load_ruleset
from rules.schema import rule_schema

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _cmd_rules_check(args: argparse.Namespace) -> int:
    try:
        rs = load_ruleset(args.paths)
    except RuleErrors as err:
        for e in err.errors:
            print(e, file=sys.stderr)
        print(f"{len(err.errors)} error(s); rule set rejected", file=sys.stderr)
        return 1
    print(f"ok: {len(rs.rules)} rule(s), digest {rs.digest}")
    return 0


def _cmd_rules_list(args: argparse.Namespace) -> int:
    try:
        rs = load_ruleset(args.paths)
    except RuleErrors as err:
        print(err, file=sys.stderr)
        return 1
    for r in sorted(rs.rules.values(), key=lambda r: r.sort_key()):
        print(f"{r.id}\tv{r.version}\tpriority={r.priority}\ttrigger={r.trigger}")
    return 0


def _cmd_rules_schema(args: argparse.Namespace) -> int:
    text = json.dumps(rule_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_sinks_check(args: argparse.Namespace) -> int:
    """Each problem of each sinks file as ``file:line:col: $.json.path: message``;
    credentials that cannot be read here are warnings unless ``--strict``."""
    from connectors.routing import check_config
    from rules.exceptions import RuleError
    from rules.loader import load_documents

    errors = warnings = sinks = 0
    for path in args.paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
            docs = load_documents(path, text)
        except OSError as err:
            print(f"{path}:1:1: {err.strerror or err}", file=sys.stderr)
            errors += 1
            continue
        except RuleError as err:
            print(err, file=sys.stderr)
            errors += 1
            continue
        if len(docs) != 1:
            print(
                f"{path}:1:1: expected one YAML/JSON document, found {len(docs)}", file=sys.stderr
            )
            errors += 1
            continue
        doc = docs[0]
        problems = check_config(doc.data, secrets="error" if args.strict else "warn")
        for p in problems:
            _, (line, col) = doc.positions.locate(p.loc, doc.data)
            kind = "warning: " if p.warning else ""
            print(f"{path}:{line}:{col}: {kind}{p.field}: {p.message}", file=sys.stderr)
            warnings += p.warning
            errors += not p.warning
        if isinstance(doc.data, dict) and isinstance(doc.data.get("sinks"), dict):
            sinks += len(doc.data["sinks"])
    if errors:
        print(f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(args.paths)} file(s), {sinks} sink(s), {warnings} warning(s)")
    return 0


def _time_option(flag: str, value: str | None) -> int | None:
    """An RFC 3339 option as epoch ms (None when not given). Raises ValueError naming the
    flag when it is not a time with an offset."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{flag}: not an RFC 3339 time: {value!r}") from None
    if dt.tzinfo is None:
        raise ValueError(f"{flag}: needs an offset (Z or +hh:mm)")
    return to_ms(dt)


def _cmd_backtest(args: argparse.Namespace) -> int:
    from engine.backtest import backtest, write_actions

    try:
        rs = load_ruleset(args.rules)
    except RuleErrors as err:
        print(err, file=sys.stderr)
        return 1
    try:
        until = _time_option("--until", args.until)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        with open(args.events, "rb") as fh:
            result = backtest(rs, fh, until)
    except OSError as err:
        print(f"{args.events}: {err.strerror}", file=sys.stderr)
        return 1
    write_actions(result, sys.stdout.buffer)
    sys.stdout.flush()
    for line, field, message in result.rejected[:100]:
        print(f"{args.events}:{line}: rejected: {field}: {message}", file=sys.stderr)
    if len(result.rejected) > 100:
        print(f"... {len(result.rejected) - 100} more rejected lines", file=sys.stderr)
    sys.stderr.write(orjson.dumps(result.summary(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


async def _segments_get(url: str, token: str) -> tuple[int, dict[str, Any]]:
    from aiohttp import ClientSession

    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def _segments_token(args: argparse.Namespace) -> str | None:
    from engine.admin import _admin_token

    token = _admin_token(args)
    if token is None:
        print(
            "no admin token: --token, NUDGE_ADMIN_TOKEN or --data DIR/tokens.json", file=sys.stderr
        )
    return token


def _cmd_segments_list(args: argparse.Namespace) -> int:
    """The running engine's segments: size, entries and exits in the last 24 hours."""
    token = _segments_token(args)
    if token is None:
        return 2
    try:
        status, body = asyncio.run(_segments_get(args.url.rstrip("/") + "/v1/segments", token))
    except (OSError, ValueError) as err:
        print(f"{args.url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"refused ({status}): {orjson.dumps(body).decode()}", file=sys.stderr)
        return 1
    rows = [("SEGMENT", "SIZE", "ENTERED_24H", "EXITED_24H", "DESCRIPTION")]
    rows += [
        (s["id"], str(s["size"]), str(s["entered_24h"]), str(s["exited_24h"]), s["description"])
        for s in body["segments"]
    ]
    width = max(len(r[0]) for r in rows)
    for sid, size, entered, exited, description in rows:
        print(f"{sid:<{width}}  {size:>10}  {entered:>11}  {exited:>10}  {description}")
    return 0


async def _export_segment(args: argparse.Namespace, token: str, target: Path) -> int:
    """Stream ``GET /v1/segments/{id}/members.{format}`` into ``target`` (a rich progress
    line on a terminal); returns the members written, or raises ``_Refused``."""
    from urllib.parse import quote

    from aiohttp import ClientSession, ClientTimeout
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    url = f"{args.url.rstrip('/')}/v1/segments/{quote(args.segment, safe='')}/members.{args.format}"
    headers = {"Authorization": f"Bearer {token}"}
    timeout = ClientTimeout(total=None, sock_read=300)
    async with ClientSession(timeout=timeout) as s, s.get(url, headers=headers) as r:
        if r.status != 200:
            raise _Refused(r.status, await r.text())
        total = int(r.headers.get("X-Nudge-Segment-Size", "0"))
        lines = -1 if args.format == "csv" else 0  # the CSV header is not a member
        progress = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not sys.stderr.isatty(),
        )
        with progress, target.open("wb") as fh:
            task = progress.add_task(f"segment {args.segment}", total=total)
            async for chunk in r.content.iter_chunked(1 << 16):
                fh.write(chunk)
                n = chunk.count(b"\n")
                lines += n
                progress.advance(task, n)
        return lines


class _Refused(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"refused ({status}): {body}")


def _cmd_segments_export(args: argparse.Namespace) -> int:
    """Every member of a segment into a file (NDJSON or CSV), as the API streams it."""
    token = _segments_token(args)
    if token is None:
        return 2
    out = Path(args.output)
    part = out.with_name(out.name + ".part")
    try:
        n = asyncio.run(_export_segment(args, token, part))
    except (OSError, ValueError, _Refused) as err:
        part.unlink(missing_ok=True)
        print(f"{args.url}: {err}", file=sys.stderr)
        return 1
    part.replace(out)
    print(f"exported {n} members of {args.segment} to {out}", file=sys.stderr)
    return 0


def _add_segments_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    seg = sub.add_parser("segments", help="list or export segment members of a running engine")
    ssub = seg.add_subparsers(dest="segments_command", required=True)
    lst = ssub.add_parser("list", help="segments with size and entries/exits in the last 24 h")
    exp = ssub.add_parser("export", help="every member of a segment into a file")
    exp.add_argument("segment", help="segment id")
    exp.add_argument("--format", choices=["ndjson", "csv"], default="ndjson")
    exp.add_argument("-o", "--output", required=True, help="file to write")
    for p in (lst, exp):
        p.add_argument("--url", default="http://127.0.0.1:8080")
        p.add_argument("--token", help="admin token (else NUDGE_ADMIN_TOKEN or --data)")
        p.add_argument("--data", default="nudge-data", help="where tokens.json is")
    lst.set_defaults(func=_cmd_segments_list)
    exp.set_defaults(func=_cmd_segments_export)


def _cmd_report(args: argparse.Namespace) -> int:
    """The report API's figures as a file (engine/analytics/document.py)."""

    from engine.analytics.document import fetch, render

    env = environment()
    token = args.token or env.read_token or env.admin_token
    if not token:
        print("no token: --token, NUDGE_READ_TOKEN or NUDGE_ADMIN_TOKEN", file=sys.stderr)
        return 2
    try:
        data = asyncio.run(fetch(args.url, token, args.rule, args.date_from, args.date_to))
    except (OSError, ValueError, RuntimeError) as err:
        print(f"{args.url}: {err}", file=sys.stderr)
        return 1
    out = Path(args.out or f"nudge-report.{args.format}")
    for f in render(data, args.format, out):
        print(f"wrote {f}", file=sys.stderr)
    return 0


def _add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rep = sub.add_parser("report", help="campaign report of a running engine into a file")
    rep.add_argument("--url", default="http://127.0.0.1:8080")
    rep.add_argument("--token", help="read (or admin) token; else NUDGE_READ_TOKEN")
    rep.add_argument("--rule", help="one rule (default: every rule)")
    rep.add_argument("--from", dest="date_from", help="first day, YYYY-MM-DD")
    rep.add_argument("--to", dest="date_to", help="last day, YYYY-MM-DD")
    rep.add_argument("--format", choices=["md", "html", "json"], default="html")
    rep.add_argument("--out", help="file to write (md: charts as PNGs beside it)")
    rep.set_defaults(func=_cmd_report)


def _fit_once(args: argparse.Namespace, now_ms: int | None) -> Any:
    """One fit: of the distributed changelog (``--broker``) into Redis, or of a data
    directory's checkpointed states into its ``states.db``. Returns the CLVParams."""
    if args.broker:
        from engine.distributed.models import fit_changelog
        from engine.distributed.storage.redis import RedisState

        async def run() -> Any:
            redis = RedisState(args.redis, prefix=args.redis_prefix, retry_for=30.0)
            try:
                return await fit_changelog(
                    args.broker, redis, app_id=args.app_id, topic=args.topic, now_ms=now_ms
                )
            finally:
                await redis.close()

        return asyncio.run(run())
    from engine.embedded.models import fit_data_dir

    return fit_data_dir(args.data, now_ms)


def _cmd_models_fit(args: argparse.Namespace) -> int:
    """Fit the CLV models and store the parameters as a new version (docs/predictions.md);
    this process is the batch job. ``--every``: again and again, a fit then a sleep (a
    failed fit is logged and retried at the next one), ``--count`` times (default:
    until stopped)."""
    import time

    from engine.intelligence.fit import PredictUnavailable
    from rules.durations import parse_duration

    try:
        now_ms = _time_option("--now", args.now)
        every_s = parse_duration(args.every) / 1000 if args.every else None
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if every_s is not None and now_ms is not None:
        print("--now fixes one fit's time; it cannot go with --every", file=sys.stderr)
        return 2
    count = args.count if args.count is not None else (None if every_s else 1)
    where = (
        "a running engine uses it after POST /v1/models/reload (admin) or its next start"
        if not args.broker
        else "the workers load it within seconds"
    )
    done = 0
    status = 0
    while count is None or done < count:
        if done and every_s is not None:
            time.sleep(every_s)
        done += 1
        try:
            params = _fit_once(args, now_ms)
        except (FileNotFoundError, PredictUnavailable) as err:
            print(f"models fit: {err}", file=sys.stderr)
            status = 1
            continue
        status = 0
        print(orjson.dumps(params.to_dict(), option=orjson.OPT_INDENT_2).decode(), flush=True)
        print(f"stored as version {params.version}; {where}", file=sys.stderr, flush=True)
    return status


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _duration_seconds(text: str) -> float:
    from rules.durations import parse_duration

    try:
        ms = parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if ms <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return ms / 1000


def _cmd_run(args: argparse.Namespace) -> int:
    from engine.embedded.server import ServeOptions, serve

    speed = args.clock_speed if args.clock_speed is not None else (1800.0 if args.demo else 1.0)
    return serve(
        ServeOptions(
            rules=args.rules,
            data=Path(args.data),
            host=args.host,
            port=args.port,
            clock_speed=speed,
            sinks=Path(args.sinks) if args.sinks else None,
            partitions=args.partitions,
            demo=args.demo,
            synchronous=args.synchronous,
            compact_idle=args.compact_idle,
            checkpoint_interval=args.checkpoint_interval,
            checkpoint_mode=args.checkpoint_mode,
            refit_every=args.refit_every,
            # the demo's storefront is light: its console shows the reports
            analytics=args.analytics == "on" if args.analytics else bool(args.demo),
            admission_target=args.admission_target,
            priorities=dict(args.priority or ()),
        )
    )


def _priority(text: str) -> tuple[str, str]:
    from engine.admission import PRIORITIES

    etype, _, prio = text.partition("=")
    if not etype or prio not in PRIORITIES:
        raise argparse.ArgumentTypeError(f"expected TYPE=low|normal|high, not {text!r}")
    return etype, prio


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nudge", description="Real-time trigger engine for CRM")
    sub = p.add_subparsers(dest="command", required=True)

    rules = sub.add_parser("rules", help="check, list or describe rule files")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    chk = rsub.add_parser("check", help="validate rule files; errors as file:line:col")
    chk.add_argument("paths", nargs="+")
    chk.set_defaults(func=_cmd_rules_check)
    lst = rsub.add_parser("list", help="list the rules in files or directories")
    lst.add_argument("paths", nargs="*", default=[str(RECIPES_DIR)])
    lst.set_defaults(func=_cmd_rules_list)
    add_admin_parsers(sub, rsub)
    add_rollback_parser(rsub)
    sch = rsub.add_parser("schema", help="print the rule file JSON Schema")
    sch.add_argument("-o", "--output")
    sch.set_defaults(func=_cmd_rules_schema)

    sinks = sub.add_parser("sinks", help="check sinks (action routing) files")
    ssub = sinks.add_subparsers(dest="sinks_command", required=True)
    schk = ssub.add_parser(
        "check", help="validate sinks files (YAML/JSON); errors as file:line:col (docs/sinks.md)"
    )
    schk.add_argument("paths", nargs="+")
    schk.add_argument(
        "--strict",
        action="store_true",
        help="credentials that cannot be read here (unset variable, missing file) are errors, "
        "not warnings",
    )
    schk.set_defaults(func=_cmd_sinks_check)

    run = sub.add_parser("run", help="run the embedded engine: HTTP ingest, durable state")
    run.add_argument("--rules", nargs="+", help="rule files or directories (default: recipes)")
    run.add_argument("--data", default="nudge-data", help="data directory (default ./nudge-data)")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument(
        "--clock-speed",
        type=float,
        default=None,
        help="virtual clock X times faster than real time (demos, load tests)",
    )
    run.add_argument("--sinks", help="YAML/JSON action routing config (connectors/routing.py)")
    run.add_argument("--partitions", type=int, default=4)
    run.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="SQLite durability: FULL survives power loss, NORMAL a crash",
    )
    run.add_argument(
        "--compact-idle",
        type=float,
        default=300.0,
        help="seconds before an idle customer's state is kept serialized",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=_positive_seconds,
        default=None,
        help="seconds between state checkpoints (default 10): longer costs less work and "
        "latency under load, and makes a restart replay more of the journal",
    )
    run.add_argument(
        "--checkpoint-mode",
        choices=list(CHECKPOINT_MODES),
        default=None,
        help="paced (default): states packed a few at a time over the interval, written by "
        "a separate process; inline: written by the engine's own SQLite thread "
        "(docs/operations.md)",
    )
    run.add_argument(
        "--refit-every",
        type=_duration_seconds,
        default=None,
        help="refit the CLV models on this schedule (24h, 12h, ...; real time): `nudge "
        "models fit` in a subprocess on the data directory, then a reload (default: off; "
        "docs/predictions.md)",
    )
    run.add_argument(
        "--admission-target",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="admit a request only if the work queued ahead of it drains within this many "
        "seconds at the measured pace (views: half of it, orders, carts and consent: four "
        "times); else 429 with Retry-After (default 0.25; docs/operations.md, Overload)",
    )
    run.add_argument(
        "--priority",
        type=_priority,
        action="append",
        metavar="TYPE=low|normal|high",
        help="shedding priority of an event type under overload (repeatable; defaults: "
        "views low, orders, carts, consent, identity and provider feedback high)",
    )
    run.add_argument(
        "--analytics",
        choices=["on", "off"],
        default=None,
        help="campaign analytics: count every rule's entries, sends and conversions for "
        "the reports and the console (default off, on with --demo: it costs ~30%% of "
        "the core's throughput and, at 25,000 events/s, the ingest-to-action p99; "
        "docs/analytics.md)",
    )
    run.add_argument(
        "--demo",
        action="store_true",
        help="also run a synthetic storefront and print fires (clock x1800 unless "
        "--clock-speed: 4 hours in 8 seconds)",
    )
    run.set_defaults(func=_cmd_run)

    _add_segments_parser(sub)
    models = sub.add_parser("models", help="fit the prediction models (docs/predictions.md)")
    msub = models.add_subparsers(dest="models_command", required=True)
    mfit = msub.add_parser(
        "fit",
        help="fit CLV/churn models on a data directory's states; store a new version",
    )
    mfit.add_argument(
        "--data",
        default="nudge-data",
        help="nudge run: the data directory whose states are fitted (default ./nudge-data)",
    )
    mfit.add_argument(
        "--broker",
        help="distributed: fit the customers changelog on this Kafka (kafka://host:port) and "
        "store the parameters in --redis (instead of --data)",
    )
    mfit.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="with --broker")
    mfit.add_argument("--app-id", default="nudge", help="the workers' --app-id (with --broker)")
    mfit.add_argument("--redis-prefix", default="nudge", help="the workers' --redis-prefix")
    mfit.add_argument("--topic", help="the changelog topic (default <app-id>-customers-changelog)")
    mfit.add_argument(
        "--now",
        help="RFC 3339 time the customers' histories are measured at (default: the later of "
        "now and the latest activity in the data)",
    )
    mfit.add_argument(
        "--every",
        help="refit on a schedule: fit, store, sleep this long (24h, 30m, ...), until stopped "
        "(a sidecar / a role of its own); a failed fit is retried at the next one",
    )
    mfit.add_argument("--count", type=int, help="with --every: stop after this many fits")
    mfit.set_defaults(func=_cmd_models_fit)

    add_worker_parser(sub)
    add_topics_parser(sub)
    add_purge_parser(sub)
    add_loadtest_parsers(sub)

    _add_report_parser(sub)
    add_erase_parser(sub)
    dk = sub.add_parser(
        "datakey",
        help="print a new key for NUDGE_DATA_KEY (encryption at rest: docs/operations.md)",
    )
    dk.set_defaults(func=_cmd_datakey)

    bt = sub.add_parser("backtest", help="run rules over a recorded JSONL trace")
    bt.add_argument("--rules", nargs="+", default=[str(RECIPES_DIR)])
    bt.add_argument("--events", required=True, help="JSONL file, one event per line")
    bt.add_argument("--until", help="RFC 3339 time to fire timers up to after the last event")
    bt.set_defaults(func=_cmd_backtest)
    return p


def _cmd_datakey(args: argparse.Namespace) -> int:
    """A new data key on stdout (32 random bytes, base64): keep it in a secret store."""
    print(generate_key())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        configure_logging()
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except (SettingsError, DataKeyError) as err:  # a NUDGE_ variable, the data key: one line
        print(f"nudge: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nudge deadletter list | head`: the reader is gone
        return _stdout_closed()


def _stdout_closed() -> int:
    """The reader of stdout went away: exit quietly, as ``ls | head`` does (status 141,
    128 + SIGPIPE), without the interpreter's own traceback when it flushes stdout at
    exit (stdout is pointed at /dev/null first)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
