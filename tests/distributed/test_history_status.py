"""The distributed timeline's delivery status: a missing key is pending only while it
could still be (Redis drops a status after the idempotency TTL)."""

from __future__ import annotations

from engine.distributed.config import IDEMPOTENCY_TTL_S
from engine.distributed.history import status_label

DAY_MS = 86_400_000
NOW = 1_800_000_000_000


def test_a_stored_status_is_shown_as_it_is() -> None:
    for stored in ("sent", "dead", "sending"):
        assert status_label(stored, NOW - 30 * DAY_MS, NOW, IDEMPOTENCY_TTL_S) == stored


def test_no_key_is_pending_within_the_ttl_and_expired_after() -> None:
    ttl_ms = IDEMPOTENCY_TTL_S * 1000
    assert status_label(None, NOW - DAY_MS, NOW, IDEMPOTENCY_TTL_S) == "pending"
    assert status_label(None, NOW - ttl_ms, NOW, IDEMPOTENCY_TTL_S) == "pending"
    assert status_label(None, NOW - ttl_ms - 1, NOW, IDEMPOTENCY_TTL_S) == "expired"
    assert status_label(None, NOW - 2 * DAY_MS, NOW, 86_400) == "expired"
