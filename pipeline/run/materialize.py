"""One run, start to end: list the domain, score it, write a new version, audit it, flip the pointer.

Each step is one short function taking the run's :class:`~pipeline.run.context.RunContext`, and
:func:`run_job` calls them in the order of a run: lock, recover, allocate, load (loading, indexing),
audit, publish (flipping), tidy (the default row, retention).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Callable

from sqlalchemy.engine import Engine
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pipeline.database import journal as journals
from pipeline.database import schema, state
from pipeline.database.dialects import dialect_for, transient
from pipeline.database.engines import make_engine, resolve_url
from pipeline.database.transactions import reading, transaction
from pipeline.errors import (AuditError, DatabaseError, GateError, JobFileError, JobLocked, PipelineError,
                             PublishPending, SourceError, TableError, ViewBusy, first_line)
from pipeline.jobspec import GateSpec, Job
from pipeline.names import lineage_table, version_table
from pipeline.phases import checkpoint
from pipeline.run import changes, gates, topup
from pipeline.run.audits import AuditResult, audit_version, failures
from pipeline.run.context import Clock, Progress, RunContext, RunOptions, Tries, today
from pipeline.run.domain import Domain
from pipeline.run.executors import Loaded, Target, executor_for
from pipeline.run.model import Model, load_model
from pipeline.run.notify import notified
from pipeline.run.scoring import TypeGuard, check_output
from pipeline.run.store import InLineage
from pipeline.serve.pointer import FlipResult, publish, write_default
from pipeline.serve.retention import gc, reap_locked

log = logging.getLogger("pipeline")

#: The longest wait between two tries of a run (seconds): long enough for a server restart or a failover.
RETRY_MAX_WAIT = 60


@dataclass(frozen=True)
class RunResult:
    table: str
    version: int
    rows: int
    activated: bool
    previous: int | None
    seconds: float
    audits: tuple[AuditResult, ...] = ()
    #: Why no new version was made (the work was done already), or None.
    skipped: str | None = None
    #: Seconds spent in each phase: load (read, score, write, key), audit, publish.
    phases: dict[str, float] = field(default_factory=dict)
    #: Rows an incremental run copied from the active version (the rest were scored); in a lineage, kept there.
    copied: int = 0
    #: The lineage the version is kept in (see :func:`pipeline.run.changes.in_lineages`), or None.
    lineage: int | None = None
    #: The version was built from the active one (a top-up), not from the whole domain.
    top_up: bool = False
    #: Why a run asked to top up was a full one (see :mod:`pipeline.run.changes`), or None.
    full_because: str | None = None
    #: The run's row in ``pipeline_runs``; None for a tick another process recorded already.
    run_id: int | None = None


def run_job(job: Job, engine: Engine | None = None, *, logical_date: date | None = None, activate: bool = True,
            force: bool = False, trigger: str = "manual", scheduled_for: datetime | None = None,
            clock: Clock = state.utcnow, progress: Progress | None = None,
            incremental: bool = False, full: bool = False) -> RunResult:
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
            (the model must be the active version's); a job with ``[domain] incremental`` does so unless ``full``.
            With ``[domain] changed``, only the changed rows are read (:mod:`pipeline.run.changes`), and a
            top-up that cannot be trusted is a full run, which the result's ``full_because`` explains.
        full: a full run, whatever ``incremental`` and the job say.

    The job's ``[notify]`` hooks hear how the run ended (see :mod:`pipeline.run.notify`).

    Raises:
        JobLocked: another run of the same table is in progress; nothing was done.
        PipelineError: the run failed; its version is marked ``failed`` and the pointer is untouched.
    """
    logical_date = logical_date or today(job, clock)
    options = RunOptions(activate=activate, force=force, trigger=trigger, scheduled_for=scheduled_for,
                         incremental=incremental, full=full)
    tries = Tries()
    return notified(job, logical_date, options,
                    lambda: _run_job(job, engine, logical_date, options, clock, progress, tries), tries)


