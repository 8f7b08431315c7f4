"""Population models on the distributed runtime: RFM boundaries over every partition and
fitted CLV parameters, shared through Redis (docs/rfm.md, docs/predictions.md).

Three users, one set of Redis keys (engine/distributed/storage/redis.py, "population models"):

- :class:`WorkerModels`, in each processing worker: hands its partitions'
  processors the :class:`~engine.intelligence.population.Population` every worker uses.
- :class:`RedisModels`, in the HTTP ingest: ``GET /v1/models``, ``POST
  /v1/models/rfm/refresh`` and ``POST /v1/models/reload`` (engine/http/models.py).
- :func:`fit_changelog` (``nudge models fit --broker``): the CLV batch job over the
  customers changelog, in a process of its own.

**RFM in rounds.** Boundaries must describe the whole base, and a worker holds only some
partitions. A *round* is a reference time ``R`` stored in Redis; it starts when the
stored one is ``refresh_every_ms`` old (whichever worker notices first: a compare-and-set
in Redis) or on demand (the ingest sets it). For each partition it owns whose stored
summary is older than ``R``, a worker scans the partition (a slice at a time on its loop,
compacted states decoded only up to the fields RFM reads: engine/intelligence/scan.py)
into an :class:`~engine.intelligence.rfm.RfmBuilder` with recency measured at ``R``, and
stores the builder's counts (``RfmBuilder.to_bytes``) under the partition. Once every
partition ``0 .. partition_count - 1`` has a summary of round ``R``, any worker merges
them in partition order and stores the boundaries (``computed_at = R``); every worker then
applies the stored boundaries, so all use the same ones. Since the builder's counts are
exact and mergeable, they equal what the embedded builder computes over the whole base at
``R`` (exact monetary cut points up to ``EXACT_LIMIT`` customers, the same sketch above).
A round a partition misses (no owner during a long rebalance) is closed after
``round_timeout_ms`` with the summaries there are: a missing partition's older summary is
merged as it is (its recency measured at its own round), and the boundaries are marked
incomplete until a later round completes.

**CLV.** Versions are stored in Redis (``save_model``, never overwritten). A worker
applies the latest valid version within ``poll_s`` of its storing, at once when the
store's announcement arrives (pub/sub); a version that does not load is logged and
skipped (the worker keeps what it has).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson

from engine.clock import Clock, SystemClock
from engine.distributed.storage.changelog import decode_row
from engine.distributed.storage.redis import RedisState
from engine.intelligence.clv import CLVParams, ParamsError
from engine.intelligence.population import EMPTY, Population
from engine.intelligence.rfm import (
    EXACT_LIMIT,
    REFRESH_EVERY_MS,
    BoundariesError,
    RfmBoundaries,
    RfmBuilder,
    SummaryError,
)
from engine.intelligence.scan import SLICE, add_store
from state.customer import CustomerState
from state.memory import MemoryStore

__all__ = [
    "CLV",
    "ApplyPopulation",
    "HoldsCustomers",
    "OwnedPartitions",
    "RedisModels",
    "WorkerModels",
    "changelog_states",
    "fit_changelog",
]

logger = logging.getLogger(__name__)

CLV = "clv"
"""The model kind the CLV parameters are stored under (as on ``nudge run``)."""


class HoldsCustomers(Protocol):
    """A partition as the models read it: its customers' store
    (engine/partition.py ``Partition`` is one)."""

    @property
    def store(self) -> MemoryStore: ...


OwnedPartitions = Callable[[], Mapping[int, HoldsCustomers]]
"""The partitions this worker owns now, by index (``lambda: engine.parts``)."""

ApplyPopulation = Callable[[Population], None]
"""Use ``population`` in every owned partition's processor from its next input on
(``part.driver.processor.population = population`` for each); called on the event loop,
whenever it changes and when the owned partitions change."""


def _parse_bounds(raw: bytes | None) -> tuple[RfmBoundaries | None, dict[str, Any]]:
    """The stored merged boundaries and their envelope (round, complete, partitions)."""
    if raw is None:
        return None, {}
    env = orjson.loads(raw)
    return RfmBoundaries.from_dict(env["rfm"]), env


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class WorkerModels:
    """One worker's population models (see the module doc).

    ``partitions()`` returns the owned partitions (read at each poll), ``apply`` installs
    a population in them, ``partition_count`` is the events topic's partition count (a
    round is complete when all have a summary). ``clock``: the worker's time (wall clock;
    a virtual one in tests). ``poll_s``: real seconds between checks when no
    announcement arrives. :meth:`start` after the engine exists, :meth:`stop` before it
    goes. Everything runs on the worker's event loop; a scan yields every
    ``slice_size`` customers.
    """

    def __init__(
        self,
        redis: RedisState,
        partitions: OwnedPartitions,
        apply: ApplyPopulation,
        *,
        partition_count: int,
        clock: Clock | None = None,
        refresh_every_ms: int = REFRESH_EVERY_MS,
        round_timeout_ms: int = 60_000,
        poll_s: float = 2.0,
        slice_size: int = SLICE,
        exact_limit: int = EXACT_LIMIT,
    ) -> None:
        self.redis = redis
        self.partitions = partitions
        self.apply = apply
        self.partition_count = partition_count
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.refresh_every_ms = refresh_every_ms
        self.round_timeout_ms = round_timeout_ms
        self.poll_s = poll_s
        self.slice_size = slice_size
        self.exact_limit = exact_limit
        self.population: Population = EMPTY
        self.clv_version = 0  # the stored version last looked at (applied or skipped)
        self.scans = 0  # partition summaries this worker published
        self._bounds_raw: bytes | None = None
        self._applied_to: frozenset[int] = frozenset()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Apply what Redis holds (CLV parameters, merged boundaries), take part in the
        current round, then follow announcements and the schedule until :meth:`stop`."""
        await self.step()
        self._task = asyncio.create_task(self._run(), name="worker-models")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        async for _ in self.redis.model_updates(self.poll_s):
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("population models step failed; retrying at the next poll")

    async def step(self) -> None:
        """One check: load a newer CLV version; start a round when due; summarise the
        owned partitions the current round lacks; merge when the round is complete (or
        timed out); apply newer merged boundaries. Serialised (one at a time)."""
        async with self._lock:
            clv = await self._load_clv()
            bounds = await self._rfm()
            pop = Population(bounds, clv)
            parts = frozenset(id(p) for p in self.partitions().values())
            if pop != self.population or parts != self._applied_to:
                self.population = pop
                self._applied_to = parts
                self.apply(pop)

    async def _load_clv(self) -> CLVParams | None:
        latest = await self.redis.latest_model(CLV)
        current = self.population.clv
        if latest is None or latest[0] == self.clv_version:
            return current
        version, body = latest
        self.clv_version = version
        try:
            params = CLVParams.from_dict(orjson.loads(body))
        except (ParamsError, orjson.JSONDecodeError, TypeError):
            logger.exception("stored CLV version %d cannot be used; keeping the current", version)
            return current
        logger.info("clv parameters version %d loaded", version)
        return params

    async def _rfm(self) -> RfmBoundaries | None:
        redis = self.redis
        now = self.clock.now()
        rnd, rounds, raw = await redis.rfm_status()
        if rnd is None or now - rnd >= self.refresh_every_ms:
            rnd = await redis.start_rfm_round(now, self.refresh_every_ms)
        applied = self.population.rfm
        sketch = applied is not None and applied.customers > self.exact_limit
        for index, part in sorted(self.partitions().items()):
            if rounds.get(index, -1) >= rnd:
                continue
            builder = RfmBuilder(exact_limit=self.exact_limit)
            await add_store(builder, part.store, rnd, self.slice_size)
            await redis.put_rfm_summary(index, rnd, builder.to_bytes(sketch=sketch))
            rounds[index] = rnd
            self.scans += 1
        n = self.partition_count
        complete = all(rounds.get(p, -1) >= rnd for p in range(n))
        _, env = _parse_bounds(raw)
        stored_rank = env.get("round", -1) * 2 + int(bool(env.get("complete")))
        if stored_rank < rnd * 2 + int(complete) and (
            complete or now - rnd >= self.round_timeout_ms
        ):
            await self._merge(rnd, complete)
            raw = await redis.rfm_bounds()
        if raw == self._bounds_raw:
            return applied
        try:
            bounds, env = _parse_bounds(raw)
        except (BoundariesError, KeyError, TypeError, orjson.JSONDecodeError):
            logger.exception("stored RFM boundaries cannot be read; keeping the current")
            return applied
        self._bounds_raw = raw
        if bounds is not None:
            logger.info(
                "rfm boundaries of round %d applied (%d customers, complete: %s)",
                env.get("round"),
                bounds.customers,
                env.get("complete"),
            )
        return bounds

    async def _merge(self, rnd: int, complete: bool) -> None:
        merged = RfmBuilder(exact_limit=self.exact_limit)
        found = 0
        for index, raw in enumerate(await self.redis.rfm_summaries(self.partition_count)):
            if raw is None:
                continue
            try:
                merged.merge(RfmBuilder.from_bytes(raw))
            except (SummaryError, ValueError):
                logger.exception("rfm summary of partition %d cannot be read; skipped", index)
                continue
            found += 1
            await asyncio.sleep(0)
        bounds = merged.build(rnd)
        env = {"round": rnd, "complete": complete, "partitions": found, "rfm": bounds.to_dict()}
        await self.redis.put_rfm_bounds(rnd, complete, orjson.dumps(env))


