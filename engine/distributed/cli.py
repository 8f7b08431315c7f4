"""``nudge worker``: run one distributed worker (faust) until SIGTERM/SIGINT.

Wire into ``engine/cli.py`` with ``add_worker_parser(sub)`` next to the other commands.
Also runnable alone: ``python -m engine.distributed.cli worker ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from engine.logs import configure_logging
from engine.settings import environment

__all__ = ["add_topics_parser", "add_worker_parser", "config_from_args", "run_worker"]

logger = logging.getLogger(__name__)


def add_worker_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``worker`` sub-command to an argparse sub-parser set."""
    from engine.distributed.config import ROLES

    w: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run a distributed worker: faust on Kafka, Redis for sends and rules"
    )
    w.add_argument("--broker", default="kafka://127.0.0.1:9092")
    w.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    w.add_argument("--app-id", default="nudge")
    w.add_argument(
        "--partitions",
        type=int,
        default=4,
        help="the partitions of every topic (created with it; an existing topic with "
        "another count is refused at start)",
    )
    w.add_argument(
        "--replication-factor", type=int, default=1, help="of the topics created (default 1)"
    )
    w.add_argument("--events-topic", default="events")
    w.add_argument("--actions-topic", default="actions")
    w.add_argument("--rules", nargs="+", help="seed rule set when Redis has none")
    w.add_argument("--sinks", help="JSON/YAML action routing config (connectors/routing.py)")
    w.add_argument("--batch-size", type=int, default=2000)
    w.add_argument("--session-timeout", type=float, default=10.0)
    w.add_argument("--heartbeat-interval", type=float, default=1.0)
    w.add_argument("--redis-prefix", default="nudge")
    w.add_argument("--claim-ttl", type=int, default=30)
    w.add_argument("--stats-file", help="write JSON counters here every --stats-interval s")
    w.add_argument("--stats-interval", type=float, default=1.0)
    w.add_argument("--http-port", type=int, help="also serve HTTP ingest on this port")
    w.add_argument("--http-host", default="127.0.0.1")
    w.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics on /metrics on this port"
    )
    w.add_argument("--data", default="nudge-data", help="where tokens.json lives (ingest)")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument(
        "--admission-target",
        type=float,
        default=0.25,
        metavar="SECONDS",
        help="the --http-port ingest produces a request only if the events awaiting the "
        "broker's acks drain within this many seconds at the measured pace (views: half, "
        "orders, carts and consent: four times); else 429 with Retry-After "
        "(docs/operations.md, Overload)",
    )
    w.add_argument(
        "--priority",
        type=_priority,
        action="append",
        metavar="TYPE=low|normal|high",
        help="shedding priority of an event type at the ingest (repeatable)",
    )
    w.add_argument(
        "--role",
        choices=ROLES,
        default="all",
        help="all: process events and deliver actions; process / deliver: one of them "
        "(delivery then is its own consumer group, <app-id>-deliver)",
    )
    w.add_argument(
        "--analytics",
        choices=("on", "off"),
        default="off",
        help="campaign analytics: counts ride on the changelog rows; the --http-port "
        "ingest folds them into Redis and serves the reports and console funnels "
        "(docs/analytics.md)",
    )
    w.set_defaults(func=run_worker)
    return w


def _load_sinks(path: str | None) -> dict[str, Any]:
    if not path:
        return {"default": "log"}
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping")
    return data


def config_from_args(args: argparse.Namespace) -> Any:
    from engine.distributed.config import WorkerConfig

    return WorkerConfig(
        broker=args.broker,
        redis_url=args.redis,
        app_id=args.app_id,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        events_topic=args.events_topic,
        actions_topic=args.actions_topic,
        rules=args.rules,
        sinks=_load_sinks(args.sinks),
        batch_size=args.batch_size,
        session_timeout=args.session_timeout,
        heartbeat_interval=args.heartbeat_interval,
        redis_prefix=args.redis_prefix,
        claim_ttl=args.claim_ttl,
        stats_file=args.stats_file,
        stats_interval=args.stats_interval,
        role=args.role,
        analytics=getattr(args, "analytics", "off") == "on",
    )


