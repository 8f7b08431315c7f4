"""Encryption at rest for the embedded runtime's data directory (docs/operations.md,
"Data at rest").

With a data key (``NUDGE_DATA_KEY``: 32 random bytes, base64; ``nudge datakey`` makes
one) every row body that can hold a customer's personal data is sealed with AES-256-GCM
(the ``cryptography`` package) before it reaches a file: journal requests, checkpointed
states, outbox actions, dead letters, and the checkpoint spool. Whole bodies, not fields:
one seal per row is far cheaper than one per attribute (``load_tests/bench_seal.py``),
and every attribute is covered, not only a configured list. What stays
readable: customer ids (the tables' keys), seqs, times, statuses, rule versions and the
campaign counts. Addresses (``addresses.db``) are stored as keyed hashes (HMAC-SHA256),
which still look up but never reveal.

A sealed body: ``MAGIC`` (2 bytes), the key id (4 bytes), a random 96-bit nonce, the
ciphertext with its 16-byte tag. A body without ``MAGIC`` is plaintext (written before
the key was set, or without one): :meth:`Sealer.open` passes it through. A sealed body
with no key, or with a key id the sealer does not hold, raises :class:`DataKeyError`,
and so does a tag that does not verify: never garbage.

``states.db`` keeps a check value (``CHECK_META``: a sealed constant) from the first
start with a key: :func:`check_key` refuses to start on a data directory that has one
without the key, or with another key, naming both key ids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.embedded.exceptions import StartupError
from state.analytics import PENDING_PREFIX

__all__ = [
    "CHECK_META",
    "MAGIC",
    "DataKeyError",
    "Open",
    "Sealer",
    "check_key",
    "generate_key",
    "is_sealed",
    "open_plain",
    "opener",
    "parse_keys",
    "register",
    "registered",
    "seal_outbox",
    "seal_states",
    "sealed_rows",
    "sealer_for_dir",
    "sealer_from_env",
]

MAGIC = b"\x00\xe7"  # no JSON, MessagePack map or array body starts so
_NONCE = 12
_HEAD = len(MAGIC) + 4 + _NONCE
CHECK_META = "data_key:check"
_CHECK = b"nudge data key check v1"


class Open(Protocol):
    """:meth:`Sealer.open` or :func:`open_plain`: a stored body's plaintext."""

    def __call__(self, body: bytes, /) -> bytes: ...


class DataKeyError(StartupError):
    """The data key is missing, malformed or not the one the data directory was
    written with; the message says which and names the key ids."""