class RedisModels:
    """The models as the distributed ingest serves them (engine/http/models.py): read
    from Redis, changes requested through it. ``wait_s``: how long ``refresh_rfm``
    waits for the workers to complete the round it starts."""

    def __init__(
        self,
        redis: RedisState,
        *,
        clock: Clock | None = None,
        wait_s: float = 10.0,
        poll_s: float = 0.1,
    ) -> None:
        self.redis = redis
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.requested_at: int | None = None  # the round the last refresh started

    async def describe(self) -> dict[str, Any]:
        """``GET /v1/models``: the merged RFM boundaries the workers use (with their
        round: ``rfm_round``), the latest valid CLV parameters (what the workers load)
        and every stored CLV version."""
        raw = await self.redis.rfm_bounds()
        try:
            bounds, env = _parse_bounds(raw)
        except (BoundariesError, KeyError, TypeError, orjson.JSONDecodeError):
            bounds, env = None, {}
        versions: list[dict[str, Any]] = []
        clv: dict[str, Any] | None = None
        for version, body in await self.redis.model_versions(CLV):
            try:
                rec = orjson.loads(body)
            except orjson.JSONDecodeError:
                rec = {}
            if not isinstance(rec, dict):
                rec = {}
            versions.append(
                {
                    "version": version,
                    "fitted_at": rec.get("fitted_at"),
                    "customers": rec.get("customers"),
                }
            )
        latest = await self.redis.latest_model(CLV)
        if latest is not None:
            with contextlib.suppress(ParamsError, orjson.JSONDecodeError, TypeError):
                clv = CLVParams.from_dict(orjson.loads(latest[1])).to_dict()
        return {
            "rfm": None if bounds is None else bounds.to_dict(),
            "rfm_round": {k: env[k] for k in ("round", "complete", "partitions") if k in env}
            or None,
            "clv": clv,
            "clv_versions": versions,
        }

    async def refresh_rfm(self) -> RfmBoundaries | None:
        """``POST /v1/models/rfm/refresh``: start a round now; the boundaries once every
        partition's summary is in (None: not within ``wait_s``; the workers go on)."""
        rnd = await self.redis.start_rfm_round(self.clock.now(), 0)
        self.requested_at = rnd
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                bounds, env = _parse_bounds(await self.redis.rfm_bounds())
            except (BoundariesError, KeyError, TypeError, orjson.JSONDecodeError):
                bounds, env = None, {}
            if bounds is not None and env.get("round", -1) >= rnd and env.get("complete"):
                return bounds
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(self.poll_s)

    async def reload(self) -> CLVParams | None:
        """``POST /v1/models/reload``: the latest stored CLV parameters, checked, and an
        announcement so every worker loads them now. Raises ``ParamsError`` (or a JSON
        error) when they cannot be used: nothing is announced, workers keep theirs."""
        latest = await self.redis.latest_model(CLV)
        if latest is None:
            return None
        params = CLVParams.from_dict(orjson.loads(latest[1]))
        await self.redis.notify_models("reload")
        return params