def _run_job(job: Job, engine: Engine | None, logical_date: date, options: RunOptions, clock: Clock,
             progress: Progress | None, tries: Tries) -> RunResult:
    owned = engine is None
    engine = engine or make_engine(resolve_url(None, job.target))
    dialect = dialect_for(engine)
    patient = dialect.patient(engine, job.output.publish_timeout)  # another writer is waited for, not failed on

    def attempt() -> RunResult:
        with dialect.run_lock(engine, job.output.table) as still_held:
            context = RunContext(job, patient, dialect, logical_date, options, clock, progress, still_held, tries)
            try:
                recover(patient, job.output.table, clock)
            except DatabaseError as exc:
                _unrecorded(context, exc)
            return run_locked(context)

    try:
        return retried(job, tries, attempt)
    finally:
        if owned:
            engine.dispose()


def retried(job: Job, tries: Tries, attempt: Callable[[], RunResult]) -> RunResult:
    """``attempt``, one try of a run (a single run's or a backfill's date), tried again after a passing fault of
    any database it uses (see :func:`transient`), up to the job's ``retries`` more, each after a random wait up to
    1 s, 2 s, 4 s... (at most :data:`RETRY_MAX_WAIT`); ``tries`` says how many may follow the one under way. A
    mistake (a missing table, a bad model, a failed audit) is never tried again, nor a version left ready to
    publish."""

    def passing(exc: BaseException) -> bool:
        return not isinstance(exc, (PublishPending, JobLocked)) and transient(exc)

    def again(retry_state: RetryCallState) -> None:
        fault = _reason(retry_state.outcome.exception())
        tries.faults.append(fault)
        log.warning("%s: try %d of %d failed on a passing fault (%s); trying again in %.1f s", job.output.table,
                    retry_state.attempt_number, job.retries + 1, fault, retry_state.next_action.sleep)

    def once() -> RunResult:
        tries.left = job.retries - len(tries.faults)
        try:
            return attempt()
        except JobLocked as exc:
            if not tries.faults:
                raise  # the first try: nothing was done, and the run that holds the table goes on
            # A try that failed let go of the table; another run took it before this one could try again. This run
            # failed (its record says on what): that is no "another run holds it, nothing done".
            raise PipelineError(f"{job.output.table}: could not try again after {tries.faults[-1]}: {exc}") from exc

    return Retrying(retry=retry_if_exception(passing), stop=stop_after_attempt(job.retries + 1),
                    wait=wait_random_exponential(multiplier=1, max=RETRY_MAX_WAIT), before_sleep=again,
                    reraise=True)(once)


def recover(engine: Engine, table: str, clock: Clock = state.utcnow) -> None:
    """Before a run: create (or upgrade) the bookkeeping tables, fold the runs the journal holds into the run
    history and reap what dead runs of ``table`` left. The caller holds the table's run lock."""
    dialect = dialect_for(engine)
    journal = dialect.journal(engine)
    with transaction(engine) as conn:
        dialect.lock(conn, "pipeline:schema")
        schema.ensure_schema(conn)
        folded = journals.fold(conn, journal)
    if folded is not None:
        journal.unlink()
    if folded:
        log.warning("%d run(s) that could not write their record are now in pipeline_runs (from %s)", folded,
                    journal)
    reap_locked(engine, dialect, table, clock)