def run_worker(args: argparse.Namespace) -> NoReturn:
    """Build the app and run it with a faust Worker (blocks until stopped). A start-up
    error (a port in use, an unwritable ``--data``, Kafka unreachable, a topic with
    another partition count) is one line on stderr and exit status 1."""
    import asyncio

    import faust

    from engine.distributed.app import create_app
    from engine.distributed.topics import ensure_topics, plan_of

    cfg = config_from_args(args)
    try:
        socks = _listen(args)
        if args.http_port:
            _load_tokens(args)
        with _quiet_kafka():
            asyncio.run(ensure_topics(cfg.broker, plan_of(cfg)))
    except _StartupError as err:
        _refuse(str(err))
    except Exception as err:  # broker unreachable, a layout error, a timeout
        _refuse(_kafka_reason(cfg.broker, err))
    _maybe_profile()
    worker_app = create_app(cfg)
    if socks:
        metrics = _metrics(worker_app, ingest="http" in socks)
        if "http" in socks:
            _add_ingest(worker_app, args, socks["http"], metrics)
        if "metrics" in socks:
            _add_metrics(worker_app, args, socks["metrics"], metrics)
        _add_loop_samplers(worker_app, metrics)
    worker = faust.Worker(
        worker_app.app, loglevel=args.loglevel, quiet=True, redirect_stdouts=False
    )
    worker.execute_from_commandline()  # exits the process


class _StartupError(Exception):
    pass


