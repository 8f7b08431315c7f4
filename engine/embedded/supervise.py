"""Supervised background tasks: a task that raises is logged, counted and restarted.

Every long-running task of the embedded runtime (partitions and their timers, the outbox's
flush, delivery and forward loops, checkpoints and compaction, the loop-lag and GC
samplers) runs under a :class:`Supervisor` (the journal's group commit is no task: its
requests and the commits' callbacks drive it, engine/embedded/ingest.py). When its
coroutine raises, the supervisor

- logs the exception with the task's name and how many times in a row it failed,
- counts it in ``nudge_task_failures_total{task=...}`` (the task's kind: ``deliver``, not
  ``deliver-17``),
- marks the task down (a *vital* one makes ``/readyz`` answer 503 naming it), waits a
  backoff (``first`` seconds, doubling per failure in a row, at most ``cap``; a task that
  ran ``reset_after`` seconds since its last restart starts again from ``first``),
- and starts the coroutine again from its factory.

What is guaranteed: a failure never ends a task silently. What is not: the work the task
held when it failed. Each task keeps what it must not lose in its owner's state (queues,
buffers) rather than in local variables, so the restarted coroutine picks it up; the
outbox's delivery loop, for one, puts an action back before its exception escapes.

A coroutine that returns ends its task for good.
Cancellation (``stop``) is never counted as a failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from engine.metrics import Metrics

__all__ = ["Supervisor", "TaskFactory"]

logger = logging.getLogger(__name__)


class TaskFactory(Protocol):
    """Makes a fresh coroutine of the task's body (called again at each restart)."""

    def __call__(self) -> Coroutine[Any, Any, None]: ...


class Supervisor:
    """Runs background tasks and restarts the ones that fail (module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        first: float = 0.1,
        cap: float = 30.0,
        reset_after: float = 30.0,
    ) -> None:
        self._metrics = metrics
        self.first = first
        self.cap = cap
        self.reset_after = reset_after
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._vital: set[str] = set()
        self.down: dict[str, str] = {}  # task name -> the error that took it down
        self.failures: dict[str, int] = {}  # task name -> failures so far (all time)

    def spawn(
        self, name: str, factory: TaskFactory, *, kind: str | None = None, vital: bool = True
    ) -> asyncio.Task[None]:
        """Start ``factory()`` as task ``name`` (unique), restarted whenever it raises.
        ``kind`` is its ``task`` label (default: ``name``); ``vital``: while it is down,
        :meth:`unhealthy` names it (the runtime is then not ready)."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"task {name!r} already running")
        if vital:
            self._vital.add(name)
        self._metrics.task_failures.labels(kind or name)  # exported at 0 from the start
        task = asyncio.create_task(self._run(name, kind or name, factory), name=name)
        self._tasks[name] = task
        return task

    async def _run(self, name: str, kind: str, factory: TaskFactory) -> None:
        loop = asyncio.get_running_loop()
        in_a_row = 0
        while True:
            started = loop.time()
            try:
                await factory()
                return
            except Exception as err:
                if loop.time() - started >= self.reset_after:
                    in_a_row = 0
                in_a_row += 1
                self.failures[name] = self.failures.get(name, 0) + 1
                delay = min(self.cap, self.first * 2 ** (in_a_row - 1))
                self._metrics.task_failures.labels(kind).inc()
                self.down[name] = f"{type(err).__name__}: {err}"[:200]
                logger.exception(
                    "background task %s failed (%d in a row); restarting in %.2fs",
                    name,
                    in_a_row,
                    delay,
                    extra={"task": name, "in_a_row": in_a_row, "delay_s": delay},
                )
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.down.pop(name, None)
                logger.info("background task %s restarted", name, extra={"task": name})

    def unhealthy(self) -> list[str]:
        """``"<task>: <error>"`` for each vital task down now (waiting to restart)."""
        return [f"{n}: {e}" for n, e in sorted(self.down.items()) if n in self._vital]

    def task(self, name: str) -> asyncio.Task[None] | None:
        return self._tasks.get(name)

    async def cancel(self, names: list[str] | None = None) -> None:
        """Cancel the named tasks (all: ``None``) and wait for them to end."""
        todo = [t for n, t in self._tasks.items() if names is None or n in names]
        for t in todo:
            t.cancel()
        await asyncio.gather(*todo, return_exceptions=True)
