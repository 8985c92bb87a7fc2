"""Cron expressions: cron's weekday numbers, seconds, and the ticks a run stands for."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pipeline.cron import cron_trigger, latest_tick, ticks_between, weekdays

UTC = timezone.utc


@pytest.mark.parametrize("field, names", [
    ("*", "*"),
    ("0", "sun"), ("7", "sun"), ("1", "mon"), ("1-5", "mon,tue,wed,thu,fri"),
    ("0,6", "sun,sat"), ("*/2", "sun,tue,thu,sat"), ("1/3", "mon,thu"), ("mon-wed", "mon,tue,wed"),
    ("sat,SUN", "sun,sat"), ("5-7", "sun,fri,sat"),
])
def test_weekdays_keep_crons_meaning(field, names):
    assert weekdays(field) == names


@pytest.mark.parametrize("field", ["8", "5-1", "*/0", "funday"])
def test_bad_weekdays(field):
    with pytest.raises(ValueError):
        weekdays(field)


def test_monday_means_monday():
    trigger = cron_trigger("0 3 * * 1")
    fire = trigger.get_next_fire_time(None, datetime(2026, 11, 25, tzinfo=UTC))  # a Wednesday
    assert fire == datetime(2026, 11, 30, 3, 0, tzinfo=UTC) and fire.strftime("%A") == "Monday"


def test_time_zone_and_seconds():
    paris = cron_trigger("0 3 * * *", "Europe/Paris").get_next_fire_time(None, datetime(2026, 7, 1, tzinfo=UTC))
    assert paris.astimezone(UTC) == datetime(2026, 7, 1, 1, 0, tzinfo=UTC)
    ticks = ticks_between(cron_trigger("*/15 * * * * *"), datetime(2026, 1, 1, tzinfo=UTC),
                          datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    assert [t.second for t in ticks] == [15, 30, 45, 0] and ticks[-1].minute == 1
    with pytest.raises(ValueError, match="expected 5 fields"):
        cron_trigger("* * *")


def test_latest_tick_is_the_one_due_now():
    trigger = cron_trigger("0 * * * *")
    now = datetime(2026, 1, 1, 5, 0, 42, tzinfo=UTC)
    assert latest_tick(trigger, now, timedelta(minutes=5)) == datetime(2026, 1, 1, 5, 0, tzinfo=UTC)
    assert latest_tick(trigger, now + timedelta(minutes=10), timedelta(minutes=5)) is None


@pytest.mark.parametrize("expression, expected", [
    ("0 * * * *", ["23:00", "00:00", "01:00", "02:00", "03:00"]),  # 02:00 local comes twice (00:00, 01:00 UTC)
    ("30 2 * * *", ["00:30", "01:30"]),
])
def test_ticks_across_the_autumn_clock_change_go_forward(expression, expected):
    """On the night clocks go back, a local time comes twice; listing the ticks past it must go on in time, not
    step back to its first occurrence and list the same ticks until the limit."""
    trigger = cron_trigger(expression, "Europe/Berlin")
    found = ticks_between(trigger, datetime(2026, 10, 24, 22, 30, tzinfo=UTC), datetime(2026, 10, 25, 3, tzinfo=UTC))
    assert [t.astimezone(UTC).strftime("%H:%M") for t in found] == expected
    assert all(a.astimezone(UTC) < b.astimezone(UTC) for a, b in zip(found, found[1:]))
