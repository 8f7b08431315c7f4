"""Clock changes (issue 22, item 4): ``wait: {until: HH:MM}`` and quiet-hour ends on the
nights the clocks move, in four zones (a 30-minute shift on Lord Howe Island), both
transitions. The rule (engine/localtime.py, docs/semantics.md): on a night the clocks skip
HH:MM it comes at the jump, the first valid local time after the gap; on a night it
happens twice, the first time only. Scenarios under the virtual clock, with the negative
cases (ordinary days unchanged; no second send in the repeated hour; no day's delay)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.localtime import in_range, local_instant, next_local
from engine.testing import RuleKit
from load_tests.oracle_recipes import in_local_window, next_local_time

NY, PARIS, SYDNEY, LORD_HOWE = (
    "America/New_York",
    "Europe/Paris",
    "Australia/Sydney",
    "Australia/Lord_Howe",
)
MIN = 60_000
HOUR = 60 * MIN


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def hm(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


# (zone, local date, HH:MM, when it comes) on each zone's two 2026 clock changes
NIGHTS = [
    # spring forward: the time does not exist; it comes at the jump
    (NY, date(2026, 3, 8), "02:30", "2026-03-08T03:00:00-04:00"),  # 02:00 -> 03:00
    (PARIS, date(2026, 3, 29), "02:30", "2026-03-29T03:00:00+02:00"),  # 02:00 -> 03:00
    (SYDNEY, date(2026, 10, 4), "02:30", "2026-10-04T03:00:00+11:00"),  # 02:00 -> 03:00
    (LORD_HOWE, date(2026, 10, 4), "02:15", "2026-10-04T02:30:00+11:00"),  # 02:00 -> 02:30
    # fall back: the time happens twice; the first one (summer time's offset)
    (NY, date(2026, 11, 1), "01:30", "2026-11-01T01:30:00-04:00"),  # 02:00 -> 01:00
    (PARIS, date(2026, 10, 25), "02:30", "2026-10-25T02:30:00+02:00"),  # 03:00 -> 02:00
    (SYDNEY, date(2026, 4, 5), "02:30", "2026-04-05T02:30:00+11:00"),  # 03:00 -> 02:00
    (LORD_HOWE, date(2026, 4, 5), "01:45", "2026-04-05T01:45:00+11:00"),  # 02:00 -> 01:30
]


@pytest.mark.parametrize(("tz", "day", "at", "expected"), NIGHTS)
def test_the_instant_of_a_local_time_on_a_clock_change_night(
    tz: str, day: date, at: str, expected: str
) -> None:
    assert local_instant(day, hm(at), tz) == utc(expected)
    # waiting from the evening before, and from just before it, lands there
    eve = datetime.combine(day - timedelta(days=1), time(20), tzinfo=ZoneInfo(tz))
    evening = int(eve.timestamp() * 1000)
    assert next_local(evening, tz, hm(at)) == utc(expected)
    assert next_local(utc(expected) - 1, tz, hm(at)) == utc(expected)
    # negative: the dates either side are ordinary, the wall time exactly
    for other in (day - timedelta(days=1), day + timedelta(days=1)):
        got = datetime.fromtimestamp(local_instant(other, hm(at), tz) / 1000, UTC)
        assert got.astimezone(ZoneInfo(tz)).strftime("%H:%M") == at
    # the oracle (written separately from docs/semantics.md) agrees
    assert next_local_time(evening, tz, hm(at)) == utc(expected)


@pytest.mark.parametrize(
    ("tz", "first", "second", "next_day"),
    [
        # NY 01:30 happens at 05:30Z (EDT) and 06:30Z (EST): a wait begun between them
        (NY, "2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z", "2026-11-02T06:30:00Z"),
        (PARIS, "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z", "2026-10-26T01:30:00Z"),
        (SYDNEY, "2026-04-04T15:30:00Z", "2026-04-04T16:30:00Z", "2026-04-05T16:30:00Z"),
        (LORD_HOWE, "2026-04-04T14:45:00Z", "2026-04-04T15:15:00Z", "2026-04-05T15:15:00Z"),
    ],
)
def test_the_second_occurrence_is_not_an_instant(
    tz: str, first: str, second: str, next_day: str
) -> None:
    at = datetime.fromtimestamp(utc(first) / 1000, ZoneInfo(tz))
    minute = at.hour * 60 + at.minute
    between = utc(first) + 5 * MIN
    assert next_local(between, tz, minute) == utc(next_day)
    assert next_local(between, tz, minute) != utc(second)
    assert next_local_time(between, tz, minute) == utc(next_day)


# --- scenarios under the virtual clock ------------------------------------------------
WAIT_RULE = """\
id: night
trigger: {event: nightly}
steps:
  - wait: {until: "AT"}
  - send: {channel: webhook, template: t}
  - wait: {until: "AT"}
  - send: {channel: webhook, template: t2}
"""


@pytest.mark.parametrize(("tz", "day", "at", "expected"), NIGHTS)
def test_wait_until_across_the_clock_change(tz: str, day: date, at: str, expected: str) -> None:
    start = utc(f"{day - timedelta(days=1)}T12:00:00+00:00")
    kit = RuleKit.from_yaml(WAIT_RULE.replace("AT", at), start=start)
    kit.send("nightly", "c1", {}, context={"timezone": tz})
    kit.advance(days=3)
    first, second = kit.sent("night")
    assert first.fire_at == utc(expected)
    # the next night is ordinary: HH:MM exactly, a day (give or take the change) later
    nxt = datetime.fromtimestamp(second.fire_at / 1000, ZoneInfo(tz))
    assert nxt.strftime("%H:%M") == at
    assert nxt.date() == day + timedelta(days=1)
    assert 22 * HOUR <= second.fire_at - first.fire_at <= 26 * HOUR


QUIET_RULE = """\
id: q
trigger: {event: ping}
limits: {quiet_hours: "SPAN"}
steps:
  - send: {channel: email, template: t}
