"""Encryption at rest, piece by piece (engine/embedded/storage/crypt.py): sealing, the key
check at open, rotation, and each store that seals (journal, states, outbox, dead
letters, address book); and owner-only modes for every file a run creates, whatever the
process's umask."""

from __future__ import annotations

import base64
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.deadletter import DeadLetterStore
from engine.embedded.storage.addresses import SqliteAddressBook
from engine.embedded.storage.crypt import (
    DataKeyError,
    Sealer,
    generate_key,
    parse_keys,
    sealer_for_dir,
)
from engine.embedded.storage.sqlite import SqliteStore
from engine.types import Action
from state.customer import CustomerState, pack

EMAIL = b"secret.person@example.com"


def _key() -> bytes:
    return base64.b64decode(generate_key())


def _every_byte(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_seal_opens_back_and_tampering_or_a_foreign_key_is_an_error() -> None:
    s = Sealer([_key()])
    sealed = s.seal(EMAIL)
    assert EMAIL not in sealed
    assert s.seal(EMAIL) != sealed  # a fresh nonce each time
    assert s.open(sealed) == EMAIL
    assert s.open(b'{"plain": 1}') == b'{"plain": 1}'  # written before the key was set
    bad = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DataKeyError, match="does not verify"):
        s.open(bad)
    with pytest.raises(DataKeyError, match="not given"):
        Sealer([_key()]).open(sealed)


def test_keys_that_do_not_parse_are_named() -> None:
    assert parse_keys(None) is None
    with pytest.raises(DataKeyError, match="NUDGE_DATA_KEY is not base64"):
        parse_keys("not a key!")
    with pytest.raises(DataKeyError, match="32 bytes"):
        parse_keys(base64.b64encode(b"short").decode())
    with pytest.raises(DataKeyError, match="without NUDGE_DATA_KEY"):
        parse_keys(None, generate_key())


