"""Experiment variants override a named step's params: templates in an override are CEL
evaluated like the step's own, and a variant's value (static or not) replaces the step's."""

from __future__ import annotations

import pytest

from engine.processor import assign_variant
from engine.testing import RuleKit
from rules.exceptions import RuleErrors

RULE = """\
id: promo
trigger: {event: cart_item_added}
steps:
  - name: offer
    send:
      channel: webhook
      template: offer
      params: {value: "{{ cart.value }}", code: "{{ trigger.product_id }}", fixed: 1}
experiment:
  variants:
    a: 50
    b:
      weight: 50
      steps:
        offer:
          params: {value: "{{ cart.value * 2.0 }}", code: STATIC, extra: "{{ cart.items }}"}
"""


def _customer_in(kit: RuleKit, arm: str) -> str:
    rule = kit.driver.processor.ruleset.rules["promo"]
    return next(c for c in (f"c{i}" for i in range(1000)) if assign_variant(c, rule) == arm)


@pytest.mark.parametrize(
    ("arm", "params"),
    [
        ("a", {"value": 10.0, "code": "p1", "fixed": 1}),
        ("b", {"value": 20.0, "code": "STATIC", "fixed": 1, "extra": 1}),
    ],
)
def test_variant_params_are_evaluated_and_win(arm: str, params: dict[str, object]) -> None:
    kit = RuleKit.from_yaml(RULE)
    cid = _customer_in(kit, arm)
    kit.send("cart_item_added", cid, {"product_id": "p1", "price": 10.0})
    [a] = kit.sent("promo")
    assert (a.variant, a.params) == (arm, params)


def test_a_bad_expression_in_a_variant_names_its_place() -> None:
    with pytest.raises(RuleErrors) as err:
        RuleKit.from_yaml(RULE.replace("cart.value * 2.0", "cart.value *"))
    [e] = err.value.errors
    assert "expression" in e.message
    assert e.line == 16  # the variant's params line