def _unrecorded(context: RunContext, exc: DatabaseError) -> None:
    """A run that cannot even record its start leaves its record in the database's journal file, which the next
    run folds into ``pipeline_runs``; then it fails, saying so. Unless another try follows: that one records the
    run, with this fault, so that one run is one record; and a later try of a run that recorded itself names its
    row, which the fold marks failed.

    Raises:
        DatabaseError: always.
    """
    journal = context.dialect.journal(context.engine)
    if journal is None or (context.tries.left and transient(exc)):
        raise exc
    job, options, now, run_id = context.job, context.options, context.clock().isoformat(), context.tries.run_id
    could = "could not start" if run_id is None else "could not try again"
    record = dict(job=job.name, table=context.table, logical_date=context.logical_date.isoformat(),
                  trigger=options.trigger,
                  scheduled_for=options.scheduled_for.isoformat() if options.scheduled_for else None,
                  started_at=now, finished_at=now, host=socket.gethostname(), pid=os.getpid(),
                  error=f"{could}: {exc}", run_id=run_id)
    try:
        journals.append(journal, record)
    except OSError as error:
        raise DatabaseError(f"{exc}; the run {could}, and could not be recorded in {journal} either "
                            f"({error.strerror})") from exc
    why = (f" (another process held the database's write lock for longer than publish_timeout, "
           f"{job.output.publish_timeout:g} s)" if context.dialect.is_lock_timeout(exc.__cause__) else "")
    raise DatabaseError(f"{exc}; the run {could}{why} and is recorded in {journal} until the next run "
                        "moves it to pipeline_runs") from exc


def run_locked(context: RunContext) -> RunResult:
    """One run, for a caller that holds the table's run lock and called :func:`recover`."""
    started = time.monotonic()
    job, table, options, tries = context.job, context.table, context.options, context.tries
    try:
        with transaction(context.engine) as conn:
            if tries.run_id is None:
                run_id = tries.run_id = state.start_run(
                    conn, job=job.name, table=table, logical_date=context.logical_date, trigger=options.trigger,
                    scheduled_for=options.scheduled_for, now=context.clock(), host=socket.gethostname(),
                    pid=os.getpid(), retries=tries.faults)
            else:  # another try of the same run
                run_id = tries.run_id
                state.reopen_run(conn, run_id, tries.faults)
    except DatabaseError as exc:
        _unrecorded(context, exc)
    if run_id is None:
        return RunResult(table, 0, 0, False, None, time.monotonic() - started,
                         skipped=f"a run of {job.name} for the tick {options.scheduled_for} was recorded already")
    try:
        model = load_model(job.model)  # after the run is recorded: a bad model file fails a recorded run
        how = changes.plan(context, model, settings_digest(job, model))
        # A scheduled run is told apart by its tick (recorded above), not by its date. A change-driven top-up
        # never reads the whole domain, which telling whether its work was done would take; nor is a run that was
        # to be one skipped, so that it records the watermark the next top-up needs.
        again = (options.force or options.scheduled_for is not None or how.active is not None
                 or how.full_because is not None)
        done = None if again else _done_before(context, model)
        if done is not None:
            _finish(context, "skipped", done.version)
            return RunResult(table, done.version, done.row_count or 0, False, None, time.monotonic() - started,
                             skipped=skip_reason(context.engine, table, done, context.logical_date), run_id=run_id)
        result = _build(context, model, how, _gate(context, model, run_id))
    except BaseException as exc:
        _finish(context, "failed", error=_reason(exc))
        raise
    _finish(context, "succeeded", result.version)
    _tidy(context, result.version)
    return dataclasses.replace(result, seconds=time.monotonic() - started, run_id=run_id)


def settings_digest(job: Job, model: Model) -> str:
    """A digest of what shapes a version's rows besides the model's bytes and the domain: the method, the
    features and outputs, the keys, top-k, the default row and the columns passed through. A run is skipped
    only when it matches."""
    output = job.output
    shape = dict(method=model.method, features=list(model.features), outputs=list(model.outputs),
                 labels=[list(pair) for pair in model.labels], keys=list(job.domain.keys), top_k=output.top_k,
                 group_by=list(output.group_by), rank_by=output.rank_by, ascending=output.ascending,
                 default=[[c, v] for c, v in output.default],
                 **({"include": list(output.include)} if output.include else {}))
    return hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()


