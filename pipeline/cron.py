"""Cron expressions as APScheduler triggers, and the ticks they stand for.

APScheduler 3 numbers weekdays from 0 = Monday, cron from 0 = Sunday (its own
documentation warns of it); job files use cron's meaning, so weekday fields are
turned into day names here before APScheduler sees them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import islice
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from pipeline.jobspec import Job

DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _day(token: str) -> int:
    token = token.strip().lower()
    if token[:3] in DAYS and not token.isdigit():
        return DAYS.index(token[:3])
    value = int(token)
    if not 0 <= value <= 7:
        raise ValueError(f"day of week {value} is not in 0-7")
    return value


def weekdays(field: str) -> str:
    """cron's day-of-week field (0 or 7 = Sunday; names, ranges, lists, steps) as APScheduler day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"step {step} in {field!r}")
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            low, high = (_day(t) for t in span.split("-", 1))
        else:
            low = _day(span)
            high = 6 if step_text else low
        if high < low:
            raise ValueError(f"range {span!r} runs backwards")
        days.update(d % 7 for d in range(low, high + 1, step))
    return ",".join(DAYS[d] for d in sorted(days))


def cron_trigger(expression: str, timezone: str = "UTC") -> Any:
    """An APScheduler CronTrigger for a 5-field cron expression (or 6 fields, seconds first).

    Raises:
        ValueError: the expression does not parse.
    """
    from apscheduler.triggers.cron import CronTrigger

    fields = expression.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), or 6 with seconds first; "
                         f"got {len(fields)}")
    second, minute, hour, day, month, dow = fields
    return CronTrigger(second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekdays(dow),
                       timezone=timezone)


def ticks_between(trigger: Any, after: datetime, until: datetime, limit: int = 1000) -> list[datetime]:
    """The trigger's fire times in (after, until], oldest first, at most ``limit``."""
    return list(islice(iter_ticks(trigger, after, until), limit))


def iter_ticks(trigger: Any, after: datetime, until: datetime) -> Iterator[datetime]:
    """The trigger's fire times in (after, until], oldest first, one at a time: a gap may hold millions.

    The next one is looked for from the previous one in UTC: Python adds to a local time on the wall clock, which
    on the night clocks go back takes the second 02:30 back to the first, and the list round in a loop.
    """
    current = trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
    while current is not None and current <= until:
        yield current
        previous = current.astimezone(timezone.utc)
        current = trigger.get_next_fire_time(previous, previous + timedelta(microseconds=1))


def latest_tick(trigger: Any, now: datetime, within: timedelta) -> datetime | None:
    """The newest fire time in (now - within, now]: the tick a run starting now stands for."""
    ticks = ticks_between(trigger, now - within, now)
    return ticks[-1] if ticks else None


def next_tick(job: Job, now: datetime | None = None) -> datetime | None:
    """When the job's schedule fires next (None without a schedule)."""
    if not job.schedule:
        return None
    return cron_trigger(job.schedule, job.timezone).get_next_fire_time(None, now or datetime.now(timezone.utc))