"""


@pytest.mark.parametrize(
    ("tz", "span", "sent_at", "expected"),
    [
        # the quiet hours end at a time the clocks skip: the send goes at the jump
        (NY, "21:00-02:30", "2026-03-07T23:00:00-05:00", "2026-03-08T03:00:00-04:00"),
        (PARIS, "22:00-02:30", "2026-03-28T23:00:00+01:00", "2026-03-29T03:00:00+02:00"),
        (SYDNEY, "22:00-02:30", "2026-10-03T23:00:00+10:00", "2026-10-04T03:00:00+11:00"),
        (LORD_HOWE, "22:00-02:15", "2026-10-03T23:00:00+10:30", "2026-10-04T02:30:00+11:00"),
        # ... at a time that happens twice: at the first
        (NY, "21:00-01:30", "2026-10-31T23:00:00-04:00", "2026-11-01T01:30:00-04:00"),
        (PARIS, "22:00-02:30", "2026-10-24T23:00:00+02:00", "2026-10-25T02:30:00+02:00"),
        (SYDNEY, "22:00-02:30", "2026-04-04T23:00:00+11:00", "2026-04-05T02:30:00+11:00"),
        (LORD_HOWE, "22:00-01:45", "2026-04-04T23:00:00+11:00", "2026-04-05T01:45:00+11:00"),
        # the repeated hour after the quiet hours ended is not quiet again: sent at once
        # (by the wall clock alone, 01:10 < 01:30 would have held it until the next night)
        (NY, "21:00-01:30", "2026-11-01T01:10:00-05:00", "2026-11-01T01:10:00-05:00"),
        (LORD_HOWE, "21:00-01:45", "2026-04-05T01:35:00+10:30", "2026-04-05T01:35:00+10:30"),
        # the repeated hour inside quiet hours stays quiet until the end
        (NY, "01:00-01:45", "2026-11-01T01:50:00-04:00", "2026-11-01T01:50:00-04:00"),
        (NY, "00:30-06:00", "2026-11-01T01:15:00-05:00", "2026-11-01T06:00:00-05:00"),
        # negative: an ordinary night, an ordinary end
        (NY, "21:00-02:30", "2026-03-14T23:00:00-04:00", "2026-03-15T02:30:00-04:00"),
        (NY, "21:00-01:30", "2026-11-07T23:00:00-05:00", "2026-11-08T01:30:00-05:00"),
    ],
)
def test_quiet_hours_ending_across_the_clock_change(
    tz: str, span: str, sent_at: str, expected: str
) -> None:
    kit = RuleKit.from_yaml(QUIET_RULE.replace("SPAN", span), start=utc(sent_at))
    kit.send("ping", "c1", {}, context={"timezone": tz})
    kit.advance(days=2)
    [action] = kit.sent("q")
    assert action.fire_at == utc(expected)


# --- the engine and the oracle, densely around every change ---------------------------
CHANGES = [
    (NY, "2026-03-08T07:00:00Z"),
    (NY, "2026-11-01T06:00:00Z"),
    (PARIS, "2026-03-29T01:00:00Z"),
    (PARIS, "2026-10-25T01:00:00Z"),
    (SYDNEY, "2026-04-04T16:00:00Z"),
    (SYDNEY, "2026-10-03T16:00:00Z"),
    (LORD_HOWE, "2026-04-04T15:00:00Z"),
    (LORD_HOWE, "2026-10-03T15:30:00Z"),
]
MINUTES = [hm(x) for x in ("00:30", "01:00", "01:15", "01:30", "01:45", "02:00", "02:10")]
MINUTES += [hm(x) for x in ("02:15", "02:30", "02:45", "03:00", "03:30", "09:00", "21:00")]
WINDOW_ENDS = [hm(x) for x in ("01:30", "02:00", "02:15", "02:30", "03:00", "21:00")]


@pytest.mark.parametrize(("tz", "change"), CHANGES)
def test_engine_and_oracle_agree_around_each_change(tz: str, change: str) -> None:
    """Every 5 minutes from 28 h before to 28 h after the change, each time of day above
    as a wait target, and every 15 minutes each pair of window ends as quiet hours: the
    engine's localtime and the oracle's (load_tests/oracle_recipes.py, derived
    separately from docs/semantics.md) give the same instants."""
    t0 = utc(change)
    for ms in range(t0 - 28 * HOUR, t0 + 28 * HOUR + 1, 5 * MIN):
        for m in MINUTES:
            assert next_local(ms, tz, m) == next_local_time(ms, tz, m), (ms, m)
        if ms % (15 * MIN):
            continue
        for a in WINDOW_ENDS:
            for b in WINDOW_ENDS:
                assert in_range(ms, tz, (a, b)) == in_local_window(ms, tz, a, b), (ms, a, b)


def test_ordinary_days_are_the_wall_clock() -> None:
    """Negative control: away from a change, a quiet window is the wall clock's."""
    ms = utc("2026-01-10T22:30:00+01:00")
    assert in_range(ms, PARIS, (hm("21:00"), hm("09:00")))
    assert not in_range(ms, PARIS, (hm("09:00"), hm("21:00")))
    assert not in_range(ms, PARIS, (hm("10:00"), hm("10:00")))  # empty
    assert next_local(ms, PARIS, hm("09:00")) == utc("2026-01-11T09:00:00+01:00")
