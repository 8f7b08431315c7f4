"""Population-level models on ``nudge run``: RFM boundaries and fitted CLV parameters.

:class:`Models` keeps the runtime's :class:`~engine.intelligence.population.Population`
and hands it to every partition's processor, which is all the pure core ever sees of it:

- **RFM boundaries** are computed from the customers the partitions hold (every state in
  memory, live or compacted), at start (after recovery, before the engine reports ready)
  and then whenever they are ``refresh_every_ms`` old in the runtime's clock (a day;
  with the demo's scaled clock, under a minute of real time), and on demand
  (``POST /v1/models/rfm/refresh``). The scan runs on the event loop a slice of customers
  at a time, so ingest and timers keep their latency: a compacted state is not inflated,
  only the fields RFM needs are decoded from its bytes.
- **CLV parameters** are fitted off the event path, by ``nudge models fit`` in its own
  process (:func:`fit_data_dir`), and stored versioned in ``states.db``
  (engine/embedded/storage/sqlite.py, ``save_model``). The runtime loads the latest at start and on
  demand (``POST /v1/models/reload``). Until one exists every ``customer.predicted`` is null.
  With ``RuntimeConfig.refit_every_s`` (``nudge run --refit-every``; off by default) the
  runtime runs that fit itself on a schedule, in a subprocess, and reloads after each.

Boundaries are not stored: they are recomputed from the recovered states at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from engine.embedded.storage.sqlite import SqliteStore
from engine.intelligence.clv import CLVParams, ParamsError
from engine.intelligence.population import EMPTY, Population
from engine.intelligence.rfm import REFRESH_EVERY_MS, RfmBoundaries, RfmBuilder, needs_refresh
from engine.intelligence.scan import SLICE, add_store
from engine.types import iso

if TYPE_CHECKING:
    from engine.clock import Clock
    from engine.partition import Partition


class HostConfig(Protocol):
    """What the models read of the runtime's config (engine/embedded/runtime.py's
    RuntimeConfig)."""

    @property
    def data_dir(self) -> Path: ...

    @property
    def refit_every_s(self) -> float | None: ...


class Host(Protocol):
    """What the models read of the runtime that holds them (engine/embedded/runtime.py's
    Runtime): its partitions, clock, state store and config (``data_dir``,
    ``refit_every_s``)."""

    parts: list[Partition]
    clock: Clock
    store: SqliteStore | None

    @property
    def cfg(self) -> HostConfig: ...

    async def db(self, fn: Any, *args: Any) -> Any: ...

    def population_changed(self, population: Population) -> None: ...


__all__ = ["CLV", "Host", "HostConfig", "Models", "fit_data_dir", "load_clv"]

logger = logging.getLogger(__name__)

CLV = "clv"
"""The model kind the CLV parameters are stored under."""


def load_clv(store: SqliteStore) -> CLVParams | None:
    """The latest stored CLV parameters; None when none is stored. A stored record that
    cannot be read raises ``ParamsError`` (or ``orjson.JSONDecodeError``)."""
    latest = store.latest_model(CLV)
    if latest is None:
        return None
    return CLVParams.from_dict(orjson.loads(latest[1]))


class Models:
    """The runtime's population models (see the module doc). ``slice_size``: customers
    scanned per event loop turn; ``poll_s``: how often (real seconds) the schedule is
    checked."""

    def __init__(
        self,
        runtime: Host,
        *,
        refresh_every_ms: int = REFRESH_EVERY_MS,
        poll_s: float = 5.0,
        slice_size: int = SLICE,
    ) -> None:
        self.runtime = runtime
        self.refresh_every_ms = refresh_every_ms
        self.poll_s = poll_s
        self.slice_size = slice_size
        self.population: Population = EMPTY
        self.refreshes = 0
        # the CLV refit schedule (real seconds; None: off) and its outcomes
        self.refit_every_s: float | None = runtime.cfg.refit_every_s
        self.refits = 0
        self.refits_failed = 0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._refit_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the latest CLV parameters, compute the RFM boundaries, start the
        schedule. A stored CLV record that cannot be read is logged and skipped
        (predictions stay null), never a failed start."""
        with contextlib.suppress(ParamsError, orjson.JSONDecodeError):
            await self.reload()
        await self.refresh_rfm()
        self._task = asyncio.create_task(self._schedule(), name="models")
        if self.refit_every_s is not None:
            self.start_refits(self.refit_every_s)

    def start_refits(self, every_s: float) -> None:
        """Refit the CLV models every ``every_s`` real seconds (:meth:`refit`), the first
        time ``every_s`` from now; replaces a running schedule."""
        if self._refit_task is not None:
            self._refit_task.cancel()
        self.refit_every_s = every_s
        self._refit_task = asyncio.create_task(self._refits(every_s), name="models-refit")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._refit_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = self._refit_task = None

    def _publish(self, population: Population) -> None:
        self.population = population
        for p in self.runtime.parts:
            p.driver.processor.population = population
        self.runtime.population_changed(population)

    async def reload(self) -> CLVParams | None:
        """Load the latest stored CLV parameters and use them from the next input on;
        returns them (None: none stored; the population keeps none). Raises
        ``ParamsError`` for a stored record that cannot be used (nothing changes)."""
        rt = self.runtime
        assert rt.store is not None
        try:
            params: CLVParams | None = await rt.db(load_clv, rt.store)
        except (ParamsError, orjson.JSONDecodeError):
            logger.exception("stored CLV parameters cannot be read; predictions unchanged")
            raise
        self._publish(Population(self.population.rfm, params))
        if params is not None:
            logger.info(
                "clv parameters loaded",
                extra={"version": params.version, "customers": params.customers},
            )
        return params

    async def refresh_rfm(self) -> RfmBoundaries:
        """Recompute the RFM boundaries over every customer the partitions hold, a slice
        per event loop turn, and use them from the next input on. Concurrent calls wait
        for the one running and then run their own scan."""
        async with self._lock:
            t0 = time.perf_counter()
            now = self.runtime.clock.now()
            builder = RfmBuilder()
            for part in self.runtime.parts:
                await add_store(builder, part.store, now, self.slice_size)
            bounds = builder.build(now)
            self._publish(Population(bounds, self.population.clv))
            self.refreshes += 1
            logger.info(
                "rfm boundaries refreshed",
                extra={"customers": bounds.customers, "seconds": time.perf_counter() - t0},
            )
            return bounds

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            now = self.runtime.clock.now()
            if needs_refresh(self.population.rfm, now, self.refresh_every_ms):
                try:
                    await self.refresh_rfm()
                except Exception:
                    logger.exception("rfm refresh failed; will retry")

    async def _refits(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refit()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.refits_failed += 1
                logger.exception("clv refit failed; next at the next schedule")

    async def refit(self) -> CLVParams | None:
        """Fit the CLV models now in a subprocess (``nudge models fit --data DIR --now
        <engine clock>``: the pymc fit never runs on the event loop nor in this process),
        then :meth:`reload` the version it stored; returns it. None when the fit failed
        (too few buyers, no ``predict`` extra: logged; the parameters in use stay). The
        fit reads the states as of the last checkpoint."""
        now = self.runtime.clock.now()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "engine.cli",
            "models",
            "fit",
            "--data",
            str(self.runtime.cfg.data_dir),
            "--now",
            iso(now),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            self.refits_failed += 1
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            logger.warning("clv refit exited %s: %s", proc.returncode, " | ".join(tail))
            return None
        self.refits += 1
        return await self.reload()

    async def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` shows: the boundaries and the parameters in use, and
        every stored CLV version."""
        rt = self.runtime
        assert rt.store is not None
        stored = await rt.db(rt.store.model_versions, CLV)
        versions = []
        for version, body in stored:
            try:
                raw = orjson.loads(body)
            except orjson.JSONDecodeError:
                raw = {}
            versions.append(
                {
                    "version": version,
                    "fitted_at": raw.get("fitted_at"),
                    "customers": raw.get("customers"),
                }
            )
        pop = self.population
        return {
            "rfm": None if pop.rfm is None else pop.rfm.to_dict(),
            "clv": None if pop.clv is None else pop.clv.to_dict(),
            "clv_versions": versions,
        }


def fit_data_dir(data_dir: str | Path, now_ms: int | None = None) -> CLVParams:
    """Fit the CLV models on the customer states checkpointed in ``data_dir`` and store
    the parameters as the next version; returns them. This is the batch job behind
    ``nudge models fit`` (off the event path: its own process).

    The states are read in one statement, a consistent snapshot even while ``nudge run``
    writes checkpoints (SQLite WAL); a running engine's customers changed since its last
    checkpoint are not in it. ``now_ms`` is the time the summaries are taken at; by
    default the later of the wall clock and the latest activity in the data (a data dir
    written under a scaled demo clock is ahead of the wall clock). Raises
    ``PredictUnavailable`` without pymc-marketing or with too few buyers, and
    ``FileNotFoundError`` when ``data_dir`` holds no states."""
    from engine.intelligence.fit import buyer_summaries, fit

    path = Path(data_dir)
    if not (path / "states.db").exists():
        raise FileNotFoundError(f"{path}: no states.db (not a nudge data directory?)")
    from engine.embedded.storage.crypt import sealer_from_env

    store = SqliteStore(path, sealer=sealer_from_env())  # NUDGE_DATA_KEY if encrypted
    try:
        summaries, now_ms = buyer_summaries(
            store.load_states(), now_ms, wall_ms=time.time_ns() // 1_000_000
        )
        previous = store.latest_model(CLV)
        version = 1 if previous is None else previous[0] + 1
        params = fit(summaries, fitted_at=now_ms, version=version)
        store.save_model(CLV, version, orjson.dumps(params.to_dict()).decode())
        return params
    finally:
        store.close()
