"""``pipeline schedule``: a long-running process that runs every scheduled job on its cron.

APScheduler 3 wiring only; every run goes through :func:`pipeline.run.materialize.run_job`.
Explicit choices: one instance per job at a time (``max_instances=1``), a per-job
``misfire_grace_seconds``, and the job's name as its id. Each tick is recorded in
``pipeline_runs``, so two schedulers (or a scheduler and cron) run a tick once.

No tick is lost: at start-up, and before every tick it runs, a scheduler (or ``pipeline run
--scheduled``) looks for the ticks since the job's last recorded one. The newest within the
grace time runs; every other one runs too with ``catchup = true``, else it is recorded as a
failed run that says it was missed, and logged by name and time (``pipeline status`` and
``pipeline runs`` show it).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy.exc import IntegrityError

from pipeline.cron import cron_trigger, iter_ticks, latest_tick, next_tick
from pipeline.database import schema, state
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine, resolve_url
from pipeline.database.transactions import reading, transaction
from pipeline.errors import DatabaseError, HidePasswords, JobFileError, JobLocked, PipelineError
from pipeline.jobs import iter_jobs, load_job
from pipeline.jobspec import Job
from pipeline.run.context import RunOptions
from pipeline.run.notify import failure_notified

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from pipeline.run.materialize import RunResult

log = logging.getLogger("pipeline.scheduling.scheduler")
log.addFilter(HidePasswords())  # the filter pipeline.errors puts on "pipeline" does not reach its children


#: How many missed ticks of one job are listed, and recorded (or, with ``catchup``, run) one by one, at a time. Those
#: past it (every minute down for a week, every second for three hours) are counted and recorded as one run, so that
#: memory stays bounded.
MISSED_LIMIT = 10_000
#: Why a tick found unrecorded at a later tick did not run: the scheduler or cron logged (and, for an error,
#: notified) the cause at its time.
UNSTARTED = "no run started for it at its time (the scheduler's or cron's log says why)"


def run_tick(path: Path, db_url: str | None, trigger: str = "schedule",
             now: Callable[[], datetime] = state.utcnow) -> RunResult | None:
    """Run the tick of the job at ``path`` that is due now; None when another process has it.

    Ticks since the job's last recorded one that are older than the due tick run first with
    ``catchup = true``; otherwise they are recorded as missed. Used by the scheduler and by
    ``pipeline run --scheduled`` from cron. The job file is read again at every tick, so edits
    take effect without a restart.
    """
    # The run's libraries load before the ticks are settled, not between that and the run's lock, which a run of
    # the next tick checks before it records this one missed.
    importlib.import_module("pipeline.run.materialize")
    job = scheduled_job(path)
    tick = due_tick(job, db_url, trigger, now)
    return _run(job, db_url, tick, trigger)


def scheduled_job(path: Path) -> Job:
    """The job at ``path``, as its file says now.

    Raises:
        JobFileError: the job file does not load, or has no schedule.
    """
    job = load_job(path)
    if job.schedule is None:
        raise JobFileError(f"{path}: schedule: is not set; a scheduled run needs one")
    return job


def due_tick(job: Job, db_url: str | None, trigger: str = "schedule",
             now: Callable[[], datetime] = state.utcnow) -> datetime:
    """The tick of ``job`` that is due now, once the ticks since its last recorded one are settled (see
    :func:`settle_gaps`): all that comes between loading a job and its tick's run. A failure to settle them (the
    database down) is the tick's failure: its on_failure hooks hear it, as they would hear its run's.

    Raises:
        PipelineError: no tick is due, or the job's database could not be read.
    """
    tick = _due(job, now())
    if tick is None:
        raise PipelineError(f"{job.name}: no tick of {job.schedule!r} in the last {job.misfire_grace_seconds}s; "
                            "nothing is due")
    with _tick_failure_notified(job, tick, trigger):
        settle_gaps(job, db_url, ticks_since_last(job, db_url, tick), trigger, UNSTARTED)
    return tick


def _tick_failure_notified(job: Job, tick: datetime, trigger: str) -> contextlib.AbstractContextManager[None]:
    """The job's on_failure hooks for an error that keeps ``tick`` from running, with the facts its run would give."""
    return failure_notified(job, _local(job, tick).date(),
                            RunOptions(trigger=trigger, scheduled_for=tick.astimezone(timezone.utc)))


