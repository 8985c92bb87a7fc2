"""Change-driven top-ups: a new version made from the active one and the rows the source says changed.

A hash-based top-up (:mod:`pipeline.run.topup`) still reads the whole domain to find what
changed. With ``[domain] changed`` the source lists it instead: the rows new or changed since
``:since`` (the watermark the active version's run took from the source's clock as it began)
and, with ``removed``, the keys that left. Only those are read and scored. Where the database
keeps lineages (:func:`in_lineages`: PostgreSQL) they are added to the active version's lineage,
which its other rows stay in; elsewhere those rows are copied inside the database. A top-up that
cannot be trusted (no active version, no watermark, another model or settings) is a full run
instead, and says why, as is every ``full_every``-th run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, Iterator

import pandas as pd
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pipeline.contract import value_kind
from pipeline.database import schema, state
from pipeline.database.dialects import Dialect
from pipeline.database.transactions import reading
from pipeline.errors import AuditError, ModelError, PipelineError, SourceError
from pipeline.jobspec import Factor, Job
from pipeline.names import LINEAGE_COLUMNS, version_table
from pipeline.run import topup
from pipeline.run.context import RunContext
from pipeline.run.domain import Domain
from pipeline.run.model import Model
from pipeline.run.scoring import Scorer
from pipeline.run.stages import closing
from pipeline.run.store import VersionWriter, fill
from pipeline.serve.retention import drop_version

log = logging.getLogger("pipeline")


@dataclass(frozen=True)
class Plan:
    """How a run builds its version: in full (the default), from the domain's hashes, or from the changes."""

    #: A hash-based top-up (``--incremental`` of a job without ``changed``).
    hashes: bool = False
    #: The version a change-driven top-up builds on; None: not one.
    active: state.Version | None = None
    #: Why a run that was to be a top-up is a full one.
    full_because: str | None = None
    #: Whether the version is kept in a lineage (:func:`in_lineages`): a full run starts one, a top-up adds to
    #: the active version's.
    lineages: bool = False

    @property
    def top_up(self) -> bool:
        return self.hashes or self.active is not None

    def lineage(self, version: int) -> int | None:
        """The lineage ``version`` is kept in: its own (a full run starts it), the active version's (a top-up), or
        none."""
        if not self.lineages:
            return None
        return version if self.active is None else self.active.lineage


def plan(context: RunContext, model: Model, settings: str) -> Plan:
    """Decide how the run builds its version; ``settings`` is the job's settings digest for ``model``.

    Raises:
        PipelineError: a top-up the job cannot have (see :func:`pipeline.run.topup.check`).
    """
    job, options = context.job, context.options
    lineages = in_lineages(job, context.dialect)
    if lineages:
        _check_lineage_columns(job)
    if options.full or not (options.incremental or job.domain.incremental):
        return Plan(lineages=lineages)
    if job.domain.changed is None:
        return Plan(hashes=True)
    topup.check(job)
    with reading(context.engine) as conn:
        active = state.active_version(conn, context.table) if schema.has_schema(conn) else None
        why = _why_full(context, model, settings, active)
        if why is None and lineages:
            why = _why_not_in_lineage(conn, context, active)
    if why is None:
        return Plan(active=active, lineages=lineages)
    log.warning("%s: a full run, not a top-up: %s", context.table, why)
    return Plan(full_because=why, lineages=lineages)


def in_lineages(job: Job, dialect: Dialect) -> bool:
    """Whether the job's versions share lineages: a job with ``[domain] changed`` on a database that keeps them
    (PostgreSQL). A top-up then writes only what changed, in place of a copy of every unchanged row."""
    return dialect.LINEAGES and job.domain.changed is not None


def _check_lineage_columns(job: Job) -> None:
    """Refuse, before anything is built, a key or a column passed through named like a lineage's own columns."""
    taken = [c for c in (*job.domain.keys, *job.output.include) if c in LINEAGE_COLUMNS]
    if taken:
        raise PipelineError(f"{job.output.table}: domain column(s) {', '.join(taken)} have the name of a column the "
                            f"versions' lineage keeps ({', '.join(LINEAGE_COLUMNS)}: see [domain] changed); rename "
                            "them in the query")


