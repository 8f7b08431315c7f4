"""``nudge run``: the embedded runtime behind the HTTP API, on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
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
from engine.embedded.runtime import Runtime, RuntimeConfig
from engine.http.app import create_app
from engine.http.auth import Tokens
from engine.metrics import Metrics
from state.addresses import SqliteAddressBook

__all__ = ["ServeOptions", "serve"]

logger = logging.getLogger(__name__)

_SWITCH_INTERVAL = 0.001


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
        # None: NUDGE_CHECKPOINT_INTERVAL, else 10 s (tests shorten it by the environment
        # to crash mid-checkpoint)
        self.checkpoint_interval = (
            checkpoint_interval
            if checkpoint_interval is not None
            else float(os.environ.get("NUDGE_CHECKPOINT_INTERVAL", "10"))
        )
        # None: NUDGE_CHECKPOINT_MODE, else paced (engine/embedded/runtime.py)
        mode = checkpoint_mode or os.environ.get("NUDGE_CHECKPOINT_MODE", "paced")
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
    )
    runtime = Runtime(cfg, metrics, clock)
    tokens, token_path, created = Tokens.load_or_create(opts.data)
    await runtime.start()
    book = SqliteAddressBook(opts.data / "addresses.db")
    app = create_app(runtime, tokens, metrics, sources=SourcesConfig.load(), address_book=book)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, opts.host, opts.port)
    await site.start()
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


def serve(opts: ServeOptions) -> int:
    """Run until SIGINT/SIGTERM, then stop gracefully (final checkpoint)."""
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _serve(opts, stop)

    uvloop.run(main())
    return 0
