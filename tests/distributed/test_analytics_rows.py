"""What a worker packs onto its changelog rows (engine/distributed/analytics.py
``take_row_counts``): each customer's pending counts on its own row, an erased
customer's on the partition's next row, nothing lost when a write has no row."""

from __future__ import annotations

from collections import Counter

import orjson

from engine.distributed.analytics import take_row_counts
from engine.distributed.storage.counts import unpack_counts
from engine.events import decode_event
from engine.partition import Partition
from rules.ruleset import load_texts
from state.analytics import HOUR_MS, Cell
from tests.support.traces import TIMING_FREE_RULES, make_events


def _unpack(packed: dict[str, bytes]) -> Counter[Cell]:
    out: Counter[Cell] = Counter()
    for body in packed.values():
        out.update(unpack_counts(body))
    return out


def test_counts_ride_on_rows_and_orphans_on_the_next() -> None:
    rs = load_texts(sorted(TIMING_FREE_RULES.items()))
    part = Partition(0, rs, lambda out: None, analytics=True)
    assert part.tally is not None
    evs = [decode_event(orjson.dumps(e)) for e in make_events(40, 1_700_000_000_000, 7)]
    for seq, ev in enumerate(evs, 1):
        part.apply(seq, ev.ts, ev)
    produced = part.tally.totals()
    assert produced
    changes = part.begin()
    packed = take_row_counts(part.tally, changes.dirty, part.states(changes.dirty))
    assert set(packed) <= set(changes.dirty)
    assert _unpack(packed) == produced  # every count on its customer's row
    assert not part.tally.customers()

    # an erased customer's counts: no row of its own, so on the next row written
    more = [decode_event(orjson.dumps(e)) for e in make_events(8, evs[-1].ts + 1, 7, "m")]
    for seq, ev in enumerate(more, 100):
        part.apply(seq, ev.ts, ev)
    before = part.tally.totals()
    assert "c0" in part.tally.customers()  # c0 counted something since its last row
    assert part.erase("c0")
    changes = part.begin()
    assert "c0" in changes.erased
    assert "c0" not in changes.dirty
    packed = take_row_counts(part.tally, changes.dirty, part.states(changes.dirty))
    assert "c0" not in packed
    assert _unpack(packed) == before

    # a write with no row keeps what is pending for the next one
    part.tally.add_counts("c1", HOUR_MS, [(("viewed", 1, "", -1, "entered"), 1)])
    assert take_row_counts(part.tally, [], []) == {}
    assert part.tally.totals() == Counter({("viewed", 1, "", -1, "entered", 1): 1})
