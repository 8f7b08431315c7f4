"""`nudge rules check` rejects a field that does not exist (issue 22, item 6): an expression
reading ``customer.rfm_score`` or ``cart.valu`` evaluated false at run time and the rule
never sent, silently. Errors carry file:line:col; free-form maps stay free-form."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst

from engine.cli import main
from engine.intelligence.clv import Predictions
from engine.intelligence.rfm import Rfm
from engine.profile import CUSTOMER_FIELDS
from engine.scope import RuleScope
from engine.testing import make_event
from rules.exceptions import RuleErrors
from rules.expressions import Expression, ExpressionError
from rules.fields import (
    CART,
    CHANNELS,
    CUSTOMER,
    EVENT,
    PREDICTED,
    RFM,
    selections,
)
from rules.ruleset import load_texts
from rules.spec import Channel
from state.customer import CustomerState

RULE = """\
id: r
trigger: {event: cart_item_added}
when: "WHEN"
steps:
  - send: {channel: email, template: t}
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    f = tmp_path / "rule.yaml"
    f.write_text(text)
    rc = main(["rules", "check", str(f)])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, [line.replace(str(f), "F") for line in err]


# --- the shapes are the code's -------------------------------------------------------
def test_the_shapes_match_the_variables_the_engine_builds() -> None:
    assert set(CUSTOMER) == set(CUSTOMER_FIELDS)
    st = CustomerState("c", 0, 0)
    scope = RuleScope(st, 0, {})
    assert set(CART) == set(scope.variable("cart"))
    ev = make_event("x", "c", 0)
    assert set(EVENT) == set(RuleScope(st, 0, {}, event=ev).variable("event"))
    assert set(RFM) == set(Rfm(1, 2, 3, "123", "lost").to_dict())
    assert set(PREDICTED) == set(Predictions(0.5, 1.0, 2.0, None, 0.5).to_dict())
    assert set(CHANNELS) == set(typing.get_args(Channel))


# --- the examples, with positions -------------------------------------------
@pytest.mark.parametrize(
    ("when", "col", "message"),
    [
        ("customer.rfm_score >= 3", 17, "customer has no field 'rfm_score'"),
        ("cart.valu > 20.0", 13, "cart has no field 'valu'; did you mean 'value'?"),
        ("customer.nosuchfield == 1", 17, "customer has no field 'nosuchfield'"),
        ("has(customer.nosuchfield)", 21, "customer has no field 'nosuchfield'"),
        ("customer.rfm.grop == 'lost'", 21, "customer.rfm has no field 'grop'"),
        ("customer.predicted.p_alvie < 0.5", 27, "did you mean 'p_alive'?"),
        ("customer.consent.emial", 25, "customer.consent has no field 'emial'"),
        ("customer.orders.count > 1", 24, "customer.orders has no fields ('count')"),
        ("event.typ == 'x'", 14, "event has no field 'typ'; did you mean 'type'?"),
        ("cart.value > 0.0 && cart.prodcts.size() > 0", 33, "cart has no field 'prodcts'"),
    ],
)
def test_unknown_fields_are_rejected_with_file_line_col(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], when: str, col: int, message: str
) -> None:
    rc, lines = check(tmp_path, RULE.replace("WHEN", when), capsys)
    assert rc == 1
    assert lines[0].startswith(f"F:3:{col}: expression: "), lines
    assert message in lines[0]
    assert lines[-1].endswith("rule set rejected")


def test_every_unknown_field_of_a_rule_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """\
id: r
trigger: {event: order_completed, filter: "event.propertes.total > 0.0"}
when: "customer.rfm_score > 3 && cart.valu > 1.0"
exit_on:
  - {event: cart_item_added, filter: "event.timestmp > 0"}
steps:
  - if: |
      customer.orders > 1 &&
        customer.lvt > 10.0
    send: {channel: email, template: t, params: {v: "{{  cart.vale }}"}}
"""
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    where = [line.split(": expression")[0] for line in lines[:-1]]
    # the block scalar's 2nd line is file line 9; its column is within the line's text
    assert where == ["F:2:50", "F:3:17", "F:3:39", "F:5:45", "F:9:12", "F:10:63"], lines


