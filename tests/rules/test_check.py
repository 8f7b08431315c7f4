"""`nudge rules check`: every error as file:line:col, non-zero exit, nothing half-loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from rules.exceptions import RuleErrors
from rules.ruleset import load_texts
from rules.schema import SCHEMA_PATH, rule_schema

GOOD = """\
id: ok
trigger: {event: cart_item_added}
steps:
  - send: {channel: email, template: hello}
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    f = tmp_path / "rule.yaml"
    f.write_text(text)
    rc = main(["rules", "check", str(f)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, [line.replace(str(f), "F") for line in err]


def test_stock_recipes_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", "rules/recipes"]) == 0
    assert capsys.readouterr().out.startswith("ok: 8 rule(s)")


def test_yaml_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = check(tmp_path, "id: x\nsteps: [\n  {wait: 4h}\n", capsys)
    assert rc == 1
    assert lines[0].startswith("F:4:1: YAML syntax")


def test_schema_error_points_at_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("channel: email", "channel: fax")
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    assert lines[0].startswith("F:4:21: steps.0.send.channel: Input should be 'email'")


def test_expression_error_column_inside_the_expression(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GOOD.replace("steps:", 'when: "cart.value >= && true"\nsteps:')
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    # the quote is column 7, the expression starts at 8; CEL points at '&&', 15th char
    assert lines[0].startswith("F:3:22: expression: Syntax error"), lines


def test_every_error_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "id: Bad\ntrigger: {event: cart_item_added}\nwhen: 'nope >'\n"
        "steps:\n  - wait: 4x\n  - send: {channel: sms}\n"
    )
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    where = {line.split(": ")[0] for line in lines[:-1]}
    assert {"F:1:5", "F:5:11", "F:6:11", "F:3:14"} <= where, lines
    assert any("steps.1.send.template: Field required" in line for line in lines)
    assert lines[-1].endswith("rule set rejected")


@pytest.mark.parametrize(
    ("snippet", "where", "message"),
    [
        (
            "  - if: \"seen_since('email_opened', 'nope')\"\n    send: {channel: sms, template: t}",
            "F:5:9: ",
            "seen_since(): no step named 'nope'",
        ),
        (
            '  - if: "shoe.size > 3"\n    send: {channel: sms, template: t}',
            "F:5:10: ",
            "unknown variable 'shoe'",
        ),
        (
            "  - if: \"count('order_completed', '2h') > 1\"\n    send: {channel: sms, template: t}",
            "F:5:9: ",
            "window '2h' is not one of",
        ),
    ],
)
def test_compile_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], snippet: str, where: str, message: str
) -> None:
    rc, lines = check(tmp_path, GOOD + snippet + "\n", capsys)
    assert rc == 1
    assert lines[0].startswith(where), lines
    assert message in lines[0]


def test_duplicate_ids_across_files_rejected_whole() -> None:
    with pytest.raises(RuleErrors) as info:
        load_texts([("a.yaml", GOOD), ("b.yaml", GOOD)])
    assert str(info.value.errors[0]).startswith(
        "b.yaml:1:5: duplicate rule id 'ok' (first in a.yaml"
    )


def test_experiment_weights_must_add_up(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, lines = check(tmp_path, GOOD + "experiment: {variants: {a: 50}, holdout: 10}\n", capsys)
    assert rc == 1
    assert "must add up to 100, not 60" in lines[0]


def test_published_schema_is_generated_not_hand_kept() -> None:
    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(json.dumps(rule_schema()))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("cart.value", 42.5),
        ("trigger.product_id", "p9"),
        ("viewed()", ["p1", "p9"]),
        ("customer.consent.sms", False),
        ("cart.value * 2.0", 85.0),
        # only the selected keys are built: same result as CEL on the whole map
        ("customer.orders == 0 && !customer.consent.sms", True),
        ("cart.items == 1 && cart.value > 40.0", True),
        ("trigger.product_id == 'p9' && has(trigger.size)", False),
        ("size(customer) > 3", True),
    ],
)
def test_field_selection_fast_path_matches_cel(source: str, expected: object) -> None:
    import cel

    from engine.scope import RuleScope
    from rules.expressions import Expression
    from state.customer import CustomerState, FlowInstance

    st = CustomerState("c1", 0, 0)
    st.cart = {"p9": [1.0, 42.5]}
    st.viewed = ["p1", "p9"]
    flow = FlowInstance("r", 1, "e1", 0, "default", {"product_id": "p9"})
    scope = RuleScope(st, 0, {"sms": False}, flow=flow)
    expr = Expression(source)
    assert expr.evaluate(scope) == expected
    ctx = {n: scope.variable(n) for n in expr.variables}
    ctx.update({n: scope.function(n) for n in expr.functions})
    assert cel.compile(source).execute(ctx) == expected


@pytest.mark.parametrize(
    ("source", "keys"),
    [
        ("customer.orders == 5", {"orders"}),
        ("customer.ltv >= 500.0 && customer . consent.sms", {"ltv", "consent"}),
        ("has(customer.x)", {"x"}),
        ("customer.orders > size(customer)", None),  # the whole map is used
        ("customer.orders > 1 && 'customer' != ''", None),  # a mention in a string: whole
        ("[1].exists(customer, customer > 0)", None),  # a macro binding the name
    ],
)
def test_selected_keys(source: str, keys: set[str] | None) -> None:
    from rules.expressions import selected_keys

    assert selected_keys(source, "customer") == (None if keys is None else frozenset(keys))


def test_hidden_directories_are_skipped(tmp_path: Path) -> None:
    from rules.loader import rule_files

    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "..2026_11_22").mkdir()
    (tmp_path / "..2026_11_22" / "a.yaml").write_text(GOOD)  # a ConfigMap's second copy
    assert rule_files([str(tmp_path)]) == [tmp_path / "a.yaml"]


def test_flows_record_only_the_event_types_their_rules_ask_about() -> None:
    from engine.testing import RuleKit

    rule = """\
id: r
trigger: {event: cart_item_added}
steps:
  - name: first
    send: {channel: email, template: t1}
  - wait: 1h
  - if: "seen_since('email_opened', 'first') || seen('order_completed')"
    send: {channel: email, template: t2}
"""
    dynamic = rule.replace("id: r", "id: d").replace("'order_completed'", "trigger.kind")
    rs = load_texts([("r.yaml", rule)])
    assert rs.rules["r"].seen_types == {"email_opened", "order_completed"}
    assert rs.seen_rules("email_opened") == ("r",)
    assert rs.seen_rules("page_viewed") == ()
    both = load_texts([("r.yaml", rule), ("d.yaml", dynamic)])
    assert both.rules["d"].seen_types is None  # an argument that is not a literal: every type
    assert both.seen_rules("page_viewed") == ("d",)
    assert set(both.seen_rules("email_opened")) == {"d", "r"}

    kit = RuleKit(rs)
    kit.send("cart_item_added", "c1", {"product_id": "p1", "price": 5.0})
    kit.send("page_viewed", "c1", {})
    kit.send("email_opened", "c1", {})
    inst = kit.state("c1").flows["r"]
    assert set(inst.seen or ()) == {"email_opened"}
    kit.advance(hours=1)
    assert [a.template for a in kit.sent("r")] == ["t1", "t2"]
