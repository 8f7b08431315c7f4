"""The oracle (load_tests/oracle.py) and ``engine.backtest`` agree on traffic that crosses
clock changes (New York and Paris spring forward, Sydney and Lord Howe fall back inside
the trace; the drain runs through the other transitions of the year) and carries
storefront opt-outs (issue 22, items 4 and 8)."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, datetime

import orjson

from engine.backtest import backtest, write_actions
from load_tests.oracle import oracle_lines
from load_tests.traffic import DST_TIMEZONES, TrafficConfig, generate
from rules.ruleset import load_ruleset

DST_START = int(datetime(2026, 3, 8, tzinfo=UTC).timestamp() * 1000)


def _engine(lines: list[bytes]) -> list[bytes]:
    buf = io.BytesIO()
    write_actions(backtest(load_ruleset(), lines), buf)
    return buf.getvalue().splitlines()


def test_agreement_across_clock_changes_with_storefront_opt_outs() -> None:
    cfg = TrafficConfig(
        customers=800,
        events=30_000,
        seed=7,
        start=DST_START,
        days=31,
        timezones=DST_TIMEZONES,
        unsubscribe_share=0.05,
        late_hours_share=0.1,
    )
    events = list(generate(cfg))
    types = Counter(e["type"] for e in events)
    assert types["email_unsubscribed"] > 50
    assert types["sms_unsubscribed"] > 20
    assert types["email_resubscribed"] > 0
    assert types["email_spam_reported"] > 0
    assert any(e["context"].get("timezone") == "Australia/Lord_Howe" for e in events)
    # the trace itself spans New York's (Mar 8) and Sydney's (Apr 5) clock changes
    times = [datetime.fromisoformat(e["timestamp"]) for e in events]
    assert min(times) < datetime(2026, 3, 8, 7, tzinfo=UTC)
    assert max(times) > datetime(2026, 4, 4, 16, tzinfo=UTC)
    lines = [orjson.dumps(e) for e in events]
    expected = oracle_lines(lines)
    assert _engine(lines) == expected
    assert len(expected) > 3_000


def test_the_opt_outs_change_the_outcome() -> None:
    """Negative control: the same trace with the opt-outs left out sends more (so the
    agreement above is not vacuous about them)."""
    cfg = TrafficConfig(customers=500, events=8_000, seed=3, start=DST_START, unsubscribe_share=0.2)
    lines = [orjson.dumps(e) for e in generate(cfg)]
    kept = [x for x in lines if b"subscribed" not in x and b"spam_reported" not in x]
    assert len(kept) < len(lines)
    with_opt_outs = oracle_lines(lines)
    assert _engine(lines) == with_opt_outs
    assert len(oracle_lines(kept)) > len(with_opt_outs)
