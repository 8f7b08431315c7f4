"""`nudge run`: open flows keep the rule version they entered with across deploys, a
rollback (`POST /v1/rules/rollback`, `nudge rules rollback`) and a restart (issue #22 item
7; docs/rules.md, "Deploys and open flows")."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.cli import main
from engine.embedded.runtime import Runtime
from engine.testing import START
from engine.types import iso
from tests.engine.embedded.conftest import Harness
from tests.engine.embedded.test_api import ev

H = 3_600_000

V1 = """
id: welcome
version: 1
trigger: {event: customer_signed_up}
steps:
  - wait: 24h
  - send: {channel: webhook, template: welcome_day1}
  - wait: 48h
  - send: {channel: webhook, template: welcome_day3}
"""

V2 = """
id: welcome
version: 2
trigger: {event: customer_signed_up}
steps:
  - wait: 24h
  - send: {channel: webhook, template: welcome_intro}
  - wait: 24h
  - send: {channel: webhook, template: welcome_day1}
  - wait: 48h
  - send: {channel: webhook, template: welcome_day3}
"""


async def deploy(h: Harness, text: str) -> dict[str, Any]:
    async with h.session.put(
        h.url("/v1/rules"), json={"files": {"welcome.yaml": text}}, headers=h.auth("admin")
    ) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    return body


async def rule_versions(h: Harness) -> dict[str, int]:
    return {r["id"]: r["version"] for r in await listed(h)}


async def listed(h: Harness) -> list[dict[str, Any]]:
    async with h.session.get(h.url("/v1/rules"), headers=h.auth("admin")) as r:
        body = await r.json()
    rules: list[dict[str, Any]] = body["rules"]
    return rules


def templates(h: Harness, customer: str) -> list[tuple[str, int, str]]:
    """(template, rule version, fire_at) of the customer's deliveries."""
    return [
        (d.body["template"], d.body["rule_version"], d.body["fire_at"])
        for d in h.hook.deliveries
        if d.body["customer_id"] == customer
    ]


def at(hours: int) -> str:
    return iso(START + hours * H)


async def test_flows_keep_their_version_through_deploy_rollback_and_restart(
    harness: Harness,
) -> None:
    h = harness
    first = (await deploy(h, V1))["version"]
    await h.post_events([ev(1, "customer_signed_up", "early", {})])
    await h.settle()
    second = (await deploy(h, V2))["version"]
    assert second == first + 1
    await h.post_events([ev(2, "customer_signed_up", "late", {})])
    await h.settle()

    h.clock.advance(24 * H)
    await h.hook.wait_for(2)
    await h.settle()
    assert templates(h, "early") == [("welcome_day1", 1, at(24))]  # not at 48 h
    assert templates(h, "late") == [("welcome_intro", 2, at(24))]

    # rollback over HTTP: the files of the deploy before, as the next version
    async with h.session.post(h.url("/v1/rules/rollback"), headers=h.auth("admin")) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert body == {
        "version": second + 1,
        "rolled_back_to": first,
        "previous": second,
        "rules": 1,
        "warnings": [],
    }
    [listing] = await listed(h)
    assert (listing["version"], listing["kept_versions"], listing["on_update"]) == (1, [2], "keep")
    await h.post_events([ev(3, "customer_signed_up", "after", {}, at=START + 24 * H)])
    await h.settle()

    # restart: the checkpointed flow of version 2 resumes on version 2
    rt = h.runtime
    await rt.stop()
    again = Runtime(rt.cfg, rt.metrics.__class__(), h.clock)
    await again.start()
    try:
        rs = again.ruleset
        assert rs is not None
        assert rs.rules["welcome"].version == 1
        assert [r.version for r in rs.retired["welcome"]] == [2]
        h.clock.advance(48 * H)  # to 72 h
        await h.hook.wait_for(5)
        await asyncio.sleep(0.2)
    finally:
        await again.stop()
    assert templates(h, "early") == [("welcome_day1", 1, at(24)), ("welcome_day3", 1, at(72))]
    assert templates(h, "late") == [("welcome_intro", 2, at(24)), ("welcome_day1", 2, at(48))]
    assert templates(h, "after") == [("welcome_day1", 1, at(48))]


async def test_a_deploy_warns_of_steps_changed_without_a_version_bump(harness: Harness) -> None:
    h = harness
    assert (await deploy(h, V1))["warnings"] == []
    body = await deploy(h, V2.replace("version: 2", "version: 1"))
    [warning] = body["warnings"]
    assert "rule welcome: changed without a version bump" in warning
    assert (await deploy(h, V2))["warnings"] == []


async def test_rollback_refusals(harness: Harness) -> None:
    h = harness
    url = h.url("/v1/rules/rollback")
    async with h.session.post(url, headers=h.auth("write")) as r:
        assert r.status == 403
    current = h.runtime.rules_version
    for body, status, code in [
        ({"to_version": current}, 400, "invalid_field"),
        ({"to_version": "1"}, 400, "invalid_field"),
        ([1], 400, "invalid_field"),
    ]:
        async with h.session.post(url, json=body, headers=h.auth("admin")) as r:
            assert r.status == status
            assert (await r.json())["error"]["code"] == code
    # the first stored version has none before it
    async with h.session.post(url, headers=h.auth("admin")) as r:
        assert r.status == 400
        assert (await r.json())["error"]["field"] == "$.to_version"


async def test_nudge_rules_rollback_cli(harness: Harness) -> None:
    h = harness
    first = (await deploy(h, V1))["version"]
    await deploy(h, V2)
    assert await rule_versions(h) == {"welcome": 2}
    token = h.tokens.admin
    argv = ["rules", "rollback", "--url", h.url("/"), "--token", token, "--to", str(first)]
    code = await asyncio.to_thread(main, argv)
    assert code == 0
    assert await rule_versions(h) == {"welcome": 1}
    # a version the store never had: refused, exit 1
    code = await asyncio.to_thread(main, [*argv[:-1], "999"])
    assert code == 1
