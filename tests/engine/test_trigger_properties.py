"""What a flow keeps of its trigger event's properties: the keys its rule reads, and only
values a customer state can be stored with."""

from __future__ import annotations

from engine.testing import RuleKit
from state.customer import pack, unpack

WHOLE = """\
id: echo
trigger: {event: gift_sent}
steps:
  - wait: 1h
  - send: {channel: webhook, template: echo, params: {all: "{{ trigger }}"}}
"""


def test_a_flow_keeps_only_the_trigger_keys_its_rule_reads() -> None:
    kit = RuleKit.from_paths()
    kit.send("product_viewed", "c1", {"product_id": "p1", "price": 9.0, "huge": 10**30})
    flow = kit.state("c1").flows["browse-abandonment"]
    assert flow.trigger == {"product_id": "p1"}
    assert unpack(pack(kit.state("c1"))).flows["browse-abandonment"].trigger == flow.trigger
    kit.advance(hours=26)  # past the 2h wait and the quiet hours
    [a] = kit.sent("browse-abandonment")
    assert a.params["product_id"] == "p1"


def test_values_a_state_cannot_hold_are_left_out() -> None:
    """A rule reading the whole map keeps every property, except an integer beyond 64 bits
    (MessagePack cannot hold it: the state could never be checkpointed again)."""
    kit = RuleKit.from_yaml(WHOLE)
    kit.send("gift_sent", "c1", {"to": "c2", "huge": 10**30, "n": [1, -(2**70)]})
    st = kit.state("c1")
    assert st.flows["echo"].trigger == {"to": "c2"}
    pack(st)  # raised OverflowError before
    kit.advance(hours=1)
    [a] = kit.sent("echo")
    assert a.params == {"all": {"to": "c2"}}
