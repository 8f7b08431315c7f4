"""Open flows keep the rule version they entered with (issue #22 item 7; docs/rules.md,
"Deploys and open flows"): scenarios under the virtual clock with RuleKit.deploy, which
swaps rule sets the way both runtimes deploy them."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.testing import START, RuleKit
from rules.exceptions import RuleErrors
from rules.ruleset import load_texts
from rules.versions import history_of

H = 3_600_000

WELCOME_V1 = """
id: welcome
version: 1
trigger: {event: customer_signed_up}
steps:
  - wait: 24h
  - send: {channel: email, template: welcome_day1}
  - wait: 48h
  - send: {channel: email, template: welcome_day3}
"""

# a step inserted in front: the old op list at the old index would send day1 at 48 h
WELCOME_V2 = """
id: welcome
version: 2
trigger: {event: customer_signed_up}
steps:
  - wait: 24h
  - send: {channel: email, template: welcome_intro}
  - wait: 24h
  - send: {channel: email, template: welcome_day1}
  - wait: 48h
  - send: {channel: email, template: welcome_day3}
"""


def sends(kit: RuleKit, customer: str) -> list[tuple[str, int, float]]:
    """(template, rule version, hours after START) of the customer's sends."""
    return [
        (a.template, a.rule_version, (a.fire_at - START) / H)
        for a in kit.sink.actions
        if a.customer_id == customer
    ]


def test_an_inserted_step_does_not_move_a_customer_in_flight() -> None:
    kit = RuleKit.from_yaml(WELCOME_V1)
    kit.send("customer_signed_up", "early")
    kit.advance(hours=2)
    kit.deploy(WELCOME_V2)
    kit.send("customer_signed_up", "late")  # enters after the deploy: the new version
    kit.advance(days=6)
    assert sends(kit, "early") == [("welcome_day1", 1, 24.0), ("welcome_day3", 1, 72.0)]
    assert sends(kit, "late") == [
        ("welcome_intro", 2, 26.0),
        ("welcome_day1", 2, 50.0),
        ("welcome_day3", 2, 98.0),
    ]
    assert kit.sink.errors == []


def test_without_a_version_bump_the_new_steps_apply_at_the_step_index() -> None:
    """The documented trap the version bump avoids: same version, new steps."""
    kit = RuleKit.from_yaml(WELCOME_V1)
    kit.send("customer_signed_up", "early")
    kit.advance(hours=2)
    rs = kit.deploy(WELCOME_V2.replace("version: 2", "version: 1"))
    assert rs.changed_in_place == ("welcome",)
    kit.advance(days=6)
    assert sends(kit, "early") == [
        ("welcome_intro", 1, 24.0),  # the day-1 email a day late: what a bump prevents
        ("welcome_day1", 1, 48.0),
        ("welcome_day3", 1, 96.0),
    ]


def test_a_new_description_is_no_change_in_place() -> None:
    first = load_texts([("w.yaml", WELCOME_V1)])
    text = WELCOME_V1.replace("version: 1", "version: 1\ndescription: day 1 and day 3")
    assert load_texts([("w.yaml", text)], first.history()).changed_in_place == ()


CART_V1 = """
id: cart
version: 1
trigger: {event: cart_item_added}
steps:
  - wait: 1h
  - name: reminder
    send: {channel: email, template: reminder}
  - wait: 4h
  - if: "!seen_since('email_opened', 'reminder')"
    send: {channel: email, template: followup}
"""


def test_an_open_is_attributed_by_the_steps_of_the_flows_version() -> None:
    """Feedback naming the action (``message_key``) is matched against the steps of the
    version that sent it, not the new version's (where the reminder moved)."""
    v2 = CART_V1.replace("version: 1", "version: 2").replace(
        "steps:\n", "steps:\n  - wait: 30m\n  - send: {channel: email, template: hello}\n"
    )
    kit = RuleKit.from_yaml(CART_V1)
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 30.0})
    kit.advance(minutes=30)
    kit.deploy(v2)
    kit.advance(hours=1)
    [reminder] = kit.sent()
    assert (reminder.template, reminder.rule_version) == ("reminder", 1)
    kit.send("email_opened", "c1", {"message_key": reminder.idempotency_key})
    kit.advance(hours=5)
    assert [a.template for a in kit.sent()] == ["reminder"]  # opened: no follow-up