@dataclass(frozen=True)
class Gap:
    """Ticks no run stood for, oldest first: up to :data:`MISSED_LIMIT` listed, any past them only counted (with the
    newest, which stands for them all), so that a gap of any length costs bounded memory and none goes unsaid."""

    ticks: list[datetime] = field(default_factory=list)
    more: int = 0
    newest: datetime | None = None  # the newest of the ``more``

    def __len__(self) -> int:
        return len(self.ticks) + self.more


def settle_gaps(job: Job, db_url: str | None, gap: Gap, trigger: str, why: str,
                stopping: threading.Event | None = None) -> None:
    """Run the ticks of ``gap`` oldest first where the job says ``catchup = true`` (until ``stopping`` is set); else
    record each as missed, saying ``why``, and name them in the log. Ticks past the listed ones are recorded as one
    missed run at the newest, saying how many it stands for."""
    if not gap:
        return
    if job.catchup:
        for tick in gap.ticks:
            if stopping is not None and stopping.is_set():
                return
            try:
                _run(job, db_url, tick, trigger)
            except PipelineError:
                pass  # logged by _run; the next tick goes on
        if not gap.more:
            return
    if not _record_missed(job, db_url, [] if job.catchup else gap.ticks, gap, trigger, why):
        return
    if job.catchup:
        log.warning("%s: %d tick(s) missed (%s) past the %d caught up, recorded as one failed run at %s", job.name,
                    gap.more, why, len(gap.ticks), gap.newest.isoformat())
        return
    shown = ", ".join(t.isoformat() for t in gap.ticks[:10]) + (f" and {len(gap) - 10} more" if len(gap) > 10 else "")
    log.warning("%s: %d tick(s) missed (%s), recorded as failed runs: %s", job.name, len(gap), why, shown)


def _record_missed(job: Job, db_url: str | None, listed: list[datetime], gap: Gap, trigger: str, why: str) -> bool:
    """Record ``listed``, and the ticks past the listed ones of ``gap`` as one run, as missed; False when a run of
    the table is under way. That run may stand for the newest of them and not have recorded itself yet (it is still
    starting): they are left to a later tick. Another scheduler catching up the same gap may record some of them
    between this one's read and its insert (the unique tick index then refuses the insert): the whole is tried once
    more, and reads what the other recorded."""
    def record(conn: Connection, ticks: list[datetime], error: str) -> None:
        state.record_missed(conn, job=job.name, table=job.output.table, ticks=[_stamped(job, t) for t in ticks],
                            trigger=trigger, error=f"{state.MISSED}: {error}", now=state.utcnow(),
                            host=socket.gethostname(), pid=os.getpid())

    with _database(job, db_url) as engine:
        try:
            with dialect_for(engine).run_lock(engine, job.output.table):
                for last_try in (False, True):
                    try:
                        with transaction(engine) as conn:
                            schema.ensure_schema(conn)
                            record(conn, listed, why)
                            if gap.more:
                                record(conn, [gap.newest], f"{why}; this record stands for all {gap.more} tick(s) "
                                                           f"after {gap.ticks[-1].isoformat()} up to this one "
                                                           f"(past {len(gap.ticks)} listed)")
                        return True
                    except DatabaseError as exc:
                        if last_try or not isinstance(exc.__cause__, IntegrityError):
                            raise
                        log.info("%s: another process recorded some of the missed ticks meanwhile; reading them "
                                 "again", job.name)
        except JobLocked:
            log.info("%s: a run of %s is under way; the %d tick(s) before it are left to a later tick", job.name,
                     job.output.table, len(gap))
    return False


def _stamped(job: Job, tick: datetime) -> tuple[datetime, date]:
    """A tick in UTC, as runs record it, and the logical date it stands for."""
    return tick.astimezone(timezone.utc), _local(job, tick).date()


