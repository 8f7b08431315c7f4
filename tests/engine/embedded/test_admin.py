"""Admin commands against a running engine: `nudge rules deploy`, `nudge deadletter`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from connectors.deadletter import DeadLetterStore
from engine.cli import main
from engine.testing import START
from engine.types import Action
from tests.engine.embedded.conftest import Harness
from tests.support.webhook import WebhookReceiver

RULE = (
    "id: hello\ntrigger: {event: page_viewed}\nsteps:\n  - send: {channel: webhook, template: hi}\n"
)


async def test_rules_deploy_command(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "hello.yaml").write_text(RULE)
    url = harness.url("/").rstrip("/")
    args = ["rules", "deploy", str(tmp_path), "--url", url, "--data", str(harness.data)]
    assert await asyncio.to_thread(main, args) == 0
    assert "deployed version 2 (1 rules)" in capsys.readouterr().out
    assert sorted(harness.runtime.ruleset.rules) == ["hello"]
    (tmp_path / "hello.yaml").write_text(RULE.replace("webhook", "fax"))
    assert await asyncio.to_thread(main, args) == 1
    err = capsys.readouterr().err
    assert "hello.yaml:4:21:" in err
    assert harness.runtime.rules_version == 2  # the running set stayed


async def test_deadletter_list_and_replay(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hook = WebhookReceiver()
    await hook.start()
    try:
        store = DeadLetterStore(tmp_path / "deadletter.db")
        action = Action("r", 1, "c1", "webhook", "t", {"x": 1}, "default", "k1", START)
        store.add(action, "hook", "HTTP 503", 5)
        store.close()
        assert await asyncio.to_thread(main, ["deadletter", "list", "--data", str(tmp_path)]) == 0
        listed = orjson.loads(capsys.readouterr().out.splitlines()[0])
        assert (listed["key"], listed["attempts"]) == ("k1", 5)
        sinks = tmp_path / "sinks.json"
        sinks.write_bytes(
            orjson.dumps(
                {"default": "hook", "sinks": {"hook": {"type": "webhook", "url": hook.url}}}
            )
        )
        rc = await asyncio.to_thread(
            main, ["deadletter", "replay", "--data", str(tmp_path), "--sinks", str(sinks)]
        )
        assert rc == 0
        assert orjson.loads(capsys.readouterr().out) == {"delivered": 1, "failed": 0, "left": 0}
        assert hook.keys() == ["k1"]
    finally:
        await hook.stop()