def test_a_flow_leaves_on_the_exits_of_its_own_version() -> None:
    v1 = WELCOME_V1.replace("steps:", "exit_on: [{event: order_completed}]\nsteps:")
    v2 = WELCOME_V2.replace("steps:", "exit_on: [{event: account_closed}]\nsteps:")
    kit = RuleKit.from_yaml(v1)
    kit.send("customer_signed_up", "old")
    kit.advance(hours=1)
    kit.deploy(v2)
    kit.send("customer_signed_up", "new")
    kit.advance(hours=1)
    for cid in ("old", "new"):
        kit.send("order_completed", cid, {"order_id": f"o-{cid}", "total": 10.0})
    kit.advance(days=5)
    assert sends(kit, "old") == []  # v1 exits on the order
    assert [t for t, _, _ in sends(kit, "new")] == [
        "welcome_intro",
        "welcome_day1",
        "welcome_day3",
    ]


MOVE_V1 = """
id: nurture
version: 1
on_update: move
trigger: {event: customer_signed_up}
steps:
  - wait: 24h
    name: first-wait
  - send: {channel: email, template: day1}
  - wait: 48h
    name: second-wait
  - send: {channel: email, template: day3}
"""

MOVE_V2 = """
id: nurture
version: 2
on_update: move
trigger: {event: customer_signed_up}
steps:
  - wait: 24h
    name: first-wait
  - send: {channel: email, template: day1_new}
  - wait: 24h
    name: second-wait
  - send: {channel: email, template: day2}
"""


def test_on_update_move_moves_a_flow_at_the_wait_of_the_same_name() -> None:
    kit = RuleKit.from_yaml(MOVE_V1)
    kit.send("customer_signed_up", "c1")
    kit.advance(hours=2)
    kit.deploy(MOVE_V2)
    kit.advance(days=4)
    # moved at its 24 h timer onto v2, right after "first-wait"; later waits are v2's
    assert sends(kit, "c1") == [("day1_new", 2, 24.0), ("day2", 2, 48.0)]


def test_on_update_move_places_a_flow_at_the_first_wait_it_can() -> None:
    """In a wait the new version has no name for, a flow goes on on its version; it
    moves at the next wait the new version names."""
    v2 = MOVE_V2.replace("name: first-wait", "name: welcome-wait")
    kit = RuleKit.from_yaml(MOVE_V1)
    kit.send("customer_signed_up", "c1")
    kit.advance(hours=2)
    kit.deploy(v2)
    kit.advance(days=4)
    assert sends(kit, "c1") == [("day1", 1, 24.0), ("day2", 2, 72.0)]


def test_on_update_move_keeps_a_flow_it_cannot_place() -> None:
    """No wait of the new version has the name of one the flow stands in: it finishes
    on its version."""
    v2 = MOVE_V2.replace("name: first-wait", "name: a").replace("name: second-wait", "name: b")
    kit = RuleKit.from_yaml(MOVE_V1)
    kit.send("customer_signed_up", "c1")
    kit.advance(hours=2)
    kit.deploy(v2)
    kit.advance(days=4)
    assert sends(kit, "c1") == [("day1", 1, 24.0), ("day3", 1, 72.0)]


def test_a_wait_deadline_survives_a_move() -> None:
    """A flow moved while waiting keeps the deadline its old wait set."""
    v2 = MOVE_V2.replace(
        "  - wait: 24h\n    name: first-wait", "  - wait: 6h\n    name: first-wait"
    )
    kit = RuleKit.from_yaml(MOVE_V1)
    kit.send("customer_signed_up", "c1")
    kit.advance(hours=2)
    kit.deploy(v2)
    kit.send("customer_signed_up", "c2")
    kit.advance(days=3)
    assert sends(kit, "c1")[0] == ("day1_new", 2, 24.0)
    assert sends(kit, "c2")[0] == ("day1_new", 2, 8.0)