def _why_not_in_lineage(conn: Connection, context: RunContext, active: state.Version | None) -> str | None:
    """Why the active version cannot be topped up in its lineage, or None. A lineage's open rows are its newest
    version's: a version newer than the active one there that is ready (a rollback, or a run that did not activate
    its version, left it) keeps them, so the top-up would build on it instead; a new lineage is a full run."""
    assert active is not None
    if active.lineage is None:
        return (f"version {active.version} is not kept in a lineage (made by an older release, or before the job had "
                "domain.changed); a full run starts one")
    if not context.dialect.has_version(conn, context.table, active.version):
        return f"version {active.version}'s lineage is gone (dropped by hand)"
    newer = [v.version for v in state.list_versions(conn, context.table)
             if v.lineage == active.lineage and v.version > active.version and v.status == "ready"]
    if newer:
        return (f"version {max(newer)}, newer than the active version {active.version} in its lineage, is ready (a "
                "rollback, or a run that did not activate it, left it); a full run starts a new lineage")
    return None


def _why_full(context: RunContext, model: Model, settings: str, active: state.Version | None) -> str | None:
    """Why the active version cannot be topped up, or None."""
    if active is None:
        return "there is no active version to top up"
    version = f"version {active.version}"
    if active.model_sha256 != model.sha256:
        return (f"{version} was scored by another model (sha256 {active.model_sha256[:12]}; the job's is "
                f"{model.sha256[:12]})")
    if active.settings_sha256 != settings:
        return f"{version} was made with other settings (method, features, outputs, keys or default row)"
    if active.watermark is None:
        return (f"{version} recorded no watermark to read changes from (it was made by a run of a job without "
                "domain.changed, or by an older release)")
    every, done = context.job.domain.full_every, active.top_ups or 0
    if every is not None and done + 1 >= every:
        return f"domain.full_every = {every} (top-ups since the last full run: {done})"
    return None


def watermark(context: RunContext) -> datetime:
    """The source's clock now: taken as a run of a job with ``changed`` begins, before it reads anything, so the
    next top-up's ``:since`` lists every row changed after this run's reads began."""
    domain = Domain(context.job.domain, context.engine, context.logical_date)
    try:
        return domain.clock()
    finally:
        domain.close()


@dataclass(frozen=True)
class Applied:
    """What a change-driven top-up wrote besides the rows it scored."""

    copied: int
    #: The rows the version must hold: the active version's, less the keys changed or gone, plus those scored.
    expected: int


