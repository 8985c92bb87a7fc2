"""What one run is given, built once and passed down: the job, its database and dialect, the date it stands for,
the caller's options, the clock and the hooks (progress, the run lock's lease)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Callable
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from pipeline.database.dialects import Dialect
from pipeline.database.state import utcnow
from pipeline.jobspec import Job

Clock = Callable[[], datetime]
#: Called as rows are written, with (rows so far, rows expected or None).
Progress = Callable[[int, "int | None"], None]


def today(job: Job, clock: Clock = utcnow) -> date:
    """The default logical date: today in the job's time zone."""
    return clock().astimezone(ZoneInfo(job.timezone)).date()


def _no_lease() -> None:
    """A caller that holds no lease on the run lock has nothing to check."""


@dataclass(frozen=True)
class RunOptions:
    """What the caller asks of a run (the CLI's flags, the scheduler's tick)."""

    #: Flip the pointer to the new version once it passed its audits.
    activate: bool = True
    #: Run even when a ready version already holds this date with the same model and domain.
    force: bool = False
    #: What started the run (manual, schedule, cron, backfill), for the run history.
    trigger: str = "manual"
    #: The cron tick a scheduled run stands for; a tick runs at most once.
    scheduled_for: datetime | None = None
    #: Build the version from the active one, scoring only new and changed keys.
    incremental: bool = False
    #: A full run even where ``incremental`` or the job's ``[domain] incremental`` asks for a top-up.
    full: bool = False


@dataclass
class Tries:
    """A run's tries so far: its record in ``pipeline_runs`` (one across tries) and the faults it tried again
    after; and how many tries may follow the one under way, after a passing fault."""

    run_id: int | None = None
    faults: list[str] = field(default_factory=list)
    left: int = 0
    #: The end of its record (status, time, version, error) while the database would not take it: a caller that
    #: goes on (a backfill's later dates) writes it with :func:`pipeline.run.materialize.write_end` once it can.
    unwritten: tuple[str, datetime, int | None, str | None] | None = None


@dataclass(frozen=True)
class RunContext:
    """One run's job, database and settings, paired once instead of threaded through every step."""

    job: Job
    engine: Engine
    dialect: Dialect
    logical_date: date
    options: RunOptions = field(default_factory=RunOptions)
    clock: Clock = utcnow
    progress: Progress | None = None
    #: Raises when the run lock was lost (a lease that expired): checked before the publish.
    still_held: Callable[[], None] = _no_lease
    tries: Tries = field(default_factory=Tries)

    @property
    def table(self) -> str:
        return self.job.output.table

    def rows_written(self, expected: int | None) -> Callable[[int], None] | None:
        """The progress callback of a load that expects ``expected`` rows; None when nobody watches."""
        progress = self.progress
        return None if progress is None else (lambda rows: progress(rows, expected))