def _same_work(found: list[state.Version], job: Job, model: Model, logical_date: date) -> list[state.Version]:
    """The ready versions of ``job`` for ``logical_date`` from the same model and settings."""
    digest = settings_digest(job, model)
    return [v for v in found if v.job == job.name and v.logical_date == logical_date and v.status == "ready"
            and v.model_sha256 == model.sha256 and v.settings_sha256 == digest]


def held_by(found: list[state.Version], job: Job, model: Model, logical_date: date, fingerprint: str,
            active: int | None) -> state.Version | None:
    """The ready version (if any) that already holds what a run of ``job`` would write for ``logical_date``:
    the same model, settings (see :func:`settings_digest`) and domain. Of several (a forced run made the same
    again), the ``active`` one, else the newest: a skip must not send the user to serve an older twin of what
    serves."""
    holding = [v for v in _same_work(found, job, model, logical_date) if v.domain_fingerprint == fingerprint]
    return next((v for v in holding if v.version == active), max(holding, key=lambda v: v.version, default=None))


def skip_reason(engine: Engine, table: str, done: state.Version, logical_date: date) -> str:
    """Why a run makes nothing: which version holds its work, and what serves when that is another one."""
    why = f"version {done.version} already holds {logical_date} with the same model, settings and domain"
    with reading(engine) as conn:
        active = state.get_pointer(conn, table)
    if active is None or active.version == done.version:
        return f"{why} (--force runs it anyway)"
    return (f"{why}, but version {active.version} serves; `pipeline activate {table} {done.version}` serves it "
            "(--force runs it anyway)")


def _done_before(context: RunContext, model: Model) -> state.Version | None:
    """A ready version that already holds this run's work (the domain is read to compare fingerprints)."""
    job, logical_date = context.job, context.logical_date
    with reading(context.engine) as conn:
        candidates = _same_work(state.list_versions(conn, context.table), job, model, logical_date)
        pointer = state.get_pointer(conn, context.table) if candidates else None
    if not candidates:
        return None
    domain = Domain(job.domain, context.engine, logical_date)
    try:
        for _ in domain.chunks():
            pass
    except SourceError:
        return None  # the run itself will fail on it, and record a failed version
    finally:
        domain.close()
    return held_by(candidates, job, model, logical_date, domain.fingerprint, pointer.version if pointer else None)


def _finish(context: RunContext, status: str, version: int | None = None, error: str | None = None) -> None:
    tries = context.tries
    tries.unwritten = (status, context.clock(), version, error)
    try:
        write_end(context.engine, tries)
    except PipelineError as bookkeeping:
        log.error("could not record the end of run %d, %s%s (%s); it stays running until it is (a backfill tries "
                  "again after each date) or the next run marks it abandoned", tries.run_id, status,
                  f": {error}" if error else "", bookkeeping)


def write_end(engine: Engine, tries: Tries) -> None:
    """Write the end of the run's record that ``tries`` keeps unwritten, and forget it.

    Raises:
        PipelineError: the database would not take it (still down); it is kept for another go.
    """
    status, now, version, error = tries.unwritten
    with transaction(engine) as conn:
        state.finish_run(conn, tries.run_id, status, now, version, error)
    tries.unwritten = None


def _gate(context: RunContext, model: Model, run_id: int) -> dict | None:
    """The job's upstream gates (see :mod:`pipeline.run.gates`), stored with the run; nothing is scored unless
    all pass. Returns the profile of the domain's features the version records, when the gates compare them."""
    if context.job.gates == GateSpec():
        return None
    results, profile = gates.check(context.job, context.engine, context.logical_date, model.features)
    with transaction(context.engine) as conn:
        state.record_gates(conn, run_id, [(r.name, r.passed, r.detail) for r in results])
    if any(not r.passed for r in results):
        raise GateError(gates.failed(results))
    log.info("%s: %d gate(s) passed", context.table, len(results))
    return profile