def _due(job: Job, now: datetime) -> datetime | None:
    """The tick a run starting ``now`` stands for: the newest inside the job's grace time, if any."""
    return latest_tick(cron_trigger(job.schedule, job.timezone), now, timedelta(seconds=job.misfire_grace_seconds))


def _local(job: Job, tick: datetime) -> datetime:
    """A tick in the job's time zone; its date is the logical date the tick stands for."""
    return tick.astimezone(cron_trigger(job.schedule, job.timezone).timezone)


@contextlib.contextmanager
def _database(job: Job, db_url: str | None) -> Iterator[Engine]:
    """An engine on the job's database (``db_url`` first), disposed of afterwards."""
    engine = make_engine(resolve_url(db_url, job.target))
    try:
        yield engine
    finally:
        engine.dispose()


def ticks_since_last(job: Job, db_url: str | None, before: datetime) -> Gap:
    """Ticks of ``job`` after its last recorded one and before ``before`` (none if it never ran on a schedule)."""
    last = _last_tick(job, db_url)
    if last is None or last >= before:
        return Gap()
    found = iter_ticks(cron_trigger(job.schedule, job.timezone), last, before - timedelta(microseconds=1))
    listed = list(islice(found, MISSED_LIMIT))
    more, newest = 0, None
    for more, newest in enumerate(found, 1):  # counted, not kept
        pass
    return Gap(listed, more, newest)


def _last_tick(job: Job, db_url: str | None) -> datetime | None:
    with _database(job, db_url) as engine, reading(engine) as conn:
        return state.last_tick(conn, job.name) if schema.has_schema(conn) else None


def _run(job: Job, db_url: str | None, tick: datetime, trigger: str) -> RunResult | None:
    from pipeline.run.materialize import run_job  # loads pandas and the model libraries: only when a tick runs

    local = _local(job, tick)
    log.info("%s: tick %s: starting", job.name, local.isoformat())
    try:
        with _database(job, db_url) as engine:
            result = run_job(job, engine, logical_date=local.date(), trigger=trigger,
                             scheduled_for=tick.astimezone(timezone.utc))
    except JobLocked as exc:
        log.info("%s: tick %s: skipped, %s", job.name, local.isoformat(), exc)
        return None
    except PipelineError as exc:
        log.error("%s: tick %s: failed: %s", job.name, local.isoformat(), exc)
        raise
    if result.skipped:
        log.info("%s: tick %s: skipped, %s", job.name, local.isoformat(), result.skipped)
    else:
        log.info("%s: tick %s: version %d of %s, %d rows, %.1fs, %s", job.name, local.isoformat(), result.version,
                 result.table, result.rows, result.seconds, "active" if result.activated else "not active")
    return result


@contextlib.contextmanager
def _said(what: str) -> Iterator[None]:
    """Log a :class:`PipelineError` raised inside as ``what: error`` (a scheduler's log is all an operator sees of
    it), and pass it on."""
    try:
        yield
    except PipelineError as exc:
        log.error("%s: %s", what, exc)
        raise


def missed_ticks(job: Job, db_url: str | None, now: datetime) -> Gap:
    """Ticks of ``job`` after its last recorded scheduled run and before ``now`` less the grace time."""
    until = now - timedelta(seconds=job.misfire_grace_seconds)
    return ticks_since_last(job, db_url, until + timedelta(microseconds=1))


