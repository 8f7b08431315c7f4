"""``nudge erase``: erase a customer through a running engine's API and prove it.

    nudge erase ID --url http://127.0.0.1:8080 [--suppress] [--verify] [--data DIR]
    nudge erase ID --verify --data DIR [--value V ...]          # only look

With ``--url`` the customer's profile is read first (its attribute values: email, phone,
...), then ``DELETE /v1/customers/{id}``; its answer (what was removed where) is
printed. ``--verify`` then searches every byte of every file under ``--data`` (the
engine's data directory) for the id and those values (and any ``--value``), and, with
``--broker`` / ``--redis``, every record of every topic of the cluster and every Redis
key and value: each hit is printed as ``where: what``; the exit status is 1 when there
is any, 0 when there is none. The values searched are printed masked.

A data directory encrypted at rest (docs/operations.md, "Data at rest") is searched as
bytes all the same (plaintext where none should be); with its key in ``NUDGE_DATA_KEY``
every sealed row of its SQLite files is opened and searched too (a wrong key stops the
search with an error); without it, how many sealed rows were left unopened is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from engine.embedded.storage.crypt import Sealer, sealed_rows, sealer_for_dir, sealer_from_env

__all__ = ["add_erase_parser", "scan_files", "scan_kafka", "scan_redis", "scan_sealed"]


def _mask(value: bytes) -> str:
    text = value.decode(errors="replace")
    return text[:2] + "*" * max(0, len(text) - 4) + text[-2:] if len(text) > 4 else "****"


def scan_files(root: Path, needles: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """(file, needle) for each file under ``root`` holding a needle."""
    wanted = [n for n in needles if n]
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        try:
            raw = path.read_bytes()
        except OSError as err:
            hits.append((f"{path} (unreadable: {err.strerror})", b""))
            continue
        hits += [(str(path), n) for n in wanted if n in raw]
    return hits


def scan_sealed(
    root: Path, needles: Iterable[bytes], sealer: Sealer | None
) -> tuple[list[tuple[str, bytes]], int]:
    """(file, needle) for each sealed row of the SQLite files under ``root`` whose
    plaintext holds a needle (``sealer`` opens them; DataKeyError if one does not), and
    how many sealed rows there were."""
    wanted = [n for n in needles if n]
    hits: list[tuple[str, bytes]] = []
    rows = 0
    for path in sorted(root.rglob("*.db")):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            for body in sealed_rows(db):
                rows += 1
                if sealer is None:
                    continue
                plain = sealer.open(body)
                hits += [(f"{path} (sealed row)", n) for n in wanted if n in plain]
        except sqlite3.DatabaseError as err:  # not SQLite: the byte scan covers it
            if "not a database" not in str(err):
                hits.append((f"{path} (unreadable: {err})", b""))
        finally:
            db.close()
    return hits, rows


async def scan_kafka(
    bootstrap: str, needles: Iterable[bytes], patience: float = 60.0
) -> list[tuple[str, bytes]]:
    """(topic/partition@offset, needle) for each record of every topic holding a needle
    in its key or value (topics read from their start to their end as of now)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    wanted = [n for n in needles if n]
    hits: list[tuple[str, bytes]] = []
    server = bootstrap.removeprefix("kafka://")
    # the partitions from the broker's metadata of every topic (a consumer knows only
    # those of the topics it was assigned: partitions_for_topic is None for the others)
    admin = AIOKafkaAdminClient(bootstrap_servers=server)
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    tps = [
        TopicPartition(t["topic"], p["partition"])
        for t in sorted(described, key=lambda t: str(t["topic"]))
        if t.get("error_code", 0) == 0 and not t["topic"].startswith("__")
        for p in sorted(t.get("partitions") or (), key=lambda p: int(p["partition"]))
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=server,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        if not tps:
            return hits
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        # explicit offsets: seek_to_beginning right after assign() left the positions at
        # the end on aiokafka 0.14 (the scan then read nothing and reported no hit)
        for tp, first in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, first)
        left = {tp for tp in tps if ends[tp] > await consumer.position(tp)}
        # until every partition is read to its end; an empty fetch is not the end (a busy
        # broker may take longer than one poll), a partition whose position stopped below
        # its end (records deleted, a transaction marker last) is done after `patience`
        deadline = time.monotonic() + patience
        while left and time.monotonic() < deadline:
            batch = await consumer.getmany(*left, timeout_ms=1000)
            if not batch:
                for tp in list(left):
                    if await consumer.position(tp) >= ends[tp]:
                        left.discard(tp)
                continue
            for tp, records in batch.items():
                for rec in records:
                    blob = (rec.key or b"") + b"\0" + (rec.value or b"")
                    hits += [
                        (f"{tp.topic}/{tp.partition}@{rec.offset}", n) for n in wanted if n in blob
                    ]
                    if rec.offset + 1 >= ends[tp]:
                        left.discard(tp)
    finally:
        await consumer.stop()
    return hits


