"""Backfills: one run per logical date over a range, resumable, never moving the pointer backwards.

A backfill holds the table's run lock for its whole length, so a scheduled run cannot
slip in between its dates; ``parallel`` dates share that lock. Each date gets the job's
``retries`` as a single run does. Dates already done (a ready version from the same model
and domain) are skipped, so running the same backfill again redoes only the dates that
failed or never ran.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import TYPE_CHECKING, Callable

from sqlalchemy.engine import Engine

from pipeline.database import state
from pipeline.database.dialects import Dialect, dialect_for
from pipeline.database.transactions import reading
from pipeline.errors import LockLost, PipelineError
from pipeline.jobspec import Job
from pipeline.run.context import RunContext, RunOptions, Tries
from pipeline.scheduling import ACTIVATE
from pipeline.serve.pointer import FlipResult
from pipeline.serve.pointer import activate as activate_version

if TYPE_CHECKING:
    from pipeline.run.materialize import RunResult

log = logging.getLogger("pipeline")


@dataclass
class BackfillResult:
    done: dict[date, RunResult] = field(default_factory=dict)
    failed: dict[date, str] = field(default_factory=dict)
    interrupted: bool = False
    flip: FlipResult | None = None
    #: Why the pointer was left where it was, when it was.
    kept_pointer: str | None = None


class _Lease:
    """The table's run lock, held for the whole backfill and shared by its dates (one at a time: they share its
    one connection). A date's try after a passing fault takes it anew if it went with its connection, as a single
    run's next try does; if another run holds the table by then, that try fails (JobLocked)."""

    def __init__(self, dialect: Dialect, engine: Engine, table: str, stack: ExitStack) -> None:
        self._take = lambda: stack.enter_context(dialect.run_lock(engine, table))
        self._guard = threading.Lock()
        self._still_held = self._take()

    def held(self) -> None:
        """Raises :class:`LockLost` when the lock went with its connection: no date publishes then."""
        with self._guard:
            self._still_held()

    def renew(self) -> None:
        with self._guard:
            try:
                self._still_held()
            except LockLost:
                self._still_held = self._take()


def dates(start: date, end: date) -> list[date]:
    if end < start:
        raise PipelineError(f"--end {end} is before --start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def backfill(job: Job, engine: Engine, start: date, end: date, *, parallel: int = 1, force: bool = False,
             activate: str = "latest", clock: Callable = state.utcnow,
             on_date: Callable[[date, RunResult | None, str | None], None] | None = None) -> BackfillResult:
    """Run ``job`` for every date from ``start`` to ``end``; then, with ``activate='latest'``, point the
    view at the newest date's version unless the active version stands for a newer date.

    A range longer than the job's ``keep`` is warned of: retention retires its oldest dates as it goes.
    A failing date does not stop the others. Ctrl-C stops starting new dates, lets the
    running ones finish and returns with ``interrupted``; the same call again resumes.
    """
    # pandas and the models' libraries, when it runs
    from pipeline.run.materialize import recover, retried, run_locked, write_end
    from pipeline.run.notify import Outcome, ended, failure_notified, notify

    if activate not in ACTIVATE:
        raise PipelineError(f"--activate must be one of {', '.join(ACTIVATE)}, got {activate!r}")
    if parallel < 1:
        raise PipelineError("--parallel must be at least 1")
    todo = dates(start, end)
    result = BackfillResult()
    table = job.output.table
    if len(todo) > job.output.keep:  # each date's retention keeps only the newest versions, these dates' too
        log.warning("%s: the backfill's %d dates are more than [output] keep = %d: retention retires the oldest "
                    "dates' versions as newer ones are made, and running the backfill again redoes them (raise "
                    "keep to keep them all)", table, len(todo), job.output.keep)
    dialect = dialect_for(engine)
    engine = dialect.patient(engine, job.output.publish_timeout)
    # full runs, whatever [domain] incremental says: a top-up builds on the version that serves now, not on the date
    options = RunOptions(activate=False, force=force, trigger="backfill", full=True)

    # The newest date's success so far: told after the activation at the end, so that it says whether it was activated.
    held: dict[date, Outcome] = {}
    tried: dict[date, Tries] = {}  # each running date's
    # Ended dates whose record's end the database would not take: written when it does, not left for the next run
    # to call abandoned.
    unwritten: list[Tries] = []

    def one(day: date, lease: _Lease) -> RunResult:  # a failure is told here, a success by record()
        tries = tried[day] = Tries()

        def attempt() -> RunResult:
            if tries.faults:
                lease.renew()
            return run_locked(RunContext(job, engine, dialect, day, options, clock, still_held=lease.held,
                                         tries=tries))

        with failure_notified(job, day, options, tries):
            return retried(job, tries, attempt)

    def tell(day: date, done: RunResult) -> None:
        outcome = ended(job, day, options, done)
        if outcome is not None and activate == "latest" and all(older < day for older in held):
            held[day] = outcome
            outcome = held.pop(min(held)) if len(held) > 1 else None
        if outcome is not None:
            notify(job, outcome)

    def tell_held() -> None:
        for outcome in held.values():
            if result.flip is not None and result.flip.to_version == outcome.version:
                outcome = replace(outcome, activated=True, previous_version=result.flip.from_version)
            notify(job, outcome)

    def write_ends() -> None:
        while unwritten:
            try:
                write_end(engine, unwritten[0])
            except PipelineError:
                return  # still down: after the next date, or at the end
            log.warning("%s: run %d's end, which the database would not take then, is recorded now", table,
                        unwritten.pop(0).run_id)

    def record(day: date, future: Future) -> None:
        tries = tried.pop(day)
        if tries.unwritten is not None:
            unwritten.append(tries)
        write_ends()
        error = future.exception()
        if error is None:
            result.done[day] = future.result()
            tell(day, result.done[day])
        elif isinstance(error, (PipelineError, KeyboardInterrupt)):
            result.failed[day] = str(error) or type(error).__name__
        else:
            raise error
        if on_date is not None:
            on_date(day, result.done.get(day), result.failed.get(day))

    with ExitStack() as stack:  # the run lock, and each one taken anew after it was lost
        lease = _Lease(dialect, engine, table, stack)
        stack.callback(tell_held)  # after the activation, and whatever ends the backfill
        stack.callback(write_ends)
        recover(engine, table, clock)
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="backfill") as pool:
            pending: dict[Future, date] = {}
            queue = list(todo)
            try:
                while queue or pending:
                    while queue and len(pending) < parallel:
                        day = queue.pop(0)
                        pending[pool.submit(one, day, lease)] = day
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        record(pending.pop(future), future)
            except KeyboardInterrupt:
                result.interrupted = True
                log.warning("%s: interrupted; letting %d running date(s) finish", table, len(pending))
                for future in wait(pending).done:
                    record(pending[future], future)
        if activate == "latest" and result.done:
            _activate_latest(engine, table, result, clock)
    return result


def _activate_latest(engine: Engine, table: str, result: BackfillResult, clock: Callable) -> None:
    newest_day = max(result.done)
    newest = result.done[newest_day]
    with reading(engine) as conn:
        active = state.active_version(conn, table)
    if active is not None and active.version == newest.version:
        return
    if active is not None and active.logical_date is not None and active.logical_date > newest_day:
        result.kept_pointer = (f"the active version {active.version} stands for {active.logical_date}, "
                               f"newer than {newest_day}")
        return
    result.flip = activate_version(engine, table, newest.version, reason=f"backfill to {newest_day}", clock=clock)
