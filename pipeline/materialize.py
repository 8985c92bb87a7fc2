"""One run, start to end: list the domain, score it, write a new version, check it, flip the pointer.

This is the only module that opens transactions. Each step below is one short
function; the order of :func:`run_job` is the order of a run.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import socket
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import Callable, Iterator

import pandas as pd
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from pipeline import state
from pipeline.db import make_engine, resolve_url
from pipeline.dialects import Dialect, dialect_for
from pipeline.dialects.sqlite import WRITE_OPTION
from pipeline.domain import Domain, first_line
from pipeline.errors import AuditError, DatabaseError, FlipError, ModelError, PipelineError
from pipeline.jobs import Job
from pipeline.model import Model, load_model
from pipeline.store import VersionWriter
from pipeline.versions import previous_version, version_table

log = logging.getLogger("pipeline")

Clock = Callable[[], datetime]
FLIP_ATTEMPTS = 40


@dataclass(frozen=True)
class RunResult:
    table: str
    version: int
    physical_table: str
    rows: int
    activated: bool
    previous: int | None
    seconds: float


@dataclass(frozen=True)
class FlipResult:
    table: str
    alias: str
    from_version: int | None
    to_version: int


# -- transactions ---------------------------------------------------------------

@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction; database failures come out as one-line :class:`DatabaseError`."""
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            yield conn
    except PipelineError:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database error: {first_line(exc)}") from exc


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only connection; database failures come out as :class:`DatabaseError`."""
    try:
        with engine.connect() as conn:
            yield conn
    except PipelineError:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database error: {first_line(exc)}") from exc


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# -- a run ----------------------------------------------------------------------

def run_job(job: Job, engine: Engine | None = None, *, logical_date: date | None = None,
            activate: bool = True, clock: Clock = state.utcnow) -> RunResult:
    """Materialize ``job`` into a new version of its table and, unless told not to, flip to it.

    Args:
        job: a validated job (see :func:`pipeline.jobs.load_job`).
        engine: the target database; by default the job's target, resolved like the CLI does.
        logical_date: the date the run stands for, given to the domain query as ``:run_date``.
        activate: flip the pointer to the new version once it passed its checks.
        clock: the source of timestamps (tests pass a fixed one).

    Raises:
        PipelineError: the run failed; the version is marked ``failed`` and the pointer is untouched.
    """
    owned = engine is None
    engine = engine or make_engine(resolve_url(None, job.target))
    try:
        return _run(job, engine, logical_date or clock().date(), activate, clock)
    finally:
        if owned:
            engine.dispose()


def _run(job: Job, engine: Engine, logical_date: date, activate: bool, clock: Clock) -> RunResult:
    started = time.monotonic()
    dialect = dialect_for(engine)
    model = load_model(job.model)
    table = job.output.table
    version = _allocate(engine, dialect, job, model, logical_date, clock)
    physical = version_table(table, version)
    log.info("%s: building version %d in %s", table, version, physical)
    try:
        rows, columns, domain = _load(engine, dialect, job, model, physical, logical_date)
        with transaction(engine) as conn:
            state.update_version(conn, table, version, status="ready", finished_at=clock(), row_count=rows,
                                 columns=columns, domain_size=domain.size, domain_fingerprint=domain.fingerprint)
        log.info("%s: version %d ready, %d rows", table, version, rows)
    except BaseException as exc:
        _fail(engine, table, version, exc, clock)
        raise
    _stage(engine, dialect, table, version)
    previous = None
    if activate:
        flip = _flip(engine, dialect, table, version, reason=f"run of job {job.name}", clock=clock)
        previous = flip.from_version
    return RunResult(table, version, physical, rows, activate, previous, time.monotonic() - started)


def _allocate(engine: Engine, dialect: Dialect, job: Job, model: Model, logical_date: date, clock: Clock) -> int:
    """Record a new ``building`` version; committed at once so a crash leaves a trace."""
    with transaction(engine) as conn:
        dialect.lock(conn, f"pipeline:{job.output.table}")
        state.ensure_schema(conn)
        version = state.next_version(conn, job.output.table)
        state.insert_version(conn, table=job.output.table, version=version, job=job.name,
                             logical_date=logical_date, keys=job.domain.keys, model_path=str(model.path),
                             model_sha256=model.sha256, model_class=model.class_name, started_at=clock())
    return version


def _load(engine: Engine, dialect: Dialect, job: Job, model: Model, physical: str,
          logical_date: date) -> tuple[int, list[tuple[str, str]], Domain]:
    """Stream, score and write the whole domain in one transaction, then check and index it."""
    keys = list(job.domain.keys)
    domain = Domain(job.domain, engine, logical_date)
    try:
        with transaction(engine) as conn:
            writer = VersionWriter(dialect, conn, physical, keys)
            for chunk in domain.chunks():
                if writer.rows == 0:
                    _check_inputs(model, keys, list(map(str, chunk.columns)))
                scores = model.score(chunk)
                writer.write(pd.concat([chunk[keys].reset_index(drop=True), scores.reset_index(drop=True)],
                                       axis=1))
            if domain.size == 0:
                raise AuditError("the domain is empty: the query or file listed no rows; nothing to publish")
            rows = writer.finish()
            if rows != domain.size:
                raise AuditError(f"the table holds {rows} rows but the domain listed {domain.size}")
    finally:
        domain.close()
    return rows, writer.columns, domain


def _check_inputs(model: Model, keys: list[str], columns: list[str]) -> None:
    model.check_features(columns)
    clash = sorted(set(keys) & set(model.outputs))
    if clash:
        raise ModelError(f"key column(s) {', '.join(clash)} have the name of a model output; rename them")


def _fail(engine: Engine, table: str, version: int, exc: BaseException, clock: Clock) -> None:
    """Mark the version failed with a one-line reason; never hides the original error."""
    reason = str(exc) if isinstance(exc, PipelineError) else f"{type(exc).__name__}: {first_line(exc)}"
    try:
        with transaction(engine) as conn:
            state.update_version(conn, table, version, status="failed", finished_at=clock(), error=reason)
    except PipelineError as bookkeeping:
        log.error("%s: could not mark version %d failed: %s", table, version, bookkeeping)
    log.error("%s: version %d failed: %s", table, version, reason)


# -- the view and the pointer ------------------------------------------------------

def _members(conn: Connection, table: str, columns: tuple[tuple[str, str], ...]) -> list[state.Version]:
    """The versions the view lists: every ready version with the same columns as ``columns``."""
    return [v for v in state.list_versions(conn, table) if v.status == "ready" and v.columns == columns]


def _write_view(conn: Connection, dialect: Dialect, table: str, alias: str, members: list[state.Version],
                same_columns: bool) -> None:
    view = table if alias == state.DEFAULT_ALIAS else f"{table}__{alias}"
    names = [c for c, _ in members[0].columns]
    select_sql = dialect.view_select(table, alias, [(version_table(table, v.version), v.version) for v in members],
                                     names)
    dialect.replace_view(conn, view, select_sql, same_columns)


def _with_lock_retry(engine: Engine, dialect: Dialect, what: str, step: Callable[[Connection], FlipResult | None]
                     ) -> FlipResult | None:
    """Run ``step`` in a transaction whose DDL gives way to readers, retrying with backoff."""
    delay = 0.01
    for _ in range(FLIP_ATTEMPTS):
        try:
            with transaction(engine) as conn:
                dialect.bound_lock_wait(conn)
                return step(conn)
        except DatabaseError as exc:
            if not dialect.is_lock_timeout(exc.__cause__):
                raise
        log.info("%s: readers hold the view; retrying in %.2fs", what, delay)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise FlipError(f"{what}: the view stayed busy with readers through {FLIP_ATTEMPTS} attempts; try again")


def _stage(engine: Engine, dialect: Dialect, table: str, version: int, alias: str = state.DEFAULT_ALIAS) -> None:
    """Add a ready version to the view's UNION ahead of the flip, so the flip itself moves one row."""

    def step(conn: Connection) -> None:
        dialect.lock(conn, f"pipeline:{table}")
        pointer = state.get_pointer(conn, table, alias)
        if pointer is None or version in pointer.view_versions:
            return None
        active = state.get_version(conn, table, pointer.version)
        members = _members(conn, table, active.columns) if active else []
        if version not in [m.version for m in members]:
            return None  # other columns: the flip rebuilds the view for them
        _write_view(conn, dialect, table, alias, members, same_columns=True)
        state.set_view_versions(conn, table, alias, [m.version for m in members])
        return None

    _with_lock_retry(engine, dialect, f"{table}: staging version {version}", step)


