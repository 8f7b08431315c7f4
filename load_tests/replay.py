"""``nudge replay FILE --target URL``: send a recorded JSONL trace to a running Nudge.

- Targets: ``http://HOST:PORT`` posts to ``/v1/events`` (``nudge run``, or the distributed
  ingest); ``kafka://HOST:PORT[/TOPIC]`` produces straight to the ``events`` topic of
  ``nudge worker`` (default topic ``events``), keyed by customer id, ``acks=all``. Kafka has
  no server-side validation, so each event is checked locally first (the engine's own
  validator: what HTTP would answer 400 is counted as rejected and not produced).

- Pacing: ``--speed 100x`` keeps the trace's rhythm, compressed: an event is sent when
  (its timestamp - the first timestamp) / speed has elapsed; events sent late (older
  timestamps than one already seen: late or re-sent events in the trace) go at once.
  ``--rate N/s`` sends at a fixed rate instead; neither: as fast as acknowledged.
- Order: each customer's events are sent in the file's order, retries included. The
  customers are split over ``--concurrency`` lanes by a hash of their id; a lane sends
  one batch at a time and retries it until it is acknowledged (or given up) before its
  next, so a retried batch never lands after a later event of one of its customers (a
  replay with failures ends in the state of one without). Order across customers is
  not kept, as the engine's partitions do not keep it either.
- Batching: up to ``--batch`` events of one lane a request; a batch never waits more
  than 50 ms for more events, and is sent when its last event is due (never early).
- Retries: 429 after its ``Retry-After``; 5xx, timeouts, connection errors and Kafka
  errors with exponential backoff (0.1 s doubling, at most 5 s), up to ``--max-attempts``
  tries. A
  400 ``invalid_events`` drops the listed events (counted as rejected) and re-sends the
  rest; any other 4xx rejects the whole batch.
- Lines that are not JSON objects are counted as malformed and skipped.
- Timestamps: an event stamped more than ``STALE_MS`` (24 h, the stock recipes'
  ``allowed_lateness``) before it is sent updates state but triggers nothing; when most
  of the trace is, a warning says so. ``--restamp`` shifts every timestamp by one offset
  so that the newest event of the file is stamped with the replay's start: gaps kept,
  nothing in the future.
- Exit status 1 when a request was refused whole (401, 403, any 4xx but the 400 that
  names invalid events, which are dropped and counted as rejected) or given up after
  ``--max-attempts``, with the statuses on stderr.

Progress (sent, acknowledged, rejected, retried, rate) goes to stderr; the JSON summary to
stdout.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from engine.types import iso

__all__ = ["ReplayOptions", "ReplayStats", "parse_rate", "parse_speed", "replay", "run_replay"]

LINGER_S = 0.05
STALE_MS = 24 * 3_600_000


def parse_speed(text: str) -> float:
    """``100x`` or ``100`` -> 100.0 (must be > 0)."""
    v = float(text.strip().lower().removesuffix("x"))
    if not v > 0:
        raise ValueError(f"speed must be > 0: {text!r}")
    return v


def parse_rate(text: str) -> float:
    """``2000/s`` or ``2000`` -> 2000.0 events per second (must be > 0)."""
    v = float(text.strip().lower().removesuffix("/s"))
    if not v > 0:
        raise ValueError(f"rate must be > 0: {text!r}")
    return v


def events_url(target: str) -> str:
    if target.startswith("kafka://"):
        bootstrap, topic = kafka_target(target)
        return f"kafka://{bootstrap}/{topic}"
    t = target.rstrip("/")
    return t if t.endswith("/v1/events") else t + "/v1/events"


def kafka_target(target: str) -> tuple[str, str]:
    """``kafka://HOST:PORT[,HOST:PORT][/TOPIC]`` -> (bootstrap servers, topic)."""
    rest = target.removeprefix("kafka://")
    bootstrap, _, topic = rest.partition("/")
    if not bootstrap:
        raise ValueError(f"no broker in {target!r}")
    return bootstrap, topic.strip("/") or "events"


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter: 0.1 s doubling, at most 5 s."""
    delay = min(5.0, 0.1 * 2.0 ** (attempt - 1))
    return delay * (0.5 + random.random() / 2)


@dataclass
class ReplayOptions:
    path: Path
    target: str
    token: str
    speed: float | None = None
    rate: float | None = None
    batch: int = 100
    concurrency: int = 16
    max_attempts: int = 20
    timeout: float = 30.0
    progress: bool = True
    restamp: bool = False


@dataclass
class ReplayStats:
    lines: int = 0
    malformed: int = 0
    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    retried: int = 0
    failed: int = 0
    requests: int = 0
    refused: int = 0  # rejected with their whole request (401, 403, 4xx), of rejected
    stale: int = 0  # stamped more than STALE_MS before they were sent
    statuses: dict[str, int] = field(default_factory=dict)

    def status(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1


def _ts_ms(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp() * 1000)


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


class _HttpSender:
    """Posts batches to ``/v1/events``; counts what the server acknowledged or refused."""

    def __init__(self, opts: ReplayOptions, stats: ReplayStats) -> None:
        self.opts = opts
        self.stats = stats
        self.url = events_url(opts.target)
        self.headers = {
            "Authorization": f"Bearer {opts.token}",
            "Content-Type": "application/json",
        }
        self.session: Any = None

    async def __aenter__(self) -> _HttpSender:
        from aiohttp import ClientSession, ClientTimeout, TCPConnector

        self.session = ClientSession(
            connector=TCPConnector(limit=self.opts.concurrency),
            timeout=ClientTimeout(total=self.opts.timeout),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def post(self, events: list[dict[str, Any]]) -> None:
        from aiohttp import ClientError

        session = self.session
        st = self.stats
        attempt = 0
        while events:
            attempt += 1
            st.requests += 1
            try:
                async with session.post(
                    self.url, data=orjson.dumps(events), headers=self.headers
                ) as r:
                    status = r.status
                    retry_after = r.headers.get("Retry-After")
                    body = await r.read()
            except (TimeoutError, ClientError, OSError):
                status, retry_after, body = 0, None, b""
            st.status(str(status) if status else "connection_error")
            if status == 202:
                st.acknowledged += len(events)
                return
            if status == 400:
                bad = _invalid_indices(body, len(events))
                if bad:  # only those are invalid: drop them, send the others again
                    st.rejected += len(bad)
                    events = [e for i, e in enumerate(events) if i not in bad]
                    continue
            if 400 <= status < 500 and status != 429:
                st.rejected += len(events)
                st.refused += len(events)
                return
            if attempt >= self.opts.max_attempts:
                st.failed += len(events)
                return
            st.retried += 1
            if status == 429:
                await asyncio.sleep(_retry_after(retry_after))
            else:
                await asyncio.sleep(_backoff(attempt))


class _KafkaSender:
    """Produces each event to the events topic (key: customer id, ``acks=all``, idempotent
    producer) once the engine's validator accepts it; a batch counts as acknowledged when
    the broker acknowledged every message of it."""

    def __init__(self, opts: ReplayOptions, stats: ReplayStats) -> None:
        self.opts = opts
        self.stats = stats
        self.bootstrap, self.topic = kafka_target(opts.target)
        self.producer: Any = None
        # batches are handed to the producer one at a time, in the order they were sent
        # off, so one customer's events keep the file's order (the idempotent producer
        # keeps it from there)
        self.order = asyncio.Lock()

    async def __aenter__(self) -> _KafkaSender:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=int(self.opts.timeout * 1000),
        )
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def post(self, events: list[dict[str, Any]]) -> None:
        from aiokafka.errors import KafkaError

        from engine.events import decode_event
        from engine.exceptions import EventError

        st = self.stats
        messages: list[tuple[bytes, bytes]] = []
        for event in events:
            raw = orjson.dumps(event)
            try:
                key = decode_event(raw).customer_id.encode()
            except EventError:
                st.rejected += 1
                continue
            messages.append((key, raw))
        attempt = 0
        while messages:
            attempt += 1
            st.requests += 1
            try:
                send = self.producer.send
                async with self.order:
                    futs = [await send(self.topic, value=raw, key=key) for key, raw in messages]
                await asyncio.gather(*futs)
            except (KafkaError, TimeoutError, OSError) as err:
                st.status(type(err).__name__)
                if attempt >= self.opts.max_attempts:
                    st.failed += len(messages)
                    return
                st.retried += 1
                await asyncio.sleep(_backoff(attempt))
                continue  # at-least-once: a retried batch may be written twice (the
                # engine drops duplicate event ids) and after batches sent since
            st.status("acked")
            st.acknowledged += len(messages)
            return


class _Lane:
    """One share of the customers: its batches are sent one at a time, in order."""

    def __init__(self) -> None:
        self.pending: list[dict[str, Any]] = []
        self.first_due = 0.0
        self.last_due = 0.0
        # batches formed, waiting for the lane's sender (bounded: reading waits)
        self.queue: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue(maxsize=2)


def _lane_of(event: dict[str, Any], lanes: int) -> int:
    cid = event.get("customer_id")
    key = cid if isinstance(cid, str) else str(cid)
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % lanes


class _Replayer:
    def __init__(self, opts: ReplayOptions, stats: ReplayStats) -> None:
        self.opts = opts
        self.stats = stats
        kafka = opts.target.startswith("kafka://")
        self.sender = _KafkaSender(opts, stats) if kafka else _HttpSender(opts, stats)
        # --restamp: added to every timestamp (the newest event lands at the start)
        self.shift: int | None = None
        if opts.restamp:
            newest = _newest_timestamp(opts.path)
            if newest is not None:
                self.shift = time.time_ns() // 1_000_000 - newest

    async def run(self) -> float:
        opts = self.opts
        st = self.stats
        lanes = [_Lane() for _ in range(max(1, opts.concurrency))]
        waiting: deque[_Lane] = deque()  # lanes holding events, oldest first event first
        progress = _Progress(opts.path, st, opts.progress)
        start = time.monotonic()
        t0: int | None = None
        clock = 0
        index = 0

        async with self.sender as sender:

            async def send(lane: _Lane) -> None:
                while (batch := await lane.queue.get()) is not None:
                    await sender.post(batch)  # retried here until acknowledged or given up
                    progress.update()

            async def flush(lane: _Lane) -> None:
                waiting.remove(lane)
                wait = lane.last_due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                batch, lane.pending = lane.pending, []
                st.sent += len(batch)
                await lane.queue.put(batch)
                progress.update()

            senders = [asyncio.create_task(send(lane)) for lane in lanes]
            try:
                with progress, opts.path.open("rb") as fh:
                    for raw in fh:
                        progress.read(len(raw))
                        line = raw.strip()
                        if not line:
                            continue
                        st.lines += 1
                        try:
                            event = orjson.loads(line)
                        except orjson.JSONDecodeError:
                            event = None
                        if not isinstance(event, dict):
                            st.malformed += 1
                            continue
                        self._stamp(event)
                        if opts.rate is not None:
                            due = start + index / opts.rate
                        elif opts.speed is not None:
                            ts = _ts_ms(event.get("timestamp"))
                            if ts is not None:
                                if t0 is None:
                                    t0 = clock = ts
                                clock = max(clock, ts)
                            due = start + (clock - (t0 or 0)) / 1000.0 / opts.speed
                        else:
                            due = start
                        index += 1
                        while waiting and due - waiting[0].first_due > LINGER_S:
                            await flush(waiting[0])  # lingered long enough
                        lane = lanes[_lane_of(event, len(lanes))]
                        if len(lane.pending) >= opts.batch:
                            await flush(lane)
                        if not lane.pending:
                            lane.first_due = due
                            waiting.append(lane)
                        lane.pending.append(event)
                        lane.last_due = due
                    while waiting:
                        await flush(waiting[0])
                    for lane in lanes:
                        await lane.queue.put(None)
                    await asyncio.gather(*senders)
                    progress.update()
            finally:
                for task in senders:
                    task.cancel()
        return time.monotonic() - start

    def _stamp(self, event: dict[str, Any]) -> None:
        """Apply ``--restamp``; count the event if it is stale as it is sent."""
        ts = _ts_ms(event.get("timestamp"))
        if ts is None:
            return
        if self.shift is not None:
            ts += self.shift
            event["timestamp"] = iso(ts)
        if time.time_ns() // 1_000_000 - ts > STALE_MS:
            self.stats.stale += 1


def _newest_timestamp(path: Path) -> int | None:
    """The latest ``timestamp`` of the trace (a first pass over the file)."""
    newest: int | None = None
    with path.open("rb") as fh:
        for raw in fh:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            ts = _ts_ms(event.get("timestamp")) if isinstance(event, dict) else None
            if ts is not None and (newest is None or ts > newest):
                newest = ts
    return newest


def _invalid_indices(body: bytes, n: int) -> set[int]:
    try:
        doc = orjson.loads(body)
        items = doc["error"]["events"]
        bad = {int(e["index"]) for e in items}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return set()
    return {i for i in bad if 0 <= i < n}


class _Progress:
    """A rich progress bar over the file's bytes with live counters (stderr)."""

    def __init__(self, path: Path, stats: ReplayStats, enabled: bool) -> None:
        self.stats = stats
        self.enabled = enabled
        self.total = path.stat().st_size if path.exists() else None
        self.bar: Any = None
        self.task: Any = None
        self.done = 0
        self.start = time.monotonic()
        self.last = 0.0

    def __enter__(self) -> _Progress:
        if not self.enabled:
            return self
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("[bold]replay"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn(
                "sent {task.fields[sent]:,} · acked {task.fields[acked]:,} · "
                "rejected {task.fields[rejected]:,} · retried {task.fields[retried]:,} · "
                "{task.fields[rate]:,.0f} ev/s"
            ),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            refresh_per_second=5,
        )
        self.bar.__enter__()
        self.task = self.bar.add_task(
            "replay", total=self.total, sent=0, acked=0, rejected=0, retried=0, rate=0.0
        )
        return self

    def read(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last > 0.1:
            self.last = now
            self.update()

    def update(self) -> None:
        if self.bar is None:
            return
        st = self.stats
        elapsed = max(1e-9, time.monotonic() - self.start)
        self.bar.update(
            self.task,
            completed=self.done,
            sent=st.sent,
            acked=st.acknowledged,
            rejected=st.rejected,
            retried=st.retried,
            rate=st.acknowledged / elapsed,
        )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.update()
            self.bar.__exit__(None, None, None)


def replay(opts: ReplayOptions) -> dict[str, Any]:
    """Run a replay to completion; returns the summary printed by the command."""
    stats = ReplayStats()
    elapsed = asyncio.run(_Replayer(opts, stats).run())
    return {
        "file": str(opts.path),
        "target": events_url(opts.target),
        "pacing": (
            f"{opts.rate:g}/s"
            if opts.rate is not None
            else f"{opts.speed:g}x"
            if opts.speed is not None
            else "max"
        ),
        "lines": stats.lines,
        "malformed": stats.malformed,
        "sent": stats.sent,
        "acknowledged": stats.acknowledged,
        "rejected": stats.rejected,
        "refused": stats.refused,
        "retried": stats.retried,
        "failed": stats.failed,
        "requests": stats.requests,
        "stale": stats.stale,
        "restamped": opts.restamp,
        "statuses": dict(sorted(stats.statuses.items())),
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(stats.acknowledged / elapsed, 1) if elapsed > 0 else 0.0,
    }


def run_replay(args: Any) -> int:
    """The ``replay`` command handler (argparse namespace from load_tests.cli)."""
    import sys

    token = args.token or os.environ.get("NUDGE_WRITE_TOKEN") or ""
    if not token and not args.target.startswith("kafka://"):
        print("no write token: --token or NUDGE_WRITE_TOKEN", file=sys.stderr)
        return 2
    try:
        if args.target.startswith("kafka://"):
            kafka_target(args.target)
        speed = parse_speed(args.speed) if args.speed else None
        rate = parse_rate(args.rate) if args.rate else None
    except ValueError as err:
        print(f"replay: {err}", file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    if not 1 <= args.batch <= 1000:
        print("--batch: 1 to 1000 events", file=sys.stderr)
        return 2
    summary = replay(
        ReplayOptions(
            path=path,
            target=args.target,
            token=token,
            speed=speed,
            rate=rate,
            batch=args.batch,
            concurrency=args.concurrency,
            max_attempts=args.max_attempts,
            progress=not args.no_progress,
            restamp=args.restamp,
        )
    )
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()
    return _verdict(summary)


def _verdict(summary: dict[str, Any]) -> int:
    """Warnings on stderr; 1 when a request was refused whole or given up, else 0."""
    import sys

    if summary["stale"] and summary["stale"] * 2 >= summary["sent"]:  # mostly stale
        print(
            f"replay: warning: {summary['stale']} of {summary['lines']} events were stamped "
            "more than 24h before they were sent: beyond the stock allowed_lateness they "
            "update state but trigger no rule (--restamp shifts the trace to now)",
            file=sys.stderr,
        )
    lost = summary["refused"] + summary["failed"]
    if lost:
        statuses = orjson.dumps(summary["statuses"]).decode()
        print(
            f"replay: {lost} of {summary['sent']} events not acknowledged "
            f"({summary['refused']} refused with their request, {summary['failed']} given "
            f"up after retries); statuses {statuses}",
            file=sys.stderr,
        )
        return 1
    return 0