def generate_key() -> str:
    """A new data key: 32 random bytes, base64 (standard alphabet)."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def _decode_key(text: str, name: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DataKeyError(f"{name} is not base64 (make one with `nudge datakey`)") from None
    if len(key) != 32:
        raise DataKeyError(f"{name} must be 32 bytes, base64; it is {len(key)} bytes")
    return key


def parse_keys(current: str | None, previous: str | None = None) -> Sealer | None:
    """The sealer of ``NUDGE_DATA_KEY`` (``current``) and, to read rows of a key being
    rotated out, ``NUDGE_DATA_KEY_PREVIOUS`` (comma-separated); None without a key."""
    if not current:
        if previous:
            raise DataKeyError("NUDGE_DATA_KEY_PREVIOUS is set without NUDGE_DATA_KEY")
        return None
    keys = [_decode_key(current, "NUDGE_DATA_KEY")]
    for part in (previous or "").split(","):
        if part.strip():
            keys.append(_decode_key(part, "NUDGE_DATA_KEY_PREVIOUS"))
    return Sealer(keys)


def _key_id(key: bytes) -> bytes:
    return hmac.new(key, b"nudge key id", hashlib.sha256).digest()[:4]


class Sealer:
    """Seals with the first of ``keys``, opens with any of them (by the key id in the
    body). Thread-safe (no mutable state)."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("a sealer needs a key")
        self._aeads = {_key_id(k): AESGCM(k) for k in keys}
        self.key_id = _key_id(keys[0])
        self._seal_with = self._aeads[self.key_id]
        self._prefix = MAGIC + self.key_id
        # address lookups: a keyed hash of the current key (rotation re-records them)
        self._mac = hmac.new(keys[0], b"nudge addresses", hashlib.sha256).digest()

    @property
    def key_name(self) -> str:
        return self.key_id.hex()

    def seal(self, body: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return self._prefix + nonce + self._seal_with.encrypt(nonce, body, None)

    def open(self, body: bytes) -> bytes:
        """The plaintext of a sealed ``body``; a plaintext body as it is."""
        if body[:2] != MAGIC:
            return body
        aead = self._aeads.get(body[2:6])
        if aead is None:
            raise DataKeyError(
                f"a row was sealed with key {body[2:6].hex()}, not given (current key"
                f" {self.key_name}; an older one goes in NUDGE_DATA_KEY_PREVIOUS)"
            )
        try:
            return aead.decrypt(body[6:_HEAD], body[_HEAD:], None)
        except InvalidTag:
            raise DataKeyError(f"a row sealed with key {body[2:6].hex()} does not verify") from None

    def mac(self, text: str) -> str:
        """A keyed hash of ``text`` (hex): an address's lookup key in ``addresses.db``."""
        return hmac.new(self._mac, text.encode(), hashlib.sha256).hexdigest()


def is_sealed(body: bytes) -> bool:
    return body[:2] == MAGIC


def open_plain(body: bytes) -> bytes:
    """``body`` if it is plaintext; a sealed one raises DataKeyError (no key given)."""
    if body[:2] == MAGIC:
        raise DataKeyError(
            f"the data directory holds rows sealed with key {body[2:6].hex()}: set NUDGE_DATA_KEY"
        )
    return body


def check_key(db: sqlite3.Connection, sealer: Sealer | None, where: Path) -> None:
    """At open, on ``states.db``'s ``meta`` table: refuse a sealed data directory without
    its key, or with another key (DataKeyError); record the check value at the first
    start with a key, and again under a new current key once the old one still opens it
    (a rotation)."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (CHECK_META,)).fetchone()
    if row is None:
        if sealer is not None:
            _write_check(db, sealer)
        return
    stored = bytes.fromhex(str(row[0]))
    sealer = _verify(stored, sealer, where)
    if stored[2:6] != sealer.key_id:
        _write_check(db, sealer)


def _verify(stored: bytes, sealer: Sealer | None, where: Path) -> Sealer:
    """``sealer`` if it opens the check value ``stored``, else DataKeyError."""
    kid = stored[2:6].hex()
    if sealer is None:
        raise DataKeyError(f"{where} is encrypted at rest (key {kid}): set NUDGE_DATA_KEY")
    try:
        ok = sealer.open(stored) == _CHECK
    except DataKeyError:
        ok = False
    if not ok:
        raise DataKeyError(
            f"NUDGE_DATA_KEY (key {sealer.key_name}) is not the key {where} was written"
            f" with (key {kid})"
        )
    return sealer


def _write_check(db: sqlite3.Connection, sealer: Sealer) -> None:
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        (CHECK_META, sealer.seal(_CHECK).hex()),
    )


# data directory -> its sealer, registered by the store that opened it: the readers of the
# same process (engine/embedded/history.py: the console, the export) open what it sealed
_REGISTRY: dict[Path, Sealer] = {}


def register(data_dir: Path, sealer: Sealer | None) -> None:
    path = data_dir.resolve()
    if sealer is None:
        _REGISTRY.pop(path, None)
    else:
        _REGISTRY[path] = sealer


def registered(data_dir: Path) -> Sealer | None:
    return _REGISTRY.get(data_dir.resolve())


def opener(sealer: Sealer | None) -> Open:
    """``sealer.open``, or :func:`open_plain` without a key."""
    return open_plain if sealer is None else sealer.open


def sealed_rows(db: sqlite3.Connection) -> Iterable[bytes]:
    """Every sealed value in every table of ``db`` (``nudge erase --verify`` opens them)."""
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    for table in tables:
        for row in db.execute(f'SELECT * FROM "{table}"'):
            for value in row:
                if isinstance(value, bytes) and value[:2] == MAGIC:
                    yield value
                elif isinstance(value, str) and value.startswith(MAGIC.hex()):
                    yield bytes.fromhex(value)


def seal_states(sealer: Sealer | None, rows: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """A checkpoint chunk's ``(customer id, state)`` rows with the states sealed; the
    campaign-count rows riding in it (``PENDING_PREFIX``: counts, no personal data) as
    they are."""
    if sealer is None:
        return rows
    seal = sealer.seal
    return [(c, b if c.startswith(PENDING_PREFIX) else seal(b)) for c, b in rows]


def seal_outbox(
    sealer: Sealer | None, entries: list[tuple[str, str, bytes, int]]
) -> list[tuple[str, str, bytes, int]]:
    """Outbox rows ``(key, customer id, action JSON, cause_at)`` with the actions sealed."""
    if sealer is None:
        return entries
    seal = sealer.seal
    return [(k, c, seal(b), t) for k, c, b, t in entries]


def sealer_from_env() -> Sealer | None:
    """The sealer of ``NUDGE_DATA_KEY`` / ``NUDGE_DATA_KEY_PREVIOUS`` (engine/settings.py);
    None when no key is set. DataKeyError for a malformed key."""
    from engine.settings import environment  # read at the moment of use

    env = environment()
    current = env.data_key.get_secret_value() if env.data_key else None
    previous = env.data_key_previous.get_secret_value() if env.data_key_previous else None
    return parse_keys(current, previous)


def sealer_for_dir(data_dir: Path) -> Sealer | None:
    """:func:`sealer_from_env`, checked against ``data_dir``'s check value (read-only) as
    :func:`check_key` does, for the tools that read a data directory without the engine
    (``nudge deadletter``, ``nudge erase --verify``): a missing or wrong key is a
    DataKeyError, never rows read as garbage."""
    sealer = sealer_from_env()
    path = data_dir / "states.db"
    if not path.exists():
        return sealer
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (CHECK_META,)).fetchone()
    except sqlite3.OperationalError:  # no meta table yet
        row = None
    finally:
        db.close()
    if row is None:
        return sealer
    return _verify(bytes.fromhex(str(row[0])), sealer, data_dir)
