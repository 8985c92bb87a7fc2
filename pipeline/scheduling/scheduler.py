"""``pipeline schedule``: a long-running process that runs every scheduled job on its cron.

APScheduler 3 wiring only; every run goes through :func:`pipeline.run.materialize.run_job`.
Explicit choices: one instance per job at a time (``max_instances=1``), missed ticks
collapsed into one (``coalesce``), a per-job ``misfire_grace_seconds``, and the job's
name as its id. Each tick is recorded in ``pipeline_runs``, so two schedulers (or a
scheduler and cron) run a tick once; ticks missed while no scheduler ran are reported at
start-up and, with ``catchup = true``, run.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.cron import cron_trigger, latest_tick, ticks_between
from pipeline.database import schema, state
from pipeline.database.engines import make_engine, resolve_url
from pipeline.database.transactions import reading
from pipeline.errors import JobFileError, JobLocked, PipelineError
from pipeline.jobs import iter_jobs, load_job
from pipeline.jobspec import Job
from pipeline.run.materialize import RunResult, run_job

log = logging.getLogger("pipeline.scheduling.scheduler")


def run_tick(path: Path, db_url: str | None, trigger: str = "schedule",
             now: Callable[[], datetime] = state.utcnow) -> RunResult | None:
    """Run the tick of the job at ``path`` that is due now; None when another process has it.

    Used by the scheduler and by ``pipeline run --scheduled`` from cron. The job file is
    read again at every tick, so edits take effect without a restart.
    """
    job = load_job(path)
    if job.schedule is None:
        raise JobFileError(f"{path}: schedule: is not set; a scheduled run needs one")
    trigger_ = cron_trigger(job.schedule, job.timezone)
    tick = latest_tick(trigger_, now(), timedelta(seconds=job.misfire_grace_seconds))
    if tick is None:
        raise PipelineError(f"{job.name}: no tick of {job.schedule!r} in the last {job.misfire_grace_seconds}s; "
                            "nothing is due")
    return _run(job, db_url, tick, trigger)


def _run(job: Job, db_url: str | None, tick: datetime, trigger: str) -> RunResult | None:
    engine = make_engine(resolve_url(db_url, job.target))
    local = tick.astimezone(cron_trigger(job.schedule, job.timezone).timezone)
    log.info("%s: tick %s: starting", job.name, local.isoformat())
    try:
        result = run_job(job, engine, logical_date=local.date(), trigger=trigger,
                         scheduled_for=tick.astimezone(timezone.utc))
    except JobLocked as exc:
        log.info("%s: tick %s: skipped, %s", job.name, local.isoformat(), exc)
        return None
    except PipelineError as exc:
        log.error("%s: tick %s: failed: %s", job.name, local.isoformat(), exc)
        raise
    finally:
        engine.dispose()
    if result.skipped:
        log.info("%s: tick %s: skipped, %s", job.name, local.isoformat(), result.skipped)
    else:
        log.info("%s: tick %s: version %d of %s, %d rows, %.1fs, %s", job.name, local.isoformat(), result.version,
                 result.table, result.rows, result.seconds, "active" if result.activated else "not active")
    return result


def next_tick(job: Job, now: datetime | None = None) -> datetime | None:
    """When the job's schedule fires next (None without a schedule)."""
    if not job.schedule:
        return None
    return cron_trigger(job.schedule, job.timezone).get_next_fire_time(None, now or state.utcnow())


def missed_ticks(job: Job, db_url: str | None, now: datetime) -> list[datetime]:
    """Ticks of ``job`` after its last recorded scheduled run and before ``now`` less the grace time."""
    engine = make_engine(resolve_url(db_url, job.target))
    try:
        with reading(engine) as conn:
            last = state.last_tick(conn, job.name) if schema.has_schema(conn) else None
    finally:
        engine.dispose()
    if last is None:
        return []  # never scheduled before: nothing was missed
    until = now - timedelta(seconds=job.misfire_grace_seconds)
    return ticks_between(cron_trigger(job.schedule, job.timezone), last, until)


class Scheduler:
    """Runs every job of ``jobs_dir`` that has a ``schedule``, until SIGTERM or SIGINT."""

    def __init__(self, jobs_dir: str | Path, db_url: str | None = None) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.jobs_dir = Path(jobs_dir)
        self.db_url = db_url
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})

    def load(self) -> list[Job]:
        jobs = [j for j in iter_jobs(self.jobs_dir, on_error=lambda e: log.error("skipping %s", e)) if j.schedule]
        if not jobs:
            raise PipelineError(f"no job with a schedule in {self.jobs_dir}/")
        for job in jobs:
            self.scheduler.add_job(self._tick, cron_trigger(job.schedule, job.timezone), args=[job.path], id=job.name,
                                   name=job.name, replace_existing=True,
                                   misfire_grace_time=job.misfire_grace_seconds)
            log.info("%s: scheduled on %r (%s), next tick %s", job.name, job.schedule, job.timezone,
                     cron_trigger(job.schedule, job.timezone).get_next_fire_time(None, state.utcnow()))
        return jobs

    def catch_up(self, jobs: list[Job]) -> None:
        """Report the ticks missed while no scheduler ran; run them where the job says ``catchup = true``."""
        for job in jobs:
            missed = missed_ticks(job, self.db_url, state.utcnow())
            if not missed:
                continue
            log.warning("%s: %d tick(s) missed while no scheduler ran: %s%s", job.name, len(missed),
                        ", ".join(t.isoformat() for t in missed[:5]), " ..." if len(missed) > 5 else "")
            if job.catchup:
                for tick in missed:
                    if self.stopping.is_set():
                        return
                    self._guarded(lambda: _run(job, self.db_url, tick, "schedule"))

    def _tick(self, path: Path) -> None:
        if not self.stopping.is_set():
            self._guarded(lambda: run_tick(path, self.db_url))

    @staticmethod
    def _guarded(call: Callable[[], Any]) -> None:
        """A failed run is logged (by _run) and the scheduler goes on."""
        try:
            call()
        except PipelineError:
            pass
        except Exception:  # a bug in one run must not stop the others
            log.exception("unexpected error in a scheduled run")

    def serve(self) -> None:
        """Run until SIGTERM or SIGINT: then take no new run, let the running one finish, and return."""
        def stop(signum: int, _frame: Any) -> None:
            log.info("received %s: finishing the running job, then exiting", signal.Signals(signum).name)
            self.stopping.set()

        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            jobs = self.load()
            self.catch_up(jobs)
            self.scheduler.start()
            while not self.stopping.wait(0.5):
                pass
            self.scheduler.shutdown(wait=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        log.info("scheduler stopped")