def apply(context: RunContext, conn: Connection, writer: VersionWriter, scorer: Scorer, active: state.Version,
          progress: Callable[[int], None] | None = None) -> Applied:
    """Fill ``writer``'s table (made here, with the active version's columns) with the changed rows, scored,
    and the active version's other rows, copied; or, for a version in a lineage, add the scored rows to the
    lineage and close the rows of the keys listed (after undoing what versions above the active one left there).
    A key that ``changed`` lists is scored even when ``removed`` lists it too: ``changed`` reads the domain as it
    is now."""
    job, dialect = context.job, context.dialect
    keys = list(job.domain.keys)
    writer.columns = list(active.columns)
    lineage = writer.lineage
    if lineage is None:
        dialect.create_table(conn, writer.name, writer.columns, keys)
    else:
        _undo_above(conn, context, active, lineage.version)
        writer.name = "pipeline_top_up_rows"  # the rows scored, a temporary table moved into the lineage at the end
        dialect.create_scratch(conn, writer.name, writer.columns)
    listed: list[pd.DataFrame] = []

    types, stored = dict(active.columns), [*keys, *job.output.include]

    def noted(chunks: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        with closing(chunks):  # a check that stops the stream closes its reader
            for chunk in chunks:
                listed.append(_same_kinds(chunk[stored], types)[keys])
                yield chunk

    assert job.domain.changed is not None
    since = _since(active)
    with _named("changed"), contextlib.closing(_reader(context, job.domain.changed, since)) as changed:
        scored = fill(writer, noted(scorer.checking(changed.chunks())), scorer, job, progress)
    if job.domain.removed is not None:
        with _named("removed"), contextlib.closing(_reader(context, job.domain.removed, since)) as removed, \
                closing(removed.chunks()) as chunks:
            listed.extend(_same_kinds(chunk[keys], types) for chunk in chunks)
    gone = pd.concat(listed, ignore_index=True).drop_duplicates() if listed else pd.DataFrame(columns=keys)
    if lineage is None:
        copied, held = topup.copy_except(conn, dialect, writer.name, version_table(context.table, active.version),
                                         active.columns, keys, gone, count_held=True)
        writer.rows += copied
        return Applied(copied, (active.row_count or 0) - held + scored)
    with topup.gone_table(conn, dialect, "pipeline_top_up_gone", active.columns, keys, gone) as gone_name:
        try:
            with dialect.savepoint(conn):
                held = dialect.top_up_lineage(conn, context.table, lineage.lineage, lineage.version, writer.name,
                                              gone_name, writer.columns, keys)
        except IntegrityError:
            raise AuditError(writer.key_problem()) from None
    dialect.drop_scratch(conn, writer.name)
    copied = (active.row_count or 0) - held
    writer.rows += copied
    return Applied(copied, copied + scored)


def _undo_above(conn: Connection, context: RunContext, active: state.Version, version: int) -> None:
    """Undo what versions above ``active`` in its lineage left there (failed or abandoned top-ups, or retired ones
    a rollback left behind; :func:`plan` took a ready one for a full run), newest first, so that the lineage's open
    rows are the active version's."""
    for v in sorted(state.list_versions(conn, context.table), key=lambda v: -v.version):
        if v.lineage == active.lineage and active.version < v.version < version:
            drop_version(conn, context.dialect, context.table, v)  # none is ready: each is undone


@contextlib.contextmanager
def _named(query: str) -> Iterator[None]:
    """Name the change query a failure came from: "domain query failed" alone points at the domain's own query."""
    try:
        yield
    except (SourceError, ModelError) as exc:
        raise type(exc)(f"[domain] {query}: {exc}") from exc


def _same_kinds(frame: pd.DataFrame, types: dict[str, str]) -> pd.DataFrame:
    """``frame`` (keys, and columns passed through), refused in one line where a column is of another kind than
    the active version's: the version is made with its types, and ``'5'`` is not ``5`` to the copy."""
    for column in frame.columns:
        kind = value_kind(frame[column])
        if kind is not None and kind != types[column]:
            raise SourceError(f"it returns {column} as {kind} values where the active version's {column} is "
                              f"{types[column]}; cast it to that type in the query")
    return frame


@dataclass(frozen=True)
class Pending:
    """What a change-driven top-up would read now (``pipeline plan``), without reading the whole domain."""

    active: state.Version
    since: datetime
    #: Rows ``changed`` lists since the watermark (to score).
    changed: int
    #: Keys ``removed`` lists since the watermark (None: the job has no ``removed``).
    removed: int | None


def pending(context: RunContext, active: state.Version) -> Pending:
    """Count the rows a top-up of ``active`` would read: ``changed`` and ``removed`` since its watermark."""
    job, since = context.job, _since(active)
    assert job.domain.changed is not None

    def count(name: str, query: str) -> int:
        with _named(name), contextlib.closing(_reader(context, query, since)) as reader:
            return sum(len(chunk) for chunk in reader.chunks())

    removed = job.domain.removed
    return Pending(active, since, count("changed", job.domain.changed),
                   count("removed", removed) if removed is not None else None)


def _since(active: state.Version) -> datetime:
    """``:since`` for a top-up of ``active``: its watermark to the second, so a source that stamps whole seconds
    (truncated) still lists a change made in the watermark's second."""
    assert active.watermark is not None
    return active.watermark.replace(microsecond=0)


def _reader(context: RunContext, query: str, since: datetime) -> Domain:
    """A change query (``changed`` or ``removed``) read like the domain's own query, from its database."""
    spec = context.job.domain
    factor = Factor(query=query, source=spec.factors[0].source)
    return Domain(dataclasses.replace(spec, factors=(factor,)), context.engine, context.logical_date, since=since)