def _build(context: RunContext, model: Model, how: changes.Plan, profile: dict | None = None) -> RunResult:
    job, table, engine = context.job, context.table, context.engine
    activate = context.options.activate
    check_output(job, model)
    check_roles(engine, job)
    executor = executor_for(job.executor)
    executor.check(context.dialect)
    previous = topup.from_active(engine, job, model) if how.hashes else None
    guard = type_guard(engine, job)
    watermark = changes.watermark(context) if job.domain.changed is not None else None
    version = _allocate(context, model, how)
    number = how.lineage(version)
    lineage = InLineage(table, number, version) if number is not None else None
    starts = lineage is not None and lineage.starts
    physical = lineage_table(table, version) if starts else version_table(table, version)
    log.info("%s: building version %d in %s", table, version, physical)
    phases: dict[str, float] = {}
    mark = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal mark
        phases[phase] = time.monotonic() - mark
        mark = time.monotonic()

    loaded = None
    try:
        loaded = executor.load(Target(context, model, version, physical, previous, guard, how.active, lineage))
        lap("load")
        results = _audit(context, version, loaded)
        lap("audit")
        ready = dict(finished_at=context.clock(), row_count=loaded.rows, columns=loaded.columns,
                     domain_size=loaded.domain_size, domain_fingerprint=loaded.fingerprint,
                     input_schema=loaded.input_schema, type_changes="; ".join(guard.changes) or None,
                     input_profile=profile, watermark=watermark,
                     top_ups=None if how.active is None else (how.active.top_ups or 0) + 1)
        if guard.changes:
            log.warning("%s: version %d has other feature types than version %s (allowed by the job): %s",
                        table, version, guard.version, "; ".join(guard.changes))
        context.still_held()
        flip = _publish(context, version, ready)
        lap("publish")
    except PublishPending:
        raise  # the version is ready: `pipeline activate` publishes it
    except BaseException as exc:
        _fail(context, version, exc, loaded)
        raise
    log.info("%s: version %d ready, %d rows%s", table, version, loaded.rows, ", active" if activate else "")
    return RunResult(table, version, loaded.rows, activate, flip.from_version if flip else None, 0.0,
                     tuple(results), phases=phases, copied=loaded.copied, top_up=how.top_up, lineage=number,
                     full_because=how.full_because)


def _publish(context: RunContext, version: int, ready: dict) -> FlipResult | None:
    """Publish a version that passed its audits. When readers hold the view past ``publish_timeout``, the version
    is still made ready, unpublished, rather than thrown away.

    Raises:
        PublishPending: it is ready but not published (``pipeline activate`` publishes it).
    """
    table, timeout = context.table, context.job.output.publish_timeout
    try:
        return publish(context.engine, table, version, ready=ready, move=context.options.activate,
                       reason=f"run of job {context.job.name}", clock=context.clock, timeout=timeout,
                       grant_select=context.job.output.grant_select)
    except ViewBusy:
        with transaction(context.engine) as conn:
            state.update_version(conn, table, version, status="ready", **ready)
            state.set_grant_roles(conn, table, context.job.output.grant_select)  # for the activate that publishes
        raise PublishPending(f"{table}: version {version} passed its audits and is ready, but readers held the view "
                             f"for the whole publish_timeout ({timeout} s), so it is not "
                             f"published; `pipeline activate {table} {version}` publishes it") from None


def _tidy(context: RunContext, version: int) -> None:
    """What follows a publish: the default row's view and retention. The version is published and the run recorded
    as succeeded by now (a run killed here made its version), so neither may turn the run into a failure: what
    cannot be done now is logged, and the next run or ``pipeline gc`` does it."""
    output = context.job.output
    try:
        if output.default:
            write_default(context.engine, output.table, output.default)
        gc(context.engine, output.table, output.keep, clock=context.clock)
    except PipelineError as exc:
        log.warning("%s: version %d is published; clean-up after it failed and is left for later: %s",
                    output.table, version, exc)


