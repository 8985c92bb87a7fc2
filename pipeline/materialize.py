"""One run, start to end: list the domain, score it, write a new version, audit it, flip the pointer.

Each step is one short function and :func:`run_job` calls them in the order of a run:
lock, reap, allocate, load (loading, indexing), audit, publish (flipping), retain.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Connection, Engine

from pipeline import incremental, state
from pipeline.audits import AuditResult, Subject, failures, run_audits
from pipeline.db import make_engine, resolve_url
from pipeline.dialects import Dialect, dialect_for
from pipeline.domain import Domain
from pipeline.errors import AuditError, DatabaseError, PipelineError, PublishPending, SourceError, ViewBusy, first_line
from pipeline.jobs import AuditSpec, Job, OutputSpec
from pipeline.executors import Target, executor_for
from pipeline.model import Model, load_model
from pipeline.pointer import FlipResult, checkpoint, publish, write_default
from pipeline.retention import gc, reap_locked
from pipeline.scoring import TypeGuard, check_output
from pipeline.transactions import reading, transaction
from pipeline.versions import RANK, outputs_of, version_table

log = logging.getLogger("pipeline")

Clock = Callable[[], datetime]
Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class RunResult:
    table: str
    version: int
    physical_table: str
    rows: int
    activated: bool
    previous: int | None
    seconds: float
    audits: tuple[AuditResult, ...] = ()
    #: Why no new version was made (the work was done already), or None.
    skipped: str | None = None
    #: Seconds spent in each phase: load (read, score, write, key), audit, publish.
    phases: dict[str, float] = field(default_factory=dict)
    #: Rows an incremental run copied from the active version (the rest were scored).
    copied: int = 0


def run_job(job: Job, engine: Engine | None = None, *, logical_date: date | None = None, activate: bool = True,
            force: bool = False, trigger: str = "manual", scheduled_for: datetime | None = None,
            clock: Clock = state.utcnow, progress: Progress | None = None,
            incremental: bool = False) -> RunResult:
    """Materialize ``job`` into a new version of its table and, unless told not to, flip to it.

    Args:
        job: a validated job (see :func:`pipeline.jobs.load_job`).
        engine: the target database; by default the job's target, resolved like the CLI does.
        logical_date: the date the run stands for, given to the domain query as ``:run_date``
            (default: today in the job's time zone).
        activate: flip the pointer to the new version once it passed its audits.
        force: run even when a ready version already holds this date with the same model and domain.
        trigger: what started the run (manual, schedule, cron, backfill), for the run history.
        scheduled_for: the cron tick a scheduled run stands for; a tick runs at most once.
        clock: the source of timestamps (tests pass a fixed one).
        progress: called as rows are written with (rows so far, expected rows: the active
            version's count, or None).
        incremental: build the version from the active one, scoring only new and changed keys
            (the model must be the active version's).

    Raises:
        JobLocked: another run of the same table is in progress; nothing was done.
        PipelineError: the run failed; its version is marked ``failed`` and the pointer is untouched.
    """
    owned = engine is None
    engine = engine or make_engine(resolve_url(None, job.target))
    dialect = dialect_for(engine)
    patient = dialect.patient(engine, job.output.publish_timeout)  # another writer is waited for, not failed on
    logical_date = logical_date or today(job, clock)
    try:
        with dialect.run_lock(engine, job.output.table) as still_held:
            try:
                prepare(patient, job.output.table, clock)
            except DatabaseError as exc:
                _unrecorded(patient, job, logical_date, trigger, scheduled_for, clock, exc)
            return run_locked(job, patient, logical_date=logical_date, activate=activate,
                              force=force, trigger=trigger, scheduled_for=scheduled_for, clock=clock,
                              still_held=still_held, progress=progress, incremental=incremental)
    finally:
        if owned:
            engine.dispose()


def today(job: Job, clock: Clock = state.utcnow) -> date:
    """The default logical date: today in the job's time zone."""
    return clock().astimezone(ZoneInfo(job.timezone)).date()


def prepare(engine: Engine, table: str, clock: Clock = state.utcnow) -> None:
    """Create the bookkeeping tables and reap what dead runs of ``table`` left; the caller holds the run lock."""
    dialect = dialect_for(engine)
    journal = dialect.journal(engine)
    with transaction(engine) as conn:
        dialect.lock(conn, "pipeline:schema")
        state.ensure_schema(conn)
        folded = _fold(conn, journal)
    if folded is not None:
        journal.unlink()
    if folded:
        log.warning("%d run(s) that could not write their record are now in pipeline_runs (from %s)", folded,
                    journal)
    reap_locked(engine, dialect, table, clock)


def _unrecorded(engine: Engine, job: Job, logical_date: date, trigger: str, scheduled_for: datetime | None,
                clock: Clock, exc: DatabaseError) -> None:
    """A run that cannot even record its start (another writer holds an SQLite file past the job's
    ``publish_timeout``) leaves its record in the database's journal file, which the next run folds into
    ``pipeline_runs``; then it fails, saying so.

    Raises:
        DatabaseError: always.
    """
    dialect = dialect_for(engine)
    journal = dialect.journal(engine)
    if journal is None:
        raise exc
    now = clock().isoformat()
    record = dict(job=job.name, table=job.output.table, logical_date=logical_date.isoformat(), trigger=trigger,
                  scheduled_for=scheduled_for.isoformat() if scheduled_for else None, started_at=now,
                  finished_at=now, host=socket.gethostname(), pid=os.getpid(), error=f"could not start: {exc}")
    try:
        with journal.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
    except OSError as error:
        raise DatabaseError(f"{exc}; the run could not start, and could not be recorded in {journal} either "
                            f"({error.strerror})") from exc
    why = (f" (another process held the database's write lock for longer than publish_timeout, "
           f"{job.output.publish_timeout:g} s)" if dialect.is_lock_timeout(exc.__cause__) else "")
    raise DatabaseError(f"{exc}; the run could not start{why} and is recorded in {journal} until the next run "
                        "moves it to pipeline_runs") from exc


def _fold(conn: Connection, journal: Path | None) -> int | None:
    """Move the runs a journal file holds into ``pipeline_runs`` (as failed); how many, None without a journal."""
    if journal is None or not journal.exists():
        return None
    lines = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a line cut short by a crash while it was written
            log.warning("%s: skipped a line that is not a run record: %.80s", journal, line)
    for r in lines:
        run_id = state.start_run(
            conn, job=r["job"], table=r["table"], logical_date=date.fromisoformat(r["logical_date"]),
            trigger=r["trigger"], scheduled_for=datetime.fromisoformat(r["scheduled_for"]) if r["scheduled_for"]
            else None, now=datetime.fromisoformat(r["started_at"]), host=r["host"], pid=r["pid"])
        if run_id is not None:
            state.finish_run(conn, run_id, "failed", datetime.fromisoformat(r["finished_at"]), None, r["error"])
    return len(lines)


def upgrade(engine: Engine) -> None:
    """Bring a database's bookkeeping tables up to this release (new nullable columns), so commands that
    only read work on a database an older release made; a database without them is left alone.

    It writes only when a column is missing: a read command must not wait for a running load's write lock.
    """
    with reading(engine) as conn:
        if not state.has_schema(conn) or not state.missing_columns(conn):
            return
    dialect = dialect_for(engine)
    with transaction(engine) as conn:
        dialect.lock(conn, "pipeline:schema")
        state.ensure_schema(conn)


def run_locked(job: Job, engine: Engine, *, logical_date: date, activate: bool, force: bool, trigger: str,
               scheduled_for: datetime | None, clock: Clock,
               still_held: Callable[[], None] = lambda: None, progress: Progress | None = None,
               incremental: bool = False) -> RunResult:
    """One run, for a caller that holds the table's run lock and called :func:`prepare`."""
    started = time.monotonic()
    model = load_model(job.model)
    table = job.output.table
    try:
        with transaction(engine) as conn:
            run_id = state.start_run(conn, job=job.name, table=table, logical_date=logical_date, trigger=trigger,
                                     scheduled_for=scheduled_for, now=clock(), host=socket.gethostname(),
                                     pid=os.getpid())
    except DatabaseError as exc:
        _unrecorded(engine, job, logical_date, trigger, scheduled_for, clock, exc)
    if run_id is None:
        return RunResult(table, 0, "", 0, False, None, time.monotonic() - started,
                         skipped=f"a run of {job.name} for the tick {scheduled_for} was recorded already")
    try:
        # A scheduled run is told apart by its tick (recorded above), not by its date.
        done = None if force or scheduled_for is not None else _done_before(engine, job, model, logical_date)
        if done is not None:
            _finish(engine, run_id, "skipped", clock, done.version)
            return RunResult(table, done.version, version_table(table, done.version), done.row_count or 0, False,
                             None, time.monotonic() - started, skipped=(
                                 f"version {done.version} already holds {logical_date} with the same model and "
                                 "domain (--force runs it anyway)"))
        result = _build(job, engine, model, logical_date, activate, clock, still_held, progress, incremental)
    except BaseException as exc:
        _finish(engine, run_id, "failed", clock, error=_reason(exc))
        raise
    _finish(engine, run_id, "succeeded", clock, result.version)
    return dataclasses.replace(result, seconds=time.monotonic() - started)


def _done_before(engine: Engine, job: Job, model: Model, logical_date: date) -> state.Version | None:
    """A ready version of this job and date, from the same model and the same domain (read to compare)."""
    with reading(engine) as conn:
        candidates = [v for v in state.list_versions(conn, job.output.table)
                      if v.job == job.name and v.logical_date == logical_date and v.status == "ready"
                      and v.model_sha256 == model.sha256]
    if not candidates:
        return None
    domain = Domain(job.domain, engine, logical_date)
    try:
        for _ in domain.chunks():
            pass
    except SourceError:
        return None  # the run itself will fail on it, and record a failed version
    finally:
        domain.close()
    return next((v for v in candidates if v.domain_fingerprint == domain.fingerprint), None)


def _finish(engine: Engine, run_id: int, status: str, clock: Clock, version: int | None = None,
            error: str | None = None) -> None:
    try:
        with transaction(engine) as conn:
            state.finish_run(conn, run_id, status, clock(), version, error)
    except PipelineError as bookkeeping:
        log.error("could not record the end of run %d (%s); the next run will", run_id, bookkeeping)


def _build(job: Job, engine: Engine, model: Model, logical_date: date, activate: bool, clock: Clock,
           still_held: Callable[[], None], progress: Progress | None, top_up: bool) -> RunResult:
    dialect = dialect_for(engine)
    table = job.output.table
    check_output(job, model)
    executor = executor_for(job.executor)
    executor.check(dialect)
    previous = incremental.prepare(engine, job, model) if top_up else None
    guard = type_guard(engine, job)
    version = _allocate(engine, dialect, job, model, logical_date, clock)
    physical = version_table(table, version)
    log.info("%s: building version %d in %s", table, version, physical)
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal mark
        phases[phase] = time.monotonic() - mark
        mark = time.monotonic()

    try:
        loaded = executor.load(engine, Target(job, model, version, physical, logical_date, previous, guard), progress)
        lap("load")
        results = _audit(engine, job, version, loaded.columns, loaded.expected_rows, logical_date, clock)
        lap("audit")
        ready = dict(finished_at=clock(), row_count=loaded.rows, columns=loaded.columns,
                     domain_size=loaded.domain_size, domain_fingerprint=loaded.fingerprint,
                     input_schema=loaded.input_schema, type_changes="; ".join(guard.changes) or None)
        if guard.changes:
            log.warning("%s: version %d has other feature types than version %s (allowed by the job): %s",
                        table, version, guard.version, "; ".join(guard.changes))
        still_held()
        flip = _publish(engine, job, version, ready, activate, clock)
        lap("publish")
    except PublishPending:
        raise  # the version is ready: `pipeline activate` publishes it
    except BaseException as exc:
        _fail(engine, table, version, exc, clock)
        raise
    log.info("%s: version %d ready, %d rows%s", table, version, loaded.rows, ", active" if activate else "")
    _tidy(engine, job, version, clock)
    return RunResult(table, version, physical, loaded.rows, activate, flip.from_version if flip else None, 0.0,
                     tuple(results), phases=phases, copied=loaded.copied)


def _publish(engine: Engine, job: Job, version: int, ready: dict, activate: bool, clock: Clock) -> FlipResult | None:
    """Publish a version that passed its audits. When readers hold the view past ``publish_timeout``, the version
    is still made ready, unpublished, rather than thrown away.

    Raises:
        PublishPending: it is ready but not published (``pipeline activate`` publishes it).
    """
    table = job.output.table
    try:
        return publish(engine, table, version, ready=ready, move=activate, reason=f"run of job {job.name}",
                       clock=clock, timeout=job.output.publish_timeout)
    except ViewBusy:
        with transaction(engine) as conn:
            state.update_version(conn, table, version, status="ready", **ready)
        raise PublishPending(f"{table}: version {version} passed its audits and is ready, but readers held the view "
                             f"for the whole publish_timeout ({job.output.publish_timeout} s), so it is not "
                             f"published; `pipeline activate {table} {version}` publishes it") from None


def _tidy(engine: Engine, job: Job, version: int, clock: Clock) -> None:
    """What follows a publish: the default row's view and retention. The version is published by now, so
    neither may turn the run into a failure: what cannot be done now is logged, and the next run or
    ``pipeline gc`` does it."""
    table = job.output.table
    try:
        if job.output.default:
            write_default(engine, table, job.output.default)
        gc(engine, table, job.output.keep, clock=clock)
    except PipelineError as exc:
        log.warning("%s: version %d is published; clean-up after it failed and is left for later: %s",
                    table, version, exc)


def type_guard(engine: Engine, job: Job) -> TypeGuard:
    """What the active version's model was handed, which the run's domain must match (unless allowed)."""
    with reading(engine) as conn:
        active = state.active_version(conn, job.output.table) if state.has_schema(conn) else None
    if active is None:
        return TypeGuard()
    return TypeGuard(active.input_schema, active.version, job.domain.allow_type_changes)


def _allocate(engine: Engine, dialect: Dialect, job: Job, model: Model, logical_date: date, clock: Clock) -> int:
    """Record a new ``building`` version; committed at once so a crash leaves a trace."""
    with transaction(engine) as conn:
        dialect.lock(conn, f"pipeline:{job.output.table}")
        version = state.next_version(conn, job.output.table)
        state.insert_version(conn, table=job.output.table, version=version, job=job.name,
                             logical_date=logical_date, keys=job.domain.keys, model_path=model.location,
                             model_sha256=model.sha256, model_class=model.class_name, started_at=clock(),
                             model_source=model.source.to_json() if model.source else None,
                             model_library=model.library, output_labels=model.labels)
    return version


def _audit(engine: Engine, job: Job, version: int, columns: list[tuple[str, str]],
           expected_rows: int, logical_date: date, clock: Clock) -> list[AuditResult]:
    """Write-audit-publish: the checks that must pass before the flip; results are stored either way."""
    checkpoint("auditing")
    results = audit_version(engine, job.output.table, version, job.audits, expected_rows=expected_rows,
                            columns=columns, keys=job.domain.keys, logical_date=logical_date,
                            check_unique=False, clock=clock, output=job.output)
    if any(not r.passed for r in results):
        raise AuditError(f"audit failed: {failures(results)}")
    return results


def audit_version(engine: Engine, table: str, version: int, spec: AuditSpec = AuditSpec(), *,
                  expected_rows: int | None = None, columns: list[tuple[str, str]] | None = None,
                  keys: tuple[str, ...] | None = None, logical_date: date | None = None,
                  check_unique: bool = True, clock: Clock = state.utcnow,
                  output: OutputSpec | None = None) -> list[AuditResult]:
    """Run ``spec``'s audits (and the built-in ones) on a version, store the results and return them.

    Drift compares with the active version, unless ``version`` is the active one. With
    ``output.top_k``, each group must hold its K best rows ranked 1..n; the row count of a
    top-k version is known only to the run that made it (``expected_rows``).
    """
    dialect = dialect_for(engine)
    with reading(engine) as conn:
        found = state.get_version(conn, table, version) if state.has_schema(conn) else None
        if found is None:
            raise AuditError(f"{table} has no version {version}")
        if found.status == "retired" or not conn.dialect.has_table(conn, version_table(table, version)):
            raise AuditError(f"{table} version {version} has no table any more ({found.status})")
        columns = columns or list(found.columns)
        keys = keys or found.keys
        pointer = state.get_pointer(conn, table)
        baseline = None
        if pointer is not None and pointer.version != version:
            baseline = version_table(table, pointer.version)
        top_k = (output.group_by, output.top_k) if output is not None and output.top_k else None
        if expected_rows is None and top_k is None and RANK not in dict(columns):
            expected_rows = found.domain_size
        subject = Subject(version_table(table, version), tuple(keys), tuple(outputs_of(columns, keys)),
                          expected_rows, baseline, logical_date or found.logical_date, top_k)
        results = run_audits(conn, dialect, subject, spec, check_unique=check_unique)
    with transaction(engine) as conn:
        state.save_audits(conn, table, version, results, clock())
    return results


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {first_line(exc)}"


def _fail(engine: Engine, table: str, version: int, exc: BaseException, clock: Clock) -> None:
    """Mark the version failed with a one-line reason; never hides the original error."""
    reason = _reason(exc)
    try:
        with transaction(engine) as conn:
            state.update_version(conn, table, version, status="failed", finished_at=clock(), error=reason)
    except PipelineError as bookkeeping:
        log.error("%s: could not mark version %d failed (%s); the next run will", table, version, bookkeeping)
    log.info("%s: version %d failed: %s", table, version, reason)  # the error itself reaches the caller
