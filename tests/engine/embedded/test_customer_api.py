"""The shared customer API cases (tests/support/customer_api.py) against `nudge run`."""

from __future__ import annotations

from typing import Any

from engine.testing import START
from tests.engine.embedded.conftest import Harness
from tests.support.customer_api import CustomerApi, customer_cases


async def test_customer_api_cases(harness: Harness) -> None:
    async def post(events: list[dict[str, Any]]) -> int:
        status, _ = await harness.post_events(events)
        return status

    async def call(method: str, path: str) -> tuple[int, Any]:
        async with harness.session.request(
            method, harness.url(path), headers=harness.auth("admin")
        ) as r:
            return r.status, await r.json()

    await customer_cases(CustomerApi(post, call, harness.settle, START, journal=True))
