"""``POST /v1/rules/rollback``: deploy an earlier rule set version again.

A rollback is a deploy (validated whole, counted in ``nudge_rule_deploys``) of the files
of an earlier deployed version, stored as the next version: versions only grow, so every
worker of ``nudge worker`` swaps to it like to any deploy. Without a body it restores the
version before the current one (a second rollback therefore returns to the first: the
two latest versions alternate, like ``kubectl rollout undo``); ``{"to_version": N}``
restores version N. Open flows keep the version they entered with (rules/versions.py):
a rollback moves no one unless the rule says ``on_update: move``.

The backend (embedded Runtime, distributed KafkaIngest) provides ``rules_version``,
``ruleset``, ``rule_files(version)`` (None: not kept; nudge run keeps every version, the
Redis record the last 20) and ``deploy(files)``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from engine.exceptions import NotReady
from engine.http.base import BACKEND, METRICS, auth, error, ok
from rules.exceptions import RuleErrors
from rules.ruleset import RuleSet

__all__ = ["deploy_warnings", "install", "rollback_rules"]


def deploy_warnings(rs: RuleSet) -> list[str]:
    """What a deploy answers besides its version: the rules whose steps changed without a
    version bump (their open flows continue at their step index with the new steps)."""
    return [
        f"rule {rid}: changed without a version bump: its open flows continue at their "
        "step index with the new steps (bump version to keep them on the old ones)"
        for rid in rs.changed_in_place
    ]


async def _target(request: web.Request, current: int) -> int | web.Response:
    """The version to restore: ``to_version`` from the body, else the one before
    ``current``."""
    raw = await request.read()
    body: Any = {}
    if raw.strip():
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            return error(400, "invalid_json", f"body is not JSON: {err}", field="$")
        if not isinstance(body, dict):
            return error(400, "invalid_field", 'expected {"to_version": N} or no body', field="$")
    to = body.get("to_version")
    if to is None:
        if current <= 1:
            return error(
                400,
                "invalid_field",
                f"rule set version {current} is the first deployed: nothing to roll back to",
                field="$.to_version",
            )
        to = current - 1
    elif isinstance(to, bool) or not isinstance(to, int) or to < 1:
        return error(400, "invalid_field", "to_version: a version number", field="$.to_version")
    if to >= current:
        return error(
            400,
            "invalid_field",
            f"to_version: rule set version {current} is running; roll back to an earlier one",
            field="$.to_version",
        )
    return to


async def rollback_rules(request: web.Request) -> web.Response:
    if (denied := auth(request, "admin")) is not None:
        return denied
    backend = request.app[BACKEND]
    current = int(backend.rules_version)
    target = await _target(request, current)
    if isinstance(target, web.Response):
        return target
    try:
        files = await backend.rule_files(target)
    except NotReady as nr:
        return error(503, "not_ready", str(nr))
    if files is None:
        return error(
            404,
            "version_not_found",
            f"rule set version {target} is not kept",
            field="$.to_version",
        )
    metrics = request.app[METRICS]
    try:
        version = await backend.deploy(files)
    except RuleErrors as err:  # an old version the checks of today refuse: fix forward
        metrics.rule_deploys.labels("rejected").inc()
        return error(
            400,
            "invalid_rules",
            f"rule set version {target} no longer passes the checks: "
            f"{len(err.errors)} error(s); nothing changed",
            errors=[e.to_dict() for e in err.errors],
        )
    except NotReady as nr:
        return error(503, "not_ready", str(nr))
    metrics.rule_deploys.labels("ok").inc()
    return ok(
        {
            "version": version,
            "rolled_back_to": target,
            "previous": current,
            "rules": len(backend.ruleset.rules),
            "warnings": deploy_warnings(backend.ruleset),
        }
    )


def install(app: web.Application) -> None:
    """Add ``POST /v1/rules/rollback`` to ``app``."""
    app.router.add_post("/v1/rules/rollback", rollback_rules)