def _refuse(message: str) -> NoReturn:
    print(f"nudge worker: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def _kafka_reason(broker: str, err: BaseException) -> str:
    from engine.distributed.exceptions import DistributedError

    if isinstance(err, DistributedError):
        return str(err)
    if isinstance(err, TimeoutError):
        return f"{broker}: {err or 'timed out'}"
    return f"{broker}: cannot reach Kafka ({err or type(err).__name__})"


@contextlib.contextmanager
def _quiet_kafka() -> Iterator[None]:
    """aiokafka logs each failed connection at ERROR: the one-line start-up error says
    it instead."""
    log = logging.getLogger("aiokafka")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _listen(args: argparse.Namespace) -> dict[str, socket.socket]:
    """The listening sockets of ``--http-port`` and ``--metrics-port``, bound now so a
    port in use is reported before anything starts (served later on faust's loop)."""
    socks: dict[str, socket.socket] = {}
    for name, port in (("http", args.http_port), ("metrics", args.metrics_port)):
        if not port:
            continue
        try:
            socks[name] = socket.create_server((args.http_host, port), backlog=512)
        except OSError as err:
            reason = (
                "address already in use (another nudge process, or another program?)"
                if err.errno == errno.EADDRINUSE
                else err.strerror or str(err)
            )
            raise _StartupError(f"cannot listen on {args.http_host}:{port}: {reason}") from err
    return socks


def _load_tokens(args: argparse.Namespace) -> None:
    """The API tokens (``--data``/tokens.json, created when missing) readable now."""
    from engine.http.auth import Tokens

    try:
        Tokens.load_or_create(Path(args.data))
    except (OSError, ValueError, KeyError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise _StartupError(f"data directory {args.data}: {reason}") from err


def _maybe_profile() -> None:
    """``NUDGE_WORKER_PROFILE=PATH``: profile the whole worker process with cProfile
    (one event loop thread) and write the stats to PATH at exit (SIGTERM stops cleanly)."""
    path = environment().worker_profile
    if not path:
        return
    import atexit
    import cProfile

    prof = cProfile.Profile()

    def dump() -> None:
        prof.disable()
        prof.dump_stats(path)

    atexit.register(dump)
    prof.enable()


def _priority(text: str) -> tuple[str, str]:
    from engine.admission import parse_priority

    try:
        return parse_priority(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _metrics(worker_app: Any, ingest: bool) -> Any:
    """The process's metrics (engine/distributed/metrics.py), counted by the app."""
    from engine.distributed.lag import LagSeconds, consumer_lag, partition_lag
    from engine.distributed.metrics import WorkerCollector, serve_alongside, worker_metrics

    def processed_at() -> dict[int, int]:
        engine = worker_app.engine
        return engine.processed_at if engine is not None else {}

    metrics = worker_metrics(ingest)
    collector = WorkerCollector(
        worker_app.stats,
        worker_app.cfg.role,
        lag=lambda: consumer_lag(worker_app),
        lag_seconds=LagSeconds(lambda: partition_lag(worker_app), processed_at),
    )
    serve_alongside(metrics, collector)
    worker_app.metrics = metrics
    return metrics


def _add_metrics(
    worker_app: Any, args: argparse.Namespace, sock: socket.socket, metrics: Any
) -> None:
    """Serve the worker's metrics on ``--metrics-port``, on its event loop."""
    from aiohttp import web

    from engine.distributed.metrics import metrics_app

    async def serve() -> None:
        runner = web.AppRunner(metrics_app(metrics.registry), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        logger.info("metrics on http://%s:%d/metrics", args.http_host, args.metrics_port)

    worker_app.app.task(serve)


def _add_loop_samplers(worker_app: Any, metrics: Any) -> None:
    """The event loop's lag and busy share (engine/loop_samplers.py), sampled on faust's
    loop as they are on ``nudge run``'s."""
    import asyncio

    from engine.loop_samplers import busy_loop, lag_loop

    async def sample() -> None:
        await asyncio.gather(lag_loop(metrics.loop_lag.observe), busy_loop(metrics.loop_busy.set))

    worker_app.app.task(sample)


def _add_ingest(
    worker_app: Any, args: argparse.Namespace, sock: socket.socket, metrics: Any
) -> None:
    """Serve ``create_app(MeteredIngest)`` on the worker's event loop (segments from the
    app's segments topic, docs/segments.md)."""
    from aiohttp import web

    from engine.distributed.metrics import AggregatorCollector, MeteredIngest
    from engine.distributed.storage.addresses import RedisAddressBook
    from engine.distributed.storage.redis import RedisState
    from engine.http.app import create_app as create_http_app
    from engine.http.auth import Tokens

    cfg = worker_app.cfg

    async def serve() -> None:
        redis = RedisState(cfg.redis_url, prefix=cfg.redis_prefix)
        ingest = MeteredIngest(
            cfg.broker,
            cfg.events_topic,
            redis=redis,
            segments_topic=cfg.segments_topic,
            replies_topic=cfg.replies_topic,
            admission_target=args.admission_target,
            priorities=dict(args.priority or ()),
            changelog_topic=cfg.changelog_topic if cfg.analytics else None,
            actions_topic=cfg.actions_topic,
            metrics=metrics,
        )
        await ingest.start()
        if ingest.aggregator is not None:
            metrics.registry.register(AggregatorCollector(ingest.aggregator))
        tokens, _, _ = Tokens.load_or_create(Path(args.data))
        metrics.segment_members.source = ingest.segment_sizes
        book = RedisAddressBook(redis.client, prefix=f"{cfg.redis_prefix}:addresses")
        app = create_http_app(ingest, tokens, metrics, address_book=book)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        logger.info("ingest on http://%s:%d", args.http_host, args.http_port)

    worker_app.app.task(serve)


def add_topics_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``topics ensure``: the one-shot step before the workers start."""
    t: argparse.ArgumentParser = subparsers.add_parser(
        "topics", help="create the distributed runtime's Kafka topics (before the workers)"
    )
    tsub = t.add_subparsers(dest="topics_command", required=True)
    e = tsub.add_parser(
        "ensure",
        help="create the missing topics with --partitions; exit 1 when one exists with "
        "another partition count",
    )
    e.add_argument("--broker", default="kafka://127.0.0.1:9092")
    e.add_argument("--partitions", type=int, required=True, help="the workers' --partitions")
    e.add_argument("--replication-factor", type=int, default=1)
    e.add_argument("--app-id", default="nudge", help="the workers' --app-id")
    e.add_argument("--events-topic", default="events")
    e.add_argument("--actions-topic", default="actions")
    e.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Kafka")
    e.set_defaults(func=run_topics_ensure)
    return t


def run_topics_ensure(args: argparse.Namespace) -> int:
    """``nudge topics ensure``: one line per topic created (or none), exit status 0;
    1 with one line on stderr when a topic has another partition count or Kafka does
    not answer within ``--timeout`` (retried meanwhile: a broker still starting)."""
    import asyncio

    from engine.distributed.config import WorkerConfig
    from engine.distributed.exceptions import DistributedError
    from engine.distributed.topics import ensure_topics, plan_of

    cfg = WorkerConfig(
        broker=args.broker,
        app_id=args.app_id,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        events_topic=args.events_topic,
        actions_topic=args.actions_topic,
    )
    plan = plan_of(cfg)

    async def ensure() -> list[str]:
        loop = asyncio.get_running_loop()
        end = loop.time() + args.timeout
        while True:
            try:
                return await ensure_topics(cfg.broker, plan, timeout=args.timeout)
            except DistributedError:
                raise
            except Exception:
                if loop.time() > end:
                    raise
                await asyncio.sleep(1.0)

    try:
        with _quiet_kafka():
            created = asyncio.run(ensure())
    except Exception as err:
        print(f"nudge topics ensure: {_kafka_reason(cfg.broker, err)}", file=sys.stderr)
        return 1
    for name in created:
        print(f"created {name} ({args.partitions} partitions)")
    print(f"topics ready: {', '.join(plan.create)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="nudge")
    sub = parser.add_subparsers(dest="command", required=True)
    add_worker_parser(sub)
    add_topics_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