def test_a_store_opens_only_with_its_key_and_rotates_to_a_new_one(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    SqliteStore(tmp_path, "NORMAL", parse_keys(old)).close()  # the check value is written
    with pytest.raises(DataKeyError, match="encrypted at rest"):
        SqliteStore(tmp_path, "NORMAL")
    with pytest.raises(DataKeyError, match="is not the key"):
        SqliteStore(tmp_path, "NORMAL", parse_keys(new))
    store = SqliteStore(tmp_path, "NORMAL", parse_keys(old))
    store.append(1, [(1, b'[{"customer_id":"c1","email":"' + EMAIL + b'"}]')])
    store.close()
    # rotation: the new key current, the old one still read; the check moves to the new
    store = SqliteStore(tmp_path, "NORMAL", parse_keys(new, old))
    assert [b for _, _, b in store.journal_after(0)] == [
        b'[{"customer_id":"c1","email":"' + EMAIL + b'"}]'
    ]
    store.close()
    SqliteStore(tmp_path, "NORMAL", parse_keys(new)).close()  # the check opens with it
    os.environ.pop("NUDGE_DATA_KEY", None)
    with pytest.raises(DataKeyError, match="set NUDGE_DATA_KEY"):
        sealer_for_dir(tmp_path)  # the offline tools check the same way


def test_journal_states_and_outbox_are_sealed_and_read_back(tmp_path: Path) -> None:
    sealer = Sealer([_key()])
    store = SqliteStore(tmp_path, "NORMAL", sealer)
    event = b'{"customer_id":"c1","type":"x","email":"' + EMAIL + b'"}'
    store.append(1, [(1, b"[" + event + b"]")])
    st = CustomerState("c1", 1, 1, attributes={"email": EMAIL.decode()})
    action = b'{"customer_id":"c1","params":{"to":"' + EMAIL + b'"}}'
    store.checkpoint([("c1", pack(st))], [], {0: 1}, [("k1", "c1", action, 1)])
    assert EMAIL not in _every_byte(tmp_path)
    assert [b for _, _, b in store.journal_after(0)] == [b"[" + event + b"]"]
    assert [(s.attributes or {})["email"] for s in store.load_states()] == [EMAIL.decode()]
    assert store.outbox_pending() == [("k1", action, 1)]
    assert store.erase_from_journal("c1") == 1  # the erase opens and seals again
    assert [b for _, _, b in store.journal_after(0)] == [b"[null]"]
    store.close()


def test_a_spool_holds_sealed_states_and_the_writer_stores_them_as_they_are(
    tmp_path: Path,
) -> None:
    from engine.embedded.spool import SpoolWriter, read_spool
    from engine.embedded.storage.sqlite import write_snapshot

    sealer = Sealer([_key()])
    SqliteStore(tmp_path, "NORMAL", sealer).close()
    st = CustomerState("c1", 1, 1, attributes={"email": EMAIL.decode()})
    action = b'{"customer_id":"c1","params":{"to":"' + EMAIL + b'"}}'
    spool = tmp_path / "spool"
    with SpoolWriter(spool, sealer) as out:
        out.rows([("c1", pack(st))])
        out.trailer({0: 1}, [], [("k1", "c1", action, 1)])
    assert EMAIL not in spool.read_bytes()
    with spool.open("rb") as fh:  # the writer process's side: no key
        seqs, deleted, outbox, after, chunks = read_spool(fh)
        write_snapshot(tmp_path, "NORMAL", outbox, deleted, chunks, seqs, after)
    spool.unlink()
    assert EMAIL not in _every_byte(tmp_path)
    store = SqliteStore(tmp_path, "NORMAL", sealer)
    assert [s.attributes for s in store.load_states()] == [{"email": EMAIL.decode()}]
    assert store.outbox_pending() == [("k1", action, 1)]
    store.close()


def test_the_actions_file_inside_the_data_dir_is_named_for_the_warning(tmp_path: Path) -> None:
    from engine.embedded.server import plain_sinks_inside, sinks_config

    data = tmp_path / "data"
    assert plain_sinks_inside(sinks_config(None, data), data) == ["file"]  # the default
    elsewhere = {"sinks": {"out": {"type": "jsonl", "path": str(tmp_path / "a.jsonl")}}}
    assert plain_sinks_inside(elsewhere, data) == []


def test_dead_letters_are_sealed_and_still_erased(tmp_path: Path) -> None:
    sealer = Sealer([_key()])
    dead = DeadLetterStore(tmp_path / "deadletter.db", sealer=sealer)
    action = Action("r", 1, "c1", "email", "t", {"to": EMAIL.decode()}, "d", "k1", 1, "")
    dead.add(action, "default", f"HTTP 400: bad address {EMAIL.decode()}", 1, "rejected")
    dead.close()
    assert EMAIL not in _every_byte(tmp_path)
    dead = DeadLetterStore(tmp_path / "deadletter.db", sealer=sealer)
    [letter] = dead.list()
    assert letter.action == action
    assert EMAIL.decode() in letter.error
    assert dead.erase_customer("c1") == 1
    dead.close()


async def test_addresses_are_kept_as_keyed_hashes(tmp_path: Path) -> None:
    path = tmp_path / "addresses.db"
    plain = SqliteAddressBook(path)
    await plain.record("email", EMAIL.decode(), "c0")
    plain.close()
    sealer = Sealer([_key()])
    book = SqliteAddressBook(path, sealer)  # the plaintext rows go at the switch
    assert await book.lookup("email", EMAIL.decode()) is None
    await book.record("email", EMAIL.decode(), "c1")
    assert await book.lookup("email", EMAIL.decode()) == "c1"
    assert await book.lookup("email", "other@example.com") is None
    book.close()
    assert EMAIL not in _every_byte(tmp_path)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o022)  # a library user's usual umask: files 0644 unless made otherwise
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("loose_umask")
async def test_every_file_of_a_data_dir_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    from engine.types import iso
    from tests.engine.embedded.conftest import START, running

    data = tmp_path / "data"
    ev = {
        "event_id": "m1",
        "type": "customer_signed_up",
        "customer_id": "c1",
        "timestamp": iso(START),
        "properties": {"attributes": {"email": EMAIL.decode()}, "consent": {"email": True}},
    }

    def sinks(url: str) -> dict[str, Any]:  # emails to the actions file, the rest to url
        return {
            "default": "hook",
            "sinks": {
                "hook": {"type": "webhook", "url": url},
                "file": {"type": "jsonl", "path": str(data / "actions.jsonl")},
            },
            "routes": [{"channel": "email", "sink": "file"}],
        }

    async with running(data, sinks=sinks) as h:
        assert (await h.post_events([ev]))[0] == 202
        await h.settle()
        await h.runtime.checkpoints.checkpoint()
        h.runtime.dead.add(
            Action("r", 1, "c1", "email", "t", {}, "d", "k1", 1, ""), "hook", "HTTP 400", 1
        )
        async with h.session.delete(
            h.url("/v1/customers/c2?suppress=true"), headers=h.auth("admin")
        ) as r:
            assert r.status in (200, 404)
        modes = {
            str(p.relative_to(data)): oct(stat.S_IMODE(p.stat().st_mode))
            for p in sorted(data.rglob("*"))
        }
    print(modes)  # the listing, for the reader of a failure
    assert oct(stat.S_IMODE(data.stat().st_mode)) == "0o700"
    assert {"journal.db-wal", "suppressed.db", "deadletter.db", "tokens.json"} <= set(modes)
    assert "actions.jsonl" in modes  # the welcome email
    assert {n: m for n, m in modes.items() if m != "0o600"} == {}


def test_no_plaintext_sealed_rows_leak_through_sqlite_free_pages(tmp_path: Path) -> None:
    """A sealed row rewritten (an erase) leaves no old image in the file: secure_delete
    and the WAL truncation work on sealed bodies as on plain ones."""
    sealer = Sealer([_key()])
    store = SqliteStore(tmp_path, "NORMAL", sealer)
    body = b'[{"customer_id":"c1","email":"' + EMAIL + b'"}]'
    store.append(1, [(1, body)])
    sealed = bytes(store.jdb.execute("SELECT body FROM journal").fetchone()[0])
    store.erase_from_journal("c1")
    store.truncate_wals()
    store.close()
    assert sealed[6:30] not in _every_byte(tmp_path)  # the old ciphertext is gone too
    db = sqlite3.connect(tmp_path / "journal.db")
    assert db.execute("SELECT COUNT(*) FROM journal").fetchone()[0] == 1
    db.close()