def test_event_in_a_step_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = RULE.replace('when: "WHEN"\n', "").replace(
        "template: t}", 'template: t, params: {p: "{{ event.properties.price }}"}}'
    )
    rc, lines = check(tmp_path, text, capsys)
    assert rc == 1
    assert lines[0].startswith("F:4:57: expression: 'event' is only available in trigger"), lines


# --- what stays allowed (the negative cases) ------------------------------------------
@pytest.mark.parametrize(
    "when",
    [
        "customer.attributes.vip_tier == 'gold'",  # attributes are free-form
        "customer.attributes.address.city == 'Paris'",
        "has(customer.attributes.nosuch)",
        "event.properties.coupon == 'X'",  # storefront properties are free-form
        "event.context.locale == 'fr-FR'",
        "'vip' in customer.segments",
        "customer.rfm != null && customer.rfm.group == 'lost'",
        "customer.predicted != null && customer.predicted.days_to_next_order < 7.0",
        "customer.consent.email && customer.consent.webhook",
        "cart.value > 1.0 && 'cart.valu' != '' && \"customer.x\" != ''",  # strings
        "cart.value > 1.0 // cart.valu in a comment\n",
        "[1, 2].exists(cart, cart > 1)",  # a macro binding the name: not the variable
        "cart.items > 0 && size(cart.products) > 0 && cart.updated_at > 0",
        "event.type == 'cart_item_added' && event.timestamp > 0",
    ],
)
def test_valid_selections_pass(when: str) -> None:
    rs = load_texts([("r.yaml", RULE.replace("WHEN", when.replace('"', '\\"')))])
    assert "r" in rs.rules


def test_stock_rule_files_pass(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["rules", "check", "rules/recipes", "rules/segments", "rules/intelligence"])
    assert rc == 0, capsys.readouterr().err


def test_a_channel_named_in_the_settings_is_a_known_consent_field() -> None:
    rule = RULE.replace("WHEN", "customer.consent.whatsapp")
    with pytest.raises(RuleErrors, match=r"customer\.consent has no field 'whatsapp'"):
        load_texts([("r.yaml", rule)])
    settings = "kind: settings\ndefault_consent: {email: true, whatsapp: false}\n"
    assert "r" in load_texts([("r.yaml", rule), ("settings.yaml", settings)]).rules


# --- trigger and event properties where Nudge defines them --------------------------
VIP = 'kind: segment\nid: vip\ncondition: "customer.ltv >= 500.0"\n'
SEGMENT_RULE = """\
id: s
trigger: {segment_entered: vip, filter: "FILTER"}
steps:
  - send: {channel: webhook, template: t, params: {seg: "{{ trigger.PROP }}"}}
"""


def test_segment_trigger_properties_are_known() -> None:
    ok = SEGMENT_RULE.replace("FILTER", "event.properties.segment == 'vip'")
    assert "s" in load_texts([("s.yaml", ok.replace("PROP", "segment")), ("v.yaml", VIP)]).rules
    bad = ok.replace("PROP", "segmnt").replace(".segment ==", ".sgm ==")
    with pytest.raises(RuleErrors) as info:
        load_texts([("s.yaml", bad), ("v.yaml", VIP)])
    messages = [e.message for e in info.value.errors]
    assert any("event.properties has no property 'sgm'" in m for m in messages), messages
    assert any("trigger has no property 'segmnt'; did you mean 'segment'" in m for m in messages)


def test_storefront_and_custom_trigger_properties_stay_free_form() -> None:
    rule = """\
id: g
trigger: {event: TYPE}
steps:
  - send: {channel: webhook, template: t, params: {x: "{{ trigger.anything_at_all }}"}}
"""
    for etype in ("order_completed", "gift_sent"):
        assert "g" in load_texts([("g.yaml", rule.replace("TYPE", etype))]).rules


def test_a_segment_condition_with_an_unknown_field_is_rejected() -> None:
    seg = 'kind: segment\nid: big\ncondition: "customer.rfm_score >= 4"\n'
    with pytest.raises(RuleErrors, match="customer has no field 'rfm_score'"):
        load_texts([("seg.yaml", seg)])


