"""The deployed rule set in Redis: ``publish_rules`` (validate, store a new version with
the earlier rule versions it keeps for open flows, announce it), the records a rollback
deploys again (``stored_rule_files``) and the worker's hot reload (:class:`RuleWatcher`).

A rule set with any error is rejected whole (:class:`~rules.errors.RuleErrors` from
``load_texts``) before anything is stored. Workers swap to a newer version between two
batches; a stored version that fails to load (written by hand) is logged and skipped,
the running set stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.distributed.storage.redis import RedisState, RulesRecord
from rules.loader import rule_files
from rules.ruleset import RECIPES_DIR, RuleSet, load_stored, load_texts
from rules.versions import history_of

__all__ = [
    "RuleWatcher",
    "deploy_rules",
    "files_from_paths",
    "publish_rules",
    "publish_rules_async",
    "stored_rule_files",
]

logger = logging.getLogger(__name__)

OnRules = Callable[[RuleSet, int], None]


def files_from_paths(paths: list[str] | None) -> dict[str, str]:
    """Rule files and directories (default: the stock recipes) as {path: text}."""
    names = paths if paths else [str(RECIPES_DIR)]
    return {str(f): f.read_text(encoding="utf-8") for f in rule_files(names)}


async def deploy_rules(redis: RedisState, files: Mapping[str, str]) -> tuple[RuleSet, int]:
    """Validate ``files`` (raises RuleErrors, nothing stored), keeping the deployed set's
    rule versions for the flows open on them (rules/versions.py), store them as the next
    version and notify every worker. Returns the rule set and its version (0: a newer one
    was stored meanwhile)."""
    rec = await redis.load_rules()
    history = None if rec is None else history_of(sorted(rec.files.items()), rec.archive)
    # parsing is CPU work (a 1 MiB file: ~1.4 s): in a thread, the loop keeps serving
    rs = await asyncio.to_thread(load_texts, sorted(files.items()), history)
    return rs, await redis.put_rules(dict(files), archive=rs.archive)


async def stored_rule_files(redis: RedisState, version: int) -> dict[str, str] | None:
    """The files of deployed version ``version`` while Redis keeps it (the last
    RULES_HISTORY deploys, engine/distributed/storage/redis.py), else None: what a rollback deploys
    again."""
    for kept in await redis.rules_history():
        if kept.version == version:
            return kept.files
    rec = await redis.load_rules()
    return rec.files if rec is not None and rec.version == version else None


async def publish_rules_async(
    redis_url: str, files: Mapping[str, str], *, prefix: str = "nudge"
) -> int:
    """Validate ``files`` (raises RuleErrors, nothing stored), store them as the next
    version and notify every worker (:func:`deploy_rules`). Returns the version."""
    state = RedisState(redis_url, prefix=prefix, retry_for=10.0)
    try:
        return (await deploy_rules(state, files))[1]
    finally:
        await state.close()


def publish_rules(redis_url: str, files: Mapping[str, str] | Path, *, prefix: str = "nudge") -> int:
    """Synchronous :func:`publish_rules_async`; ``files`` may be a rule directory."""
    texts = files_from_paths([str(files)]) if isinstance(files, Path) else dict(files)
    return asyncio.run(publish_rules_async(redis_url, texts, prefix=prefix))


class RuleWatcher:
    """Loads the deployed rule set at start (seeding it from local files when Redis has
    none) and calls ``on_rules`` for every newer version announced."""

    def __init__(self, redis: RedisState, seed_files: dict[str, str]) -> None:
        self.redis = redis
        self.seed_files = seed_files
        self.version = 0
        self.files: dict[str, str] = {}
        self.archive: dict[str, Any] = {}

    async def initial(self) -> tuple[RuleSet, int]:
        rec = await self.redis.seed_rules(self.seed_files)
        rs = load_stored(sorted(rec.files.items()), rec.version, rec.archive)
        self.version, self.files, self.archive = rec.version, rec.files, rs.archive
        return rs, rec.version

    async def watch(self, on_rules: OnRules, poll: float = 5.0) -> None:
        """Run forever: swap in each newer version."""
        async for version in self.redis.rule_updates(poll):
            if version == 0:
                await self._reseed()
                continue
            if version <= self.version:
                continue
            rec = await self.redis.load_rules()
            if rec is None:
                await self._reseed()
                continue
            if rec.version <= self.version:
                continue
            self._apply(rec, on_rules)

    async def _reseed(self) -> None:
        """Redis lost the rule set (restart without persistence): store ours again."""
        if self.files:
            logger.warning("deployed rule set missing in redis; restoring version %d", self.version)
            await self.redis.put_rules(self.files, self.version, self.archive)

    def _apply(self, rec: RulesRecord, on_rules: OnRules) -> None:
        try:  # validated by the process that deployed it
            rs = load_stored(sorted(rec.files.items()), rec.version, rec.archive)
        except Exception:
            logger.exception(
                "rule set version %d does not load; keeping %d", rec.version, self.version
            )
            self.version = rec.version  # do not retry the same broken version
            return
        self.version, self.files, self.archive = rec.version, rec.files, rs.archive
        on_rules(rs, rec.version)
        logger.info("rule set version %d deployed (%d rules)", rec.version, len(rs.rules))