def test_rules_check_wants_every_wait_named_with_on_update_move() -> None:
    text = MOVE_V1.replace("    name: second-wait\n", "")
    with pytest.raises(RuleErrors) as err:
        load_texts([("nurture.yaml", text)])
    [e] = err.value.errors
    assert "on_update: move" in e.message
    assert "give this wait a name" in e.message
    assert (e.path, e.line) == ("nurture.yaml", 10)
    with pytest.raises(RuleErrors) as bad:
        load_texts([("nurture.yaml", MOVE_V1.replace("on_update: move", "on_update: migrate"))])
    assert "on_update" in str(bad.value)


def test_nudge_rules_check_reports_an_unnamed_wait_under_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nurture.yaml"
    path.write_text(MOVE_V1.replace("    name: first-wait\n", ""))
    assert main(["rules", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:7:" in err
    assert "give this wait a name" in err
    path.write_text(MOVE_V1)
    assert main(["rules", "check", str(path)]) == 0


def test_a_flow_whose_version_is_no_longer_kept_ends_at_its_timer() -> None:
    settings = "kind: settings\nversions_kept: 1\n"
    v3 = WELCOME_V2.replace("version: 2", "version: 3").replace("welcome_intro", "welcome_hi")
    kit = RuleKit.from_yaml(settings, WELCOME_V1)
    kit.send("customer_signed_up", "v1-flow")
    kit.advance(hours=1)
    kit.deploy(settings, WELCOME_V2)
    kit.send("customer_signed_up", "v2-flow")
    kit.advance(hours=1)
    rs = kit.deploy(settings, v3)
    assert [r.version for r in rs.retired["welcome"]] == [2]  # version 1 dropped
    kit.advance(days=6)
    assert sends(kit, "v1-flow") == []
    assert kit.state("v1-flow").flows is None
    assert [v for _, v, _ in sends(kit, "v2-flow")] == [2, 2, 2]


def test_rolling_back_keeps_both_versions_running() -> None:
    """Deploying version 1 again (what a rollback does): version-2 flows finish on 2,
    version-1 flows (entered before) on 1, new entries take 1."""
    kit = RuleKit.from_yaml(WELCOME_V1)
    kit.send("customer_signed_up", "a")
    kit.advance(hours=1)
    kit.deploy(WELCOME_V2)
    kit.send("customer_signed_up", "b")
    kit.advance(hours=1)
    rs = kit.deploy(WELCOME_V1)
    assert [r.version for r in rs.retired["welcome"]] == [2]
    kit.send("customer_signed_up", "c")
    kit.advance(days=6)
    assert [v for _, v, _ in sends(kit, "a")] == [1, 1]
    assert [v for _, v, _ in sends(kit, "b")] == [2, 2, 2]
    assert sends(kit, "c") == [("welcome_day1", 1, 26.0), ("welcome_day3", 1, 74.0)]


def test_the_archive_reloads_to_the_same_versions() -> None:
    """What a restart does: the stored files and archive give the same kept versions,
    and the history of a stored record (parsed, not compiled) is the running set's."""
    first = load_texts([("w.yaml", WELCOME_V1)])
    second = load_texts([("w.yaml", WELCOME_V2)], first.history())
    third = load_texts(
        [("w.yaml", WELCOME_V2.replace("version: 2", "version: 3"))], second.history()
    )
    assert [r.version for r in third.retired["welcome"]] == [2, 1]
    again = load_texts([("w.yaml", WELCOME_V2.replace("version: 2", "version: 3"))], third.archive)
    assert again.archive == third.archive
    assert [r.ops for r in again.retired["welcome"]] == [r.ops for r in third.retired["welcome"]]
    stored = history_of([("w.yaml", WELCOME_V2.replace("version: 2", "version: 3"))], third.archive)
    assert stored == third.history()
