"""Token scopes: write sends events, read reads (rules, customers, segments, models), admin
does everything; a read token never writes."""

from __future__ import annotations

import json
from pathlib import Path

from engine.http.auth import Tokens
from tests.engine.embedded.conftest import Harness

READS = ("/v1/rules", "/v1/customers/c1", "/v1/segments", "/v1/models")


async def _status(h: Harness, method: str, path: str, scope: str, body: object = None) -> int:
    async with h.session.request(method, h.url(path), headers=h.auth(scope), json=body) as r:
        return r.status


async def test_read_token_reads_and_never_writes(harness: Harness) -> None:
    h = harness
    assert h.tokens.read.startswith("nr_")
    event = {"event_id": "e1", "type": "page_viewed", "customer_id": "c1",
             "timestamp": "2026-01-01T00:00:00Z", "properties": {}}  # fmt: skip
    assert await _status(h, "POST", "/v1/events", "write", [event]) == 202
    for path in READS:
        assert await _status(h, "GET", path, "read") in (200, 404), path  # 404: no customer
        assert await _status(h, "GET", path, "write") == 403, path
        assert await _status(h, "GET", path, "admin") in (200, 404), path
    assert await _status(h, "GET", "/v1/customers/c1", "read") == 200
    assert await _status(h, "POST", "/v1/events", "read", [event]) == 403
    assert await _status(h, "PUT", "/v1/rules", "read", {"files": {}}) == 403
    assert await _status(h, "DELETE", "/v1/customers/c1", "read") == 403
    assert await _status(h, "POST", "/v1/models/rfm/refresh", "read") == 403


def test_a_tokens_file_from_before_the_read_scope_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"write": "w", "admin": "a"}))
    path.chmod(0o600)
    tokens, _, created = Tokens.load_or_create(tmp_path)
    assert not created
    assert (tokens.write, tokens.admin) == ("w", "a")
    assert tokens.read.startswith("nr_")
    assert json.loads(path.read_text())["read"] == tokens.read
    assert Tokens.load_or_create(tmp_path)[0] == tokens  # kept from then on
    assert tokens.scope_of(f"Bearer {tokens.read}") == "read"
    assert Tokens("w", "a").scope_of("Bearer ") is None  # no read token: nothing reads as it