# --- the CLV batch job over the changelog -------------------------------------------


def changelog_topic(app_id: str) -> str:
    """The customers table's changelog (faust: ``<app id>-<table>-changelog``)."""
    return f"{app_id}-customers-changelog"


async def changelog_states(bootstrap: str, topic: str) -> list[CustomerState]:
    """The latest state of every customer in the compacted changelog ``topic``: read
    from the beginning of every partition up to its end offset at the start of the read
    (rows produced meanwhile are not waited for); a tombstone deletes its key. Only the
    fields the CLV summaries read are kept (the rest of each row is dropped as it is
    decoded); an undecodable row is logged and skipped."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap.removeprefix("kafka://"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1_048_576,
    )
    await consumer.start()
    latest: dict[bytes, CustomerState] = {}
    try:
        # the consumer's own metadata knows only subscribed topics: ask the cluster
        cluster = await consumer._client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            raise FileNotFoundError(f"{topic}: no such topic (is --app-id right?)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        for tp in tps:
            if tp not in todo:
                consumer.pause(tp)
        while todo:
            got = await consumer.getmany(*todo, timeout_ms=1000, max_records=5000)
            for tp, records in got.items():
                for rec in records:
                    if rec.offset >= ends[tp]:
                        continue
                    key = rec.key or b""
                    if rec.value is None:
                        latest.pop(key, None)
                        continue
                    try:
                        st = decode_row(rec.value)
                    except Exception as err:
                        logger.error("changelog row %r does not decode (%s); skipped", key, err)
                        continue
                    latest[key] = CustomerState(
                        st.customer_id,
                        st.first_seen,
                        st.last_seen,
                        orders=st.orders,
                        revenue=st.revenue,
                        first_order=st.first_order,
                        last_order=st.last_order,
                        merged_into=st.merged_into,
                    )
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    return list(latest.values())


async def fit_changelog(
    bootstrap: str,
    redis: RedisState,
    *,
    app_id: str = "nudge",
    topic: str | None = None,
    now_ms: int | None = None,
) -> CLVParams:
    """``nudge models fit --broker``: fit the CLV models on the latest customer states of
    the changelog (:func:`changelog_states`) and store the parameters in Redis as the
    next version (announced: workers load it). ``now_ms``: the time the summaries are
    taken at (default: the later of the wall clock and the latest activity). The fit
    itself runs in a thread (seconds of CPU). Raises ``PredictUnavailable`` without
    pymc-marketing or with too few buyers, ``FileNotFoundError`` without the topic."""
    from engine.intelligence.fit import buyer_summaries, fit

    states = await changelog_states(bootstrap, topic or changelog_topic(app_id))
    summaries, now_ms = buyer_summaries(states, now_ms, wall_ms=_wall_ms())
    previous = await redis.latest_model(CLV)
    version = 1 if previous is None else previous[0] + 1
    params = await asyncio.to_thread(fit, summaries, fitted_at=now_ms, version=version)
    while not await redis.save_model(CLV, params.version, orjson.dumps(params.to_dict()).decode()):
        # a concurrent fit stored this version first: ours goes after it
        params = dataclasses.replace(params, version=params.version + 1)
    return params
