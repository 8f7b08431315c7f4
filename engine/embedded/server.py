"""``nudge run``: the embedded runtime behind the HTTP API, on uvloop.

Start-up errors are one line on stderr and exit status 1, never a traceback: another
engine holds the data directory (its pid named), the data directory cannot be created or
written, the port cannot be bound (checked before the recovery, and again when the site
starts). Files the process creates are owner-only (umask 077; the runtime also makes the
data directory 0700 and its files 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web

from connectors.sources.config import SourcesConfig
from engine.clock import Clock, ScaledClock, SystemClock
from engine.embedded import CHECKPOINT_MODES
from engine.embedded.exceptions import DataDirError, ListenError, StartupError
from engine.embedded.history import JournalHistory
from engine.embedded.runtime import Runtime, RuntimeConfig
from engine.embedded.storage.addresses import SqliteAddressBook
from engine.embedded.storage.crypt import sealer_from_env
from engine.http.app import create_app
from engine.http.auth import Tokens
from engine.metrics import Metrics
from engine.settings import environment

__all__ = ["HTTP_LIMITS", "ServeOptions", "serve"]

logger = logging.getLogger(__name__)

_SWITCH_INTERVAL = 0.001
# aiohttp's request parser answers a request line or header over its limits in plain
# text, before any middleware: these limits let requests up to 64 KiB reach the errors
# middleware, which answers an URL over 8 KiB with a JSON 414 (engine/http/base.py)
HTTP_LIMITS: dict[str, Any] = {"max_line_size": 65536, "max_field_size": 65536}


class ServeOptions:
    """Options of ``nudge run`` (see ``nudge run --help``)."""

    def __init__(
        self,
        *,
        rules: list[str] | None,
        data: Path,
        host: str,
        port: int,
        clock_speed: float,
        sinks: Path | None,
        partitions: int,
        demo: bool,
        synchronous: str,
        compact_idle: float = 300.0,
        checkpoint_interval: float | None = None,
        checkpoint_mode: str | None = None,
        refit_every: float | None = None,
        analytics: bool = True,
        admission_target: float = 0.25,
        priorities: dict[str, str] | None = None,
    ) -> None:
        self.rules = rules
        self.data = data
        self.host = host
        self.port = port
        self.clock_speed = clock_speed
        self.sinks = sinks
        self.partitions = partitions
        self.demo = demo
        self.synchronous = synchronous
        self.compact_idle = compact_idle
        self.analytics = analytics  # campaign analytics (docs/analytics.md)
        # time-bounded admission (engine/admission.py)
        self.admission_target = admission_target
        self.priorities = priorities or {}
        # None: NUDGE_CHECKPOINT_INTERVAL, else 10 s (tests shorten it by the environment
        # to crash mid-checkpoint)
        env = environment()
        self.checkpoint_interval = (
            checkpoint_interval if checkpoint_interval is not None else env.checkpoint_interval
        )
        # None: NUDGE_CHECKPOINT_MODE, else paced (engine/embedded/runtime.py)
        mode = checkpoint_mode or env.checkpoint_mode
        if mode not in CHECKPOINT_MODES:
            raise SystemExit(
                f"NUDGE_CHECKPOINT_MODE: {mode!r} is not one of {', '.join(CHECKPOINT_MODES)}"
            )
        self.checkpoint_mode = mode
        self.refit_every = refit_every  # seconds between CLV refits; None: off


def sinks_config(path: Path | None, data_dir: Path) -> dict[str, Any]:
    """Routing config from a YAML/JSON file, else: every action to ``actions.jsonl`` in the
    data directory and to the log."""
    if path is not None:
        loaded: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        return loaded
    return {
        "default": "file",
        "sinks": {"file": {"type": "jsonl", "path": str(data_dir / "actions.jsonl")}},
    }


def plain_sinks_inside(sinks: dict[str, Any], data_dir: Path) -> list[str]:
    """The JSONL sinks of a routing config whose file is inside ``data_dir``."""
    root = data_dir.resolve()
    out = []
    for name, spec in (sinks.get("sinks") or {}).items():
        jsonl = isinstance(spec, dict) and spec.get("type") == "jsonl" and spec.get("path")
        if jsonl and Path(spec["path"]).resolve().is_relative_to(root):
            out.append(str(name))
    return out


async def _serve(opts: ServeOptions, stop: asyncio.Event) -> None:
    # The SQLite threads (journal group commits, outbox) give up the GIL inside SQLite and
    # need it back to return; a busy event loop hands it over only every switch interval
    # (5 ms by default), several times per commit. At 1 ms, journal commits over 25 ms under
    # bench_ingest's latency phase went from 10-89 per run to 0-2 (BENCHMARKS.md).
    sys.setswitchinterval(_SWITCH_INTERVAL)
    clock: Clock = ScaledClock(opts.clock_speed) if opts.clock_speed != 1 else SystemClock()
    metrics = Metrics()
    cfg = RuntimeConfig(
        data_dir=opts.data,
        rules=opts.rules,
        partitions=opts.partitions,
        sinks=sinks_config(opts.sinks, opts.data),
        synchronous=opts.synchronous,
        compact_idle_s=opts.compact_idle,
        checkpoint_interval=opts.checkpoint_interval,
        checkpoint_mode=opts.checkpoint_mode,
        refit_every_s=opts.refit_every,
        analytics=opts.analytics,
        admission_target_s=opts.admission_target,
        priorities=opts.priorities,
        sealer=sealer_from_env(),  # NUDGE_DATA_KEY: encryption at rest
    )
    runtime = Runtime(cfg, metrics, clock)
    runtime.lock_data_dir()  # before anything is written there
    if cfg.sealer is not None:
        for name in plain_sinks_inside(cfg.sinks, opts.data):
            logger.warning(
                "data key set, but sink %s writes actions in plaintext inside the data"
                " directory (sink output is outside encryption at rest: docs/operations.md)",
                name,
            )
    await _check_port(opts.host, opts.port)  # before a recovery that may take minutes
    try:
        tokens, token_path, created = Tokens.load_or_create(opts.data)
    except OSError as err:
        raise DataDirError(opts.data, f"{err.strerror or err} ({err.filename})") from err
    await runtime.start()
    book = SqliteAddressBook(opts.data / "addresses.db", cfg.sealer)
    app = create_app(
        runtime,
        tokens,
        metrics,
        sources=SourcesConfig.load(),
        address_book=book,
        history=JournalHistory(runtime.cfg.data_dir),  # the console's timeline, rule preview
    )
    runner = web.AppRunner(app, access_log=None, **HTTP_LIMITS)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port)
    try:
        await site.start()
    except OSError as err:  # taken since the check
        await runner.cleanup()
        await runtime.stop()
        book.close()
        raise ListenError(opts.host, opts.port, _listen_reason(err)) from err
    print(
        orjson.dumps(
            {
                "listening": f"http://{opts.host}:{opts.port}",
                "data_dir": str(opts.data),
                "tokens": str(token_path),
                "tokens_created": created,
                "rules_version": runtime.rules_version,
                "rules": sorted(runtime.ruleset.rules) if runtime.ruleset else [],
            }
        ).decode(),
        flush=True,
    )
    demo_task = None
    if opts.demo:
        from engine.embedded.demo import run_demo

        demo_task = asyncio.create_task(run_demo(runtime, clock))
    await stop.wait()
    if demo_task is not None:
        demo_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo_task
    await runner.cleanup()
    await runtime.stop()
    book.close()


async def _check_port(host: str, port: int) -> None:
    """ListenError if ``host:port`` cannot be bound now (in use, not permitted)."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(asyncio.Protocol, host, port, reuse_address=True)
    except OSError as err:
        raise ListenError(host, port, _listen_reason(err)) from err
    server.close()
    await server.wait_closed()


def _listen_reason(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return "address already in use (another nudge run, or another program?)"
    return err.strerror or str(err)


def serve(opts: ServeOptions) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully (final checkpoint). A start-up
    error (module docstring) is one line on stderr and exit status 1."""
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _serve(opts, stop)

    os.umask(0o077)  # data files, spools, tokens, actions.jsonl: owner-only
    try:
        uvloop.run(main())
    except StartupError as err:
        print(f"nudge run: {err}", file=sys.stderr, flush=True)
        return 1
    return 0
