"""``nudge rules rollback``: restore an earlier deployed rule set version over the HTTP API
(``POST /v1/rules/rollback``, engine/http/rules.py), on ``nudge run`` and on the
``nudge worker`` ingest alike."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from engine.admin import _admin_token

__all__ = ["add_rollback_parser"]


async def _rollback(url: str, token: str, to_version: int | None) -> tuple[int, dict[str, Any]]:
    from aiohttp import ClientSession

    body = {} if to_version is None else {"to_version": to_version}
    async with (
        ClientSession() as s,
        s.post(
            url.rstrip("/") + "/v1/rules/rollback",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        return r.status, await r.json()


def _cmd_rollback(args: argparse.Namespace) -> int:
    token = _admin_token(args)
    if token is None:
        print(
            "no admin token: --token, NUDGE_ADMIN_TOKEN or --data DIR/tokens.json", file=sys.stderr
        )
        return 2
    try:
        status, body = asyncio.run(_rollback(args.url, token, args.to_version))
    except OSError as err:
        print(f"{args.url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"rollback refused ({status}): {orjson.dumps(body).decode()}", file=sys.stderr)
        return 1
    print(
        f"rolled back to version {body['rolled_back_to']}: deployed as version "
        f"{body['version']} ({body['rules']} rules) to {args.url}; open flows keep "
        "the rule version they entered with"
    )
    return 0


def add_rollback_parser(rules: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``rules rollback`` under ``rules``."""
    rb = rules.add_parser(
        "rollback",
        help="deploy the previous (or --to) rule set version again, over the API",
    )
    rb.add_argument(
        "--to",
        dest="to_version",
        type=int,
        help="the deployed version to restore (default: the one before the current)",
    )
    rb.add_argument("--url", default="http://127.0.0.1:8080")
    rb.add_argument("--token", help="admin token (else NUDGE_ADMIN_TOKEN or --data)")
    rb.add_argument("--data", default="nudge-data", help="where tokens.json is")
    rb.set_defaults(func=_cmd_rollback)