# --- the lexer --------------------------------------------------------------------------
def test_selections_lexer() -> None:
    roots = frozenset({"customer", "cart"})
    found = selections("customer.a.b + x.customer.c + cart . value + f(cart.items)", roots)
    assert [(s.root, [f for f, _ in s.fields]) for s in found] == [
        ("customer", ["a", "b"]),
        ("cart", ["value"]),
        ("cart", ["items"]),
    ]
    # a method call ends the chain; an index too; r'' and triple-quoted strings are skipped
    found = selections("cart.products.exists(p, p == 'x') && r'cart.q' != '''cart.z'''", roots)
    assert [[f for f, _ in s.fields] for s in found] == [["products"]]
    assert selections("customer['rfm_score']", roots) == []


def test_an_expression_error_knows_its_line() -> None:
    with pytest.raises(ExpressionError) as info:
        Expression("customer.orders > 1 &&\n  cart.valu > 2.0")
    assert (info.value.line, info.value.column) == (2, 8)


# --- at run time: what the check prevents ---------------------------------------------
def test_the_rejected_selection_fails_at_run_time() -> None:
    """Why it matters: the same selection evaluated by CEL is a "no such key" error,
    which the engine counts as false: the rule would never have sent."""
    import cel

    st = CustomerState("c1", 0, 0)
    st.cart = {"p": [1.0, 30.0]}
    cart = RuleScope(st, 0, {}).variable("cart")
    assert cel.compile("cart.value > 20.0").execute({"cart": cart}) is True
    with pytest.raises((KeyError, RuntimeError, TypeError, ValueError)):
        cel.compile("cart.valu > 20.0").execute({"cart": cart})


def test_comprehension_macros_compile_and_run() -> None:
    """CEL expands exists/all/map/filter, so their loop names came back as unknown
    variables and every such rule was refused; a name used outside one still is."""
    from engine.testing import RuleKit

    rule = RULE.replace("WHEN", "cart.products.exists(p, p.startsWith('sku-'))")
    kit = RuleKit.from_yaml(rule)
    kit.send("cart_item_added", "c1", {"product_id": "sku-1", "price": 5.0})
    kit.send("cart_item_added", "c2", {"product_id": "gift", "price": 5.0})
    assert [a.customer_id for a in kit.sent("r")] == ["c1"]
    for source in ("[1, 2].all(x, x > 0)", "size(cart.products.filter(p, p != '')) > 0"):
        Expression(source)
    with pytest.raises(ExpressionError, match="unknown variable 'q'") as info:
        Expression("cart.value > 1.0 && cart.products.exists(p, q == p)")
    assert info.value.column == 45


# --- property: the check rejects exactly what fails at run time -----------------------
_NAMES = sorted({*CUSTOMER, *CART, *CHANNELS, "valu", "rfm_score", "nosuch", "x", "email"})


@given(
    root=hst.sampled_from(["customer", "cart"]),
    path=hst.lists(hst.sampled_from(_NAMES), min_size=1, max_size=3),
)
@settings(max_examples=300, deadline=None)
def test_a_selection_is_refused_iff_it_fails_at_run_time(root: str, path: list[str]) -> None:
    """Over a customer with every map filled (consent for each channel, attributes,
    segments; rfm and predicted are null without a population, so they are left out), a
    bare selection in a rule's ``when`` loads iff CEL finds every key (free-form maps
    aside)."""
    import cel

    if "rfm" in path or "predicted" in path:
        return
    source = ".".join([root, *path])
    state = CustomerState("c1", 1, 2)
    state.cart = {"p": [1.0, 3.0]}
    state.attributes = {name: {"x": 1} for name in _NAMES}
    state.segments = dict.fromkeys(_NAMES, 1)
    scope = RuleScope(state, 0, dict.fromkeys(CHANNELS, True))
    try:
        load_texts([("r.yaml", RULE.replace("WHEN", source))])
        refused = False
    except RuleErrors:
        refused = True
    ctx = {root: scope.variable(root)}
    try:
        cel.compile(source).execute(ctx)
        fails = False
    except (KeyError, RuntimeError, TypeError, ValueError):
        fails = True
    if refused:
        assert fails, source
    elif fails:  # only through a free-form map (attributes, segments: any key may exist)
        assert {"attributes", "segments"} & set(path), source