def _flip(engine: Engine, dialect: Dialect, table: str, version: int, *, reason: str, clock: Clock,
          alias: str = state.DEFAULT_ALIAS) -> FlipResult:
    """Point ``table`` at ``version`` in one transaction and log the flip."""

    def step(conn: Connection) -> FlipResult:
        dialect.lock(conn, f"pipeline:{table}")
        target = state.get_version(conn, table, version)
        if target is None:
            raise FlipError(f"{table} has no version {version}")
        if target.status != "ready":
            raise FlipError(f"{table} version {version} is {target.status}, not ready; only ready versions "
                            "can be activated")
        pointer = state.get_pointer(conn, table, alias)
        if pointer is not None and version in pointer.view_versions:
            members = list(pointer.view_versions)
        else:
            listed = _members(conn, table, target.columns)
            active = state.get_version(conn, table, pointer.version) if pointer else None
            _write_view(conn, dialect, table, alias, listed,
                        same_columns=active is not None and active.columns == target.columns)
            members = [m.version for m in listed]
        now = clock()
        state.set_pointer(conn, table, alias, version, members, now)
        from_version = pointer.version if pointer else None
        state.record_flip(conn, table, alias, from_version, version, now, reason, _actor())
        return FlipResult(table, alias, from_version, version)

    result = _with_lock_retry(engine, dialect, f"{table}: flip to version {version}", step)
    assert result is not None
    log.info("%s: pointer moved from version %s to %d", table, result.from_version, version)
    return result


