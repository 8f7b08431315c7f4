"""Router: config validation, route matching, lifecycle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from connectors.exceptions import ConnectorError
from connectors.retry import RetryPolicy
from connectors.routing import Router, check_config
from connectors.sinks.fcm import FcmSink
from connectors.sinks.jsonl import JsonlSink, read_jsonl_actions
from connectors.sinks.log import LogSink
from connectors.sinks.sendgrid import SendGridSink
from connectors.sinks.twilio import TwilioSink
from connectors.sinks.webhook import WebhookSink
from tests.connectors.conftest import ActionFactory
from tests.support.providers import FakeProviders


def example(tmp_path: Path) -> dict[str, Any]:
    return {
        "default": "log",
        "sinks": {
            "crm": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "max_attempts": 2},
            "file": {"type": "jsonl", "path": str(tmp_path / "actions.jsonl")},
            "log": {"type": "log"},
        },
        "routes": [{"rule": "vip-segment", "sink": "crm"}, {"channel": "sms", "sink": "file"}],
    }


def test_first_matching_route_wins_else_default(tmp_path: Path, make_action: ActionFactory) -> None:
    router = Router.from_config(example(tmp_path))
    assert router.sink_for(make_action(rule_id="vip-segment", channel="sms")).name == "crm"
    assert router.sink_for(make_action(rule_id="other", channel="sms")).name == "file"
    assert router.sink_for(make_action(rule_id="other", channel="email")).name == "log"
    assert isinstance(router.sinks["crm"], WebhookSink)
    assert isinstance(router.sinks["file"], JsonlSink)
    assert isinstance(router.sinks["log"], LogSink)


def test_route_with_rule_and_channel_needs_both(make_action: ActionFactory) -> None:
    router = Router.from_config(
        {
            "sinks": {"x": {"type": "log"}},
            "routes": [{"rule": "winback", "channel": "email", "sink": "x"}],
        }
    )
    assert router.sink_for(make_action(rule_id="winback", channel="email")).name == "x"
    assert router.sink_for(make_action(rule_id="winback", channel="sms")).name == "log"


def test_minimal_config_has_an_implicit_log_sink(make_action: ActionFactory) -> None:
    router = Router.from_config({"default": "log"})
    assert isinstance(router.sink_for(make_action()), LogSink)
    assert Router.from_config({}).default == "log"


def test_policy_for_uses_the_webhook_settings(tmp_path: Path) -> None:
    router = Router.from_config(example(tmp_path))
    default = RetryPolicy(max_attempts=9)
    assert router.policy_for(router.sinks["crm"], default).max_attempts == 2
    assert router.policy_for(router.sinks["file"], default) is default


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c["sinks"]["crm"].pop("url"), "$.sinks.crm.url"),
        (lambda c: c["sinks"]["crm"].update(url="ftp://x"), "$.sinks.crm.url"),
        (lambda c: c["sinks"]["crm"].update(max_attempts=0), "$.sinks.crm.max_attempts"),
        (lambda c: c["sinks"]["crm"].update(timeout="soon"), "$.sinks.crm.timeout"),
        (lambda c: c["sinks"]["file"].update(pathh="x"), "$.sinks.file.pathh"),
        (lambda c: c["sinks"].update(q={"type": "kafka"}), "$.sinks.q.type"),
        (lambda c: c["sinks"].update(q="log"), "$.sinks.q"),
        (lambda c: c["routes"][1].update(sink="nope"), "$.routes[1].sink"),
        (lambda c: c["routes"][0].pop("rule"), "$.routes[0]"),
        (lambda c: c.update(default="nope"), "$.default"),
        (lambda c: c.update(routes={"rule": "x"}), "$.routes"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, mutate: Any, field: str) -> None:
    config = example(tmp_path)
    mutate(config)
    with pytest.raises(ConnectorError) as info:
        Router.from_config(config)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(ConnectorError) as info:
        Router.from_config(["log"])  # type: ignore[arg-type]
    assert info.value.field == "$"


async def test_start_all_and_close_all(tmp_path: Path, make_action: ActionFactory) -> None:
    router = Router.from_config(example(tmp_path))
    await router.start_all()
    try:
        action = make_action(channel="sms")
        await router.sink_for(action).send(action)
    finally:
        await router.close_all()
    await router.close_all()  # idempotent
    assert read_jsonl_actions(tmp_path / "actions.jsonl") == [action]


async def test_log_sink_logs_one_structured_line(
    caplog: pytest.LogCaptureFixture, make_action: ActionFactory
) -> None:
    sink = LogSink("log")
    action = make_action("k9")
    with caplog.at_level(logging.INFO, logger="connectors.sinks.log"):
        await sink.send(action)
    [record] = caplog.records
    assert record.getMessage().startswith("action {")
    assert '"idempotency_key":"k9"' in record.getMessage()
    assert record.__dict__["action"] == action.to_json_dict()
    assert record.__dict__["sink"] == "log"


def provider_config(tmp_path: Path, fake: FakeProviders) -> dict[str, Any]:
    return {
        "default": "log",
        "sinks": {
            "email": fake.sink_config("sendgrid", tmp_path),
            "sms": fake.sink_config("twilio", tmp_path),
            "push": fake.sink_config("fcm", tmp_path),
            "crm": {"type": "webhook", "url": "http://127.0.0.1:9/hook"},
        },
        "routes": [
            {"rule": "vip-segment", "sink": "crm"},
            {"channel": "email", "sink": "email"},
            {"channel": "sms", "sink": "sms"},
            {"channel": "push", "sink": "push"},
        ],
    }


def test_provider_sink_types_are_built(tmp_path: Path, fake_providers: FakeProviders) -> None:
    router = Router.from_config(provider_config(tmp_path, fake_providers))
    assert isinstance(router.sinks["email"], SendGridSink)
    assert isinstance(router.sinks["sms"], TwilioSink)
    assert isinstance(router.sinks["push"], FcmSink)
    policy = router.policy_for(router.sinks["sms"], RetryPolicy(max_attempts=9))
    assert policy.max_attempts is None  # the provider sink's own: bounded by time
    assert policy.horizon == 12 * 3600


def test_needs_address_follows_the_routes(tmp_path: Path, fake_providers: FakeProviders) -> None:
    router = Router.from_config(provider_config(tmp_path, fake_providers))
    assert router.needs_address("abandoned-cart", "email")
    assert router.needs_address("any", "sms")
    assert router.needs_address("any", "push")
    assert not router.needs_address("vip-segment", "email")  # first route: the webhook
    assert not router.needs_address("any", "webhook")  # the default: log
    assert not Router.from_config({}).needs_address("r", "email")


def test_default_provider_rates(tmp_path: Path, fake_providers: FakeProviders) -> None:
    config = provider_config(tmp_path, fake_providers)
    for sink in config["sinks"].values():
        sink.pop("rate_per_second", None)
    router = Router.from_config(config)
    rates = {n: router.sinks[n].bucket.rate for n in ("email", "sms", "push")}
    assert rates == {"email": 100.0, "sms": 1.0, "push": 500.0}


def test_check_config_lists_every_problem(tmp_path: Path, fake_providers: FakeProviders) -> None:
    config = provider_config(tmp_path, fake_providers)
    config["sinks"]["email"] = {
        **config["sinks"]["email"],
        "api_key_file": None,
        "api_key_env": "NUDGE_T_KEY",
    }
    config["sinks"]["sms"]["templates_dir"] = str(tmp_path / "missing")
    config["sinks"]["crm"]["timeout"] = -1
    config["routes"].append({"channel": "x", "sink": "nope"})
    problems = check_config(config, env={})
    assert [(p.field, p.warning) for p in problems] == [
        ("$.sinks.email.api_key_env", False),
        ("$.sinks.sms.templates_dir", False),
        ("$.sinks.crm.timeout", False),
        ("$.routes[4].sink", False),
    ]
    warned = check_config(config, env={}, secrets="warn")
    assert warned[0].warning
    assert "NUDGE_T_KEY is not set" in warned[0].message
