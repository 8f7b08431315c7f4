"""A rule set deployed before the field lint existed (rules/fields.py) still loads when
`nudge run` restarts after the upgrade: the lint's findings become warnings for a stored
set, while a new deploy with the same text is refused with file:line:col."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from engine.testing import START
from tests.engine.embedded.conftest import running

OLD = """
id: big-cart
trigger: {event: cart_item_added}
when: "cart.valu > 100.0"
steps:
  - send: {channel: webhook, template: big}
"""


async def test_a_stored_rule_set_with_an_unknown_field_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    async with running(data) as h:
        store = h.runtime.store
        assert store is not None
        # what an earlier version stored for a deploy it accepted
        await h.runtime.db(store.save_rules, START, {"old.yaml": OLD})
    caplog.set_level(logging.WARNING, logger="rules.ruleset")
    async with running(data) as h:
        rs = h.runtime.ruleset
        assert rs is not None
        assert set(rs.rules) == {"big-cart"}
        assert any("cart has no field 'valu'" in r.getMessage() for r in caplog.records)
        # the same text as a new deploy: refused, at its line and column
        admin = h.auth("admin")
        async with h.session.put(
            h.url("/v1/rules"), json={"files": {"old.yaml": OLD}}, headers=admin
        ) as r:
            assert r.status == 400
            body = await r.json()
        assert "valu" in str(body)
