"""Admin commands: ``nudge rules deploy`` (over the HTTP API) and ``nudge deadletter``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson

from engine.settings import environment
from rules.exceptions import RuleErrors
from rules.loader import rule_files
from rules.ruleset import load_ruleset

__all__ = ["add_admin_parsers"]


def _admin_token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if env := environment().admin_token:
        return env
    path = Path(args.data) / "tokens.json"
    if path.exists():
        return str(orjson.loads(path.read_bytes())["admin"])
    return None


async def _deploy(url: str, token: str, files: dict[str, str]) -> tuple[int, dict[str, object]]:
    from aiohttp import ClientSession

    async with (
        ClientSession() as s,
        s.put(
            url.rstrip("/") + "/v1/rules",
            json={"files": files},
            headers={"Authorization": f"Bearer {token}"},
        ) as r,
    ):
        return r.status, await r.json()


def _cmd_deploy(args: argparse.Namespace) -> int:
    """Check locally first (file:line:col), then PUT the whole set; the server re-checks."""
    try:
        load_ruleset(args.paths)
    except RuleErrors as err:
        for e in err.errors:
            print(e, file=sys.stderr)
        print("rule set rejected locally; nothing deployed", file=sys.stderr)
        return 1
    token = _admin_token(args)
    if token is None:
        print(
            "no admin token: --token, NUDGE_ADMIN_TOKEN or --data DIR/tokens.json", file=sys.stderr
        )
        return 2
    files = {str(f): f.read_text(encoding="utf-8") for f in rule_files(args.paths)}
    try:
        status, body = asyncio.run(_deploy(args.url, token, files))
    except OSError as err:
        print(f"{args.url}: {err}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"deploy refused ({status}): {orjson.dumps(body).decode()}", file=sys.stderr)
        return 1
    print(f"deployed version {body['version']} ({body['rules']} rules) to {args.url}")
    return 0


def _cmd_deadletter(args: argparse.Namespace) -> int:
    from connectors.deadletter import DeadLetterStore

    if args.broker:
        return _deadletter_distributed(args)

    from engine.embedded.storage.crypt import sealer_for_dir

    # encryption at rest: NUDGE_DATA_KEY opens the letters (a missing or wrong key stops here)
    sealer = sealer_for_dir(Path(args.data))
    store = DeadLetterStore(Path(args.data) / "deadletter.db", sealer=sealer)
    try:
        if args.action == "list":
            for letter in store.list(args.limit, sink_name=args.sink):
                print(
                    orjson.dumps(
                        {
                            "key": letter.key,
                            "sink": letter.sink_name,
                            "reason": letter.reason,
                            "attempts": letter.attempts,
                            "error": letter.error,
                            "action": letter.action.to_json_dict(),
                        }
                    ).decode()
                )
            return 0
        return _replay_embedded(store, args)
    finally:
        store.close()


def _replay_embedded(store: object, args: argparse.Namespace) -> int:
    """With ``nudge run`` on the data directory: mark the letters, the engine takes them
    back into its outbox (its breakers, order and gauges see them) and this waits until it
    did. Without: deliver them here through ``--sinks``."""
    from connectors.deadletter import DeadLetterStore
    from engine.embedded.exceptions import DataDirLocked
    from engine.embedded.lock import DataDirLock

    assert isinstance(store, DeadLetterStore)
    lock = DataDirLock(Path(args.data))
    try:
        lock.acquire()
    except DataDirLocked:  # an engine runs here: it replays
        n = store.request_replay(sink_name=args.sink, expired=args.expired)
        end = time.monotonic() + args.wait
        while store.replay_requested() and time.monotonic() < end:
            time.sleep(0.1)
        waiting = store.replay_requested()
        out = {"requested": n, "taken_by_engine": n - waiting, "left": store.count()}
        print(orjson.dumps(out).decode())
        if waiting:
            print(f"the engine has not taken {waiting} letters yet", file=sys.stderr)
        return 0 if not waiting else 1
    try:
        if not args.sinks:
            print(
                "replay needs --sinks FILE (the routing config to deliver through) when no "
                "engine runs on --data",
                file=sys.stderr,
            )
            return 2
        return asyncio.run(_replay(store, args))
    finally:
        lock.release()


def _deadletter_distributed(args: argparse.Namespace) -> int:
    """``--broker``: the workers' dead-letter topic (engine/distributed/deadletters.py)."""
    from engine.distributed.deadletters import group_of, letters, replay
    from engine.distributed.storage.redis import RedisState

    topic = f"{args.actions_topic}-dead"

    async def listing() -> int:
        n = 0
        async for letter in letters(args.broker, topic, group_of(args.app_id)):
            action = None if letter.action is None else letter.action.to_json_dict()
            row = {"partition": letter.partition, "offset": letter.offset}
            print(orjson.dumps({**row, "error": letter.error, "action": action}).decode())
            n += 1
            if n >= args.limit:
                break
        return 0

    async def replaying() -> int:
        redis = RedisState(args.redis, prefix=args.redis_prefix, retry_for=30.0)
        try:
            result = await replay(args.broker, redis, args.actions_topic, args.app_id)
        finally:
            await redis.close()
        print(orjson.dumps(result.as_dict()).decode())
        return 0 if result.undecodable == 0 else 1

    try:
        return asyncio.run(listing() if args.action == "list" else replaying())
    except Exception as err:  # Kafka or Redis unreachable
        print(f"nudge deadletter {args.action}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


async def _replay(store: object, args: argparse.Namespace) -> int:
    import yaml

    from connectors.deadletter import DeadLetterStore
    from connectors.retry import RetryPolicy
    from connectors.routing import Router

    assert isinstance(store, DeadLetterStore)
    config = yaml.safe_load(Path(args.sinks).read_text(encoding="utf-8"))
    router = Router.from_config(config)
    await router.start_all()
    delivered = failed = 0
    try:
        for sink in router.sinks.values():
            if args.sink is not None and sink.name != args.sink:
                continue
            # each letter is retried for --retry-for seconds here, not the sink's horizon
            policy = replace(router.policy_for(sink, RetryPolicy()), horizon=args.retry_for)
            d, f = await store.replay(sink, policy, expired=args.expired)
            delivered += d
            failed += f
    finally:
        await router.close_all()
    print(orjson.dumps({"delivered": delivered, "failed": failed, "left": store.count()}).decode())
    return 0 if failed == 0 else 1


def add_admin_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    rules: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """``rules deploy`` under ``rules``; ``deadletter list|replay`` at the top level."""
    dep = rules.add_parser("deploy", help="check rule files, then deploy them over the API")
    dep.add_argument("paths", nargs="+")
    dep.add_argument("--url", default="http://127.0.0.1:8080")
    dep.add_argument("--token", help="admin token (else NUDGE_ADMIN_TOKEN or --data)")
    dep.add_argument("--data", default="nudge-data", help="where tokens.json is")
    dep.set_defaults(func=_cmd_deploy)

    dl = sub.add_parser("deadletter", help="list or replay undeliverable actions")
    dl.add_argument("action", choices=["list", "replay"])
    dl.add_argument("--data", default="nudge-data")
    dl.add_argument("--limit", type=int, default=100)
    dl.add_argument("--sinks", help="routing config to replay through (YAML/JSON)")
    dl.add_argument("--sink", help="only the letters of this sink")
    dl.add_argument(
        "--expired",
        action="store_true",
        help="replay expired letters too (not sent on purpose: past their send-by deadline)",
    )
    dl.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="with an engine running on --data: seconds to wait for it to take the letters",
    )
    dl.add_argument(
        "--retry-for",
        type=float,
        default=60.0,
        help="without an engine: seconds to retry each letter before leaving it",
    )
    dl.add_argument(
        "--broker",
        help="distributed: the workers' Kafka (kafka://host:port); replay hands the letters "
        "back to the workers through the actions topic, once each (Redis keys)",
    )
    dl.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="with --broker")
    dl.add_argument("--app-id", default="nudge", help="the workers' --app-id")
    dl.add_argument("--actions-topic", default="actions", help="the workers' --actions-topic")
    dl.add_argument("--redis-prefix", default="nudge", help="the workers' --redis-prefix")
    dl.set_defaults(func=_cmd_deadletter)