async def scan_redis(url: str, needles: Iterable[bytes]) -> list[tuple[str, bytes]]:
    """(key, needle) for each Redis key whose name or value holds a needle (strings,
    hashes, sets, lists, sorted sets)."""
    import redis.asyncio as aioredis

    wanted = [n for n in needles if n]
    client = aioredis.Redis.from_url(url)
    hits: list[tuple[str, bytes]] = []
    try:
        async for key in client.scan_iter(count=1000):
            t = await client.type(key)
            kind = t.decode() if isinstance(t, bytes) else str(t)
            parts: list[Any] = [key]
            if kind == "string":
                parts.append(await client.get(key) or b"")
            elif kind == "hash":
                for f, v in (await client.hgetall(key)).items():
                    parts += [f, v]
            elif kind == "set":
                parts += list(await client.smembers(key))
            elif kind == "list":
                parts += list(await client.lrange(key, 0, -1))
            elif kind == "zset":
                parts += list(await client.zrange(key, 0, -1))
            blob = b"\0".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
            hits += [(f"redis:{key.decode(errors='replace')}", n) for n in wanted if n in blob]
    finally:
        await client.aclose()
    return hits


async def _http(method: str, url: str, token: str) -> tuple[int, Any]:
    from aiohttp import ClientSession

    headers = {"Authorization": f"Bearer {token}"}
    async with ClientSession() as s, s.request(method, url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def _values(view: Any) -> list[bytes]:
    """The profile's attribute values worth searching for (strings of 4+ characters)."""
    attrs = view.get("profile", {}).get("attributes", {}) if isinstance(view, dict) else {}
    return [v.encode() for v in attrs.values() if isinstance(v, str) and len(v) >= 4]


def _cmd_erase(args: argparse.Namespace) -> int:
    from engine.admin import _admin_token

    cid: str = args.customer_id
    needles = [cid.encode(), *(v.encode() for v in args.value or ())]
    if args.url:
        token = _admin_token(args)
        if token is None:
            print("no admin token: --token, NUDGE_ADMIN_TOKEN or --data DIR/tokens.json",
                  file=sys.stderr)  # fmt: skip
            return 2
        base = args.url.rstrip("/") + f"/v1/customers/{cid}"
        status, view = asyncio.run(_http("GET", base, token))
        if status == 200:
            needles += _values(view)
        elif status != 404:
            print(f"GET {base}: HTTP {status} {view}", file=sys.stderr)
            return 1
        query = "?suppress=true" if args.suppress else ""
        status, body = asyncio.run(_http("DELETE", base + query, token))
        print(orjson.dumps(body).decode())
        if status != 200:
            return 1
    if not args.verify:
        return 0
    data = Path(args.data)
    hits = scan_files(data, needles) if data.exists() else []
    if data.exists():  # encryption at rest: open the sealed rows with NUDGE_DATA_KEY
        sealer = sealer_for_dir(data) if sealer_from_env() is not None else None
        sealed, rows = scan_sealed(data, needles, sealer)
        hits += sealed
        if rows and sealer is None:
            print(f"{rows} sealed row(s) not searched: set NUDGE_DATA_KEY to open them",
                  file=sys.stderr)  # fmt: skip
    if args.broker:
        hits += asyncio.run(scan_kafka(args.broker, needles))
    if args.redis:
        hits += asyncio.run(scan_redis(args.redis, needles))
    searched = ", ".join(_mask(n) for n in needles)
    for where, needle in hits:
        print(f"{where}: {_mask(needle) if needle else 'unreadable'}")
    print(f"searched for {searched}: {len(hits)} hit(s)", file=sys.stderr)
    return 1 if hits else 0


def add_erase_parser(sub: Any) -> None:
    er = sub.add_parser("erase", help="erase a customer over the API and prove nothing is left")
    er.add_argument("customer_id")
    er.add_argument("--url", help="the engine's API (nudge run or the distributed ingest)")
    er.add_argument("--suppress", action="store_true", help="also drop the id's later events")
    er.add_argument("--verify", action="store_true",
                    help="search the data dir (and --broker topics, --redis keys) for the id "
                    "and the profile's values; exit 1 on any hit")  # fmt: skip
    er.add_argument("--data", default="nudge-data", help="the data directory to search")
    er.add_argument("--value", action="append", help="another value to search for")
    er.add_argument("--broker", help="Kafka bootstrap: search every topic")
    er.add_argument("--redis", help="Redis URL: search every key")
    er.add_argument("--token", help="admin token (else NUDGE_ADMIN_TOKEN or --data)")
    er.set_defaults(func=_cmd_erase)