def check_roles(engine: Engine, job: Job) -> None:
    """Refuse, before scoring, a ``grant_select`` role the database lacks (a typo would leave readers without
    the grant); later flips only warn about a role dropped since, so that it never stops a rollback.

    Raises:
        JobFileError: a role does not exist.
    """
    if not job.output.grant_select:
        return
    missing = dialect_for(engine).missing_roles(engine, job.output.grant_select)
    if missing:
        where = engine.url.render_as_string(hide_password=True)
        raise JobFileError(f"{job.path}: output.grant_select: no role {', '.join(missing)} in {where} "
                           "(names are matched as written, case included)")


def type_guard(engine: Engine, job: Job) -> TypeGuard:
    """What the active version's model was handed, which the run's domain must match (unless allowed)."""
    with reading(engine) as conn:
        active = state.active_version(conn, job.output.table) if schema.has_schema(conn) else None
    if active is None:
        return TypeGuard()
    return TypeGuard(active.input_schema, active.version, job.domain.allow_type_changes)


def _allocate(context: RunContext, model: Model, how: changes.Plan) -> int:
    """Record a new ``building`` version (in its lineage, ``how`` keeps one: a full run's own, a top-up's active
    version's); committed at once so a crash leaves a trace."""
    job, table = context.job, context.table
    with transaction(context.engine) as conn:
        context.dialect.lock(conn, f"pipeline:{table}")
        base = how.active
        if base is not None and base.lineage is not None and not context.dialect.has_version(conn, table, base.version):
            raise TableError(f"{table}: version {base.version}, which this top-up builds on, was retired as it began "
                             "(gc); run again")
        version = state.next_version(conn, table)
        state.insert_version(conn, table=table, version=version, job=job.name,
                             logical_date=context.logical_date, keys=job.domain.keys, model_path=model.location,
                             model_sha256=model.sha256, model_class=model.class_name, started_at=context.clock(),
                             model_source=model.source.to_json() if model.source else None,
                             model_library=model.library, output_labels=model.labels,
                             settings_sha256=settings_digest(job, model), passthrough=job.output.include,
                             lineage=how.lineage(version))
        if context.tries.run_id is not None:
            state.run_builds(conn, context.tries.run_id, version)
    return version


def _audit(context: RunContext, version: int, loaded: Loaded) -> list[AuditResult]:
    """Write-audit-publish: the checks that must pass before the flip; results are stored either way."""
    checkpoint("auditing")
    job = context.job
    results = audit_version(context.engine, context.table, version, job.audits, expected_rows=loaded.expected_rows,
                            columns=loaded.columns, keys=job.domain.keys, logical_date=context.logical_date,
                            check_unique=False, clock=context.clock, output=job.output)
    if any(not r.passed for r in results):
        raise AuditError(f"audit failed: {failures(results)}")
    return results


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {first_line(exc)}"


def _fail(context: RunContext, version: int, exc: BaseException, loaded: Loaded | None = None) -> None:
    """Mark the version failed with a one-line reason; never hides the original error. A version that was
    written (and failed its audits, say) keeps its rows' count, columns and domain size, which ``pipeline audit``
    of it needs."""
    reason = _reason(exc)
    written = {} if loaded is None else dict(row_count=loaded.rows, columns=loaded.columns,
                                             domain_size=loaded.domain_size)
    try:
        with transaction(context.engine) as conn:
            state.update_version(conn, context.table, version, status="failed", finished_at=context.clock(),
                                 error=reason, **written)
    except PipelineError as bookkeeping:
        log.error("%s: could not mark version %d failed (%s); the next run will", context.table, version,
                  bookkeeping)
    log.info("%s: version %d failed: %s", context.table, version, reason)  # the error itself reaches the caller