class Scheduler:
    """Runs every job of ``jobs_dir`` that has a ``schedule``, until SIGTERM or SIGINT."""

    def __init__(self, jobs_dir: str | Path, db_url: str | None = None) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.jobs_dir = Path(jobs_dir)
        self.db_url = db_url
        self.stopping = threading.Event()
        # coalesce: a tick that fires while the previous one still runs is settled by the next tick (due_tick)
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})

    def load(self) -> list[Job]:
        jobs = [j for j in iter_jobs(self.jobs_dir, on_error=lambda e: log.error("skipping %s", e)) if j.schedule]
        if not jobs:
            raise PipelineError(f"no job with a schedule in {self.jobs_dir}/")
        for job in jobs:
            self.scheduler.add_job(self._tick, cron_trigger(job.schedule, job.timezone), args=[job.path, job.name],
                                   id=job.name, name=job.name, replace_existing=True,
                                   misfire_grace_time=job.misfire_grace_seconds)
            log.info("%s: scheduled on %r (%s), next tick %s", job.name, job.schedule, job.timezone, next_tick(job))
        return jobs

    def catch_up(self, jobs: list[Job]) -> None:
        """At start-up: report the ticks missed while no scheduler ran (run them where the job says
        ``catchup = true``, else record them as missed), then run the tick inside the grace time, if any:
        APScheduler only fires the ticks from now on."""
        for job in jobs:
            if self.stopping.is_set():
                return
            self._guarded(lambda: self._catch_up(job))

    def _catch_up(self, job: Job) -> None:
        """One job's catch-up. Its database down is logged (and notified when a tick is due), and leaves the job's
        gaps to its next tick."""
        now = state.utcnow()
        due = _due(job, now)
        with _said(f"{job.name}: ticks since the last recorded one not looked for"), \
                (_tick_failure_notified(job, due, "schedule") if due else contextlib.nullcontext()):
            missed = ticks_since_last(job, self.db_url, due or now)
            if missed:
                log.warning("%s: %d tick(s) missed while no scheduler ran: %s%s", job.name, len(missed),
                            ", ".join(t.isoformat() for t in missed.ticks[:5]), " ..." if len(missed) > 5 else "")
                settle_gaps(job, self.db_url, missed, "schedule", "no scheduler was running", self.stopping)
            last = _last_tick(job, self.db_url)
        if due is not None and (last is None or due > last) and not self.stopping.is_set():
            _run(job, self.db_url, due, "schedule")

    def _tick(self, path: Path, job_id: str) -> None:
        if not self.stopping.is_set():
            self._guarded(lambda: self._run_due(path, job_id))

    def _run_due(self, path: Path, job_id: str) -> None:
        with _said(f"{path}: tick not run"):  # a job file broken since the last tick, its database down
            job = scheduled_job(path)
            self._follow(job_id, job)
            tick = due_tick(job, self.db_url)
        _run(job, self.db_url, tick, "schedule")

    def _follow(self, job_id: str, job: Job) -> None:
        """Fire on the schedule, time zone and grace time the job file says now. APScheduler keeps those it was
        given, so an edited schedule would go on firing at the old times, where no tick of the new one is due."""
        trigger = cron_trigger(job.schedule, job.timezone)
        fired = self.scheduler.get_job(job_id)
        if (str(trigger), trigger.timezone) != (str(fired.trigger), fired.trigger.timezone):
            self.scheduler.reschedule_job(job_id, trigger=trigger)
            log.info("%s: now scheduled on %r (%s), next tick %s", job.name, job.schedule, job.timezone, next_tick(job))
        if fired.misfire_grace_time != job.misfire_grace_seconds:
            self.scheduler.modify_job(job_id, misfire_grace_time=job.misfire_grace_seconds)

    @staticmethod
    def _guarded(call: Callable[[], Any]) -> None:
        """A failure is logged (a run's by _run, what comes before it by _said) and the scheduler goes on."""
        try:
            call()
        except PipelineError:
            pass
        except Exception:  # a bug in one run must not stop the others
            log.exception("unexpected error in a scheduled run")

    def start(self) -> None:
        """Load the jobs, catch up, and fire their ticks from then on. APScheduler starts (paused) before the
        catch-up: it fires only ticks after its start, so a tick during a long catch-up would never fire, and the
        next tick would record it as missed for a reason no log gave; so it runs after the catch-up (coalesced,
        within its grace time) or APScheduler logs it as missed."""
        jobs = self.load()
        self.scheduler.start(paused=True)
        self.catch_up(jobs)
        self.scheduler.resume()

    def serve(self) -> None:
        """Run until SIGTERM or SIGINT: then take no new run, let the running one finish, and return."""
        def stop(signum: int, _frame: Any) -> None:
            log.info("received %s: finishing the running job, then exiting", signal.Signals(signum).name)
            self.stopping.set()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stopping.wait(0.5):
                pass
            self.scheduler.shutdown(wait=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("scheduler stopped")