def activate(engine: Engine, table: str, version: int, *, reason: str = "activate",
             clock: Clock = state.utcnow) -> FlipResult:
    """Point ``table``'s view at a retained ``version``: the same O(1) flip a run ends with."""
    _require_table(engine, table)
    return _flip(engine, dialect_for(engine), table, version, reason=reason, clock=clock)


def rollback(engine: Engine, table: str, to: int | None = None, *, clock: Clock = state.utcnow) -> FlipResult:
    """Flip ``table`` back to version ``to``, or to the newest ready version older than the active one."""
    _require_table(engine, table)
    with reading(engine) as conn:
        pointer = state.get_pointer(conn, table)
        usable = [v.version for v in state.list_versions(conn, table) if v.status == "ready"]
    if pointer is None:
        raise FlipError(f"{table} has no active version to roll back from")
    if to is None:
        to = previous_version(usable, pointer.version)
        if to is None:
            raise FlipError(f"{table}: no ready version older than the active version {pointer.version}")
    if to == pointer.version:
        raise FlipError(f"{table}: version {to} is already active")
    return _flip(engine, dialect_for(engine), table, to, reason="rollback", clock=clock)


def _require_table(engine: Engine, table: str) -> None:
    with reading(engine) as conn:
        if not state.has_schema(conn) or table not in state.list_tables(conn):
            raise FlipError(f"no prediction table {table!r} in this database (see `pipeline status`)")
