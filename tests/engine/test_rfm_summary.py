"""RFM builder summaries (RfmBuilder.to_bytes / from_bytes): what the distributed runtime
publishes per partition. Builders of any split of a base, serialised and merged, build
the boundaries of one builder over the whole base: exact and sketched."""

from __future__ import annotations

import random

import pytest

from engine.intelligence.rfm import DAY_MS, RfmBuilder, SummaryError
from state.customer import CustomerState

NOW = 1_790_000_000_000


def base(n: int, seed: int = 7) -> list[CustomerState]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        st = CustomerState(f"c{i}", NOW - 900 * DAY_MS, NOW)
        if rnd.random() < 0.9:
            st.orders = rnd.choice([1, 1, 1, 2, 3, 5, 9])
            st.revenue = round(rnd.lognormvariate(4, 1.2), 2) * (-1 if rnd.random() < 0.01 else 1)
            st.first_order = NOW - 800 * DAY_MS
            st.last_order = NOW - rnd.randint(0, 700) * DAY_MS - rnd.randint(0, DAY_MS)
        out.append(st)
    return out


def whole(states: list[CustomerState], exact_limit: int) -> RfmBuilder:
    b = RfmBuilder(exact_limit=exact_limit)
    for st in states:
        b.add(st, NOW)
    return b


@pytest.mark.parametrize(("exact_limit", "sketch"), [(50_000, False), (300, False), (300, True)])
def test_split_serialised_merged_equals_whole(exact_limit: int, sketch: bool) -> None:
    states = base(1000)
    expected = whole(states, exact_limit).build(NOW)
    parts = [RfmBuilder(exact_limit=exact_limit) for _ in range(5)]
    for st in states:
        parts[hash(st.customer_id) % 5].add(st, NOW)
    raws = [p.to_bytes(sketch=sketch) for p in parts]
    for order in (raws, raws[::-1]):
        merged = RfmBuilder(exact_limit=exact_limit)
        for raw in order:
            merged.merge(RfmBuilder.from_bytes(raw))
        got = merged.build(NOW)
        assert got == expected
    assert expected.exact == (exact_limit == 50_000)  # both paths exercised


def test_round_trip_keeps_an_exact_builder_exact() -> None:
    b = whole(base(200), 50_000)
    back = RfmBuilder.from_bytes(b.to_bytes())
    assert back.exact
    assert len(back) == len(b)
    assert back.build(NOW) == b.build(NOW)
    sketched = RfmBuilder.from_bytes(b.to_bytes(sketch=True))
    assert not sketched.exact
    assert len(sketched) == len(b)


def test_empty_and_bad_summaries() -> None:
    empty = RfmBuilder.from_bytes(RfmBuilder().to_bytes())
    assert len(empty) == 0
    assert empty.build(NOW).customers == 0
    with pytest.raises(SummaryError):
        RfmBuilder.from_bytes(b"not msgpack")
