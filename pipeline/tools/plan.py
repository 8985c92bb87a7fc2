"""``pipeline plan``: what a run would do, found by doing everything but the writing.

The checks of :mod:`pipeline.tools.validate` run first (the model loaded and checked, the first chunk
scored); then the domain is listed and counted, and the SQL the run would issue is written out; nothing is
created in the target database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import Column, MetaData, Table
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateTable

from pipeline.cron import next_tick
from pipeline.database import schema, state
from pipeline.database.dialects import dialect_for
from pipeline.database.dialects.base import COLUMN_TYPES
from pipeline.database.engines import redact
from pipeline.database.transactions import reading
from pipeline.jobspec import Job
from pipeline.names import lineage_table, outputs_of, version_table, view_name
from pipeline.run import changes, topup
from pipeline.run.audits import planned_audits
from pipeline.run.context import RunContext, RunOptions
from pipeline.run.domain import Domain
from pipeline.run.executors import describe
from pipeline.run.materialize import held_by, settings_digest, skip_reason
from pipeline.run.model import Model
from pipeline.run.registry import Source
from pipeline.run.store import columns_of
from pipeline.serve.split import unserved
from pipeline.tools.validate import check_job


@dataclass(frozen=True)
class Plan:
    job: str
    target: str
    table: str
    logical_date: date
    version: int                       # the version a run would make
    active_version: int | None
    domain_size: int
    domain_columns: tuple[str, ...]
    keys: tuple[str, ...]
    features: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]  # the version table's columns and types
    model_class: str
    model_sha256: str
    model_location: str                # the model file, or the registry version (models:/NAME/VERSION)
    model_source: Source | None        # a registry model: the version its alias resolved to, and the run
    method: str
    audits: tuple[str, ...]
    sql: tuple[str, ...]
    schedule: str | None
    next_tick: datetime | None
    executor: str
    #: How the version is cut and served: top_k, aliases, the A/B split, the default row.
    serving: tuple[str, ...] = ()
    #: With --incremental: rows to score (new or changed keys), rows copied, active rows changed or gone.
    incremental: tuple[int, int, int] | None = None
    #: A job with ``[domain] changed``, run incrementally: what the top-up would read, or why it would be a full run.
    change_driven: changes.Pending | None = None
    full_because: str | None = None
    #: What the model is handed: (feature, dtype, categories or None) each.
    input_schema: tuple[tuple[Any, ...], ...] = ()
    #: Which class each output column holds.
    labels: tuple[tuple[str, Any], ...] = ()
    #: Feature types that differ from the active version's (allowed by the job, else the plan fails).
    type_changes: tuple[str, ...] = ()
    #: The model's library, the version it was trained with and the one installed.
    library: dict[str, str | None] | None = None
    #: Why the run would make nothing (a ready version holds its work already), or None.
    skipped: str | None = None
    #: Domain columns stored beside the outputs (``[output] include``).
    passthrough: tuple[str, ...] = ()

    @property
    def outputs(self) -> list[tuple[str, str]]:
        """The model's output columns (and ``rank``) of the version table."""
        return outputs_of(self.columns, (*self.keys, *self.passthrough))


def plan_job(job: Job, engine: Engine, logical_date: date, incremental: bool = False) -> Plan:
    """Everything a run of ``job`` would do on ``engine``, without writing anything.

    With ``incremental``, it also counts the keys an incremental run would score and copy.

    Raises:
        PipelineError: the first problem a run would hit (job file, model, domain, scoring).
    """
    checked = check_job(job, engine, logical_date)
    model, scorer, sample = checked.model, checked.scorer, checked.rows
    columns_seen = tuple(map(str, checked.chunk.columns)) if checked.chunk is not None else ()
    keys = list(job.domain.keys)
    how, pending = _change_driven(job, engine, logical_date, model, incremental)
    top_up = topup.from_active(engine, job, model) if incremental and how is None else None
    to_score = 0
    domain = Domain(job.domain, engine, logical_date)
    try:
        for chunk in domain.chunks():
            if top_up is not None:
                to_score += len(top_up.to_score(chunk))
    finally:
        domain.close()
    columns = tuple(columns_of(sample, checked.kinds)) if sample is not None else ()
    with reading(engine) as conn:
        known = schema.has_schema(conn)
        version = state.next_version(conn, job.output.table) if known else 1
        pointer = state.get_pointer(conn, job.output.table) if known else None
        found = state.list_versions(conn, job.output.table) if known else []
    held = held_by(found, job, model, logical_date, domain.fingerprint, pointer.version if pointer else None)
    dialect = dialect_for(engine)
    lineages = changes.in_lineages(job, dialect)
    physical = (lineage_table if lineages else version_table)(job.output.table, version)
    table = Table(physical, MetaData(), *(Column(c, COLUMN_TYPES[t]()) for c, t in columns))
    key = (f"-- then the key: unique ({', '.join(keys)}); ANALYZE {physical}" if not lineages else
           f"-- then the lineage's columns (lineage, valid_from, valid_to) and key: unique ({', '.join(keys)}, "
           f"valid_to); ANALYZE {physical}; the view {version_table(job.output.table, version)} of its rows "
           "(a top-up instead adds its changes to the active version's lineage)")
    sql = (
        str(CreateTable(table).compile(dialect=engine.dialect)).strip(),
        f"-- load {domain.size} rows in chunks of {job.domain.chunk_size}: "
        f"{dialect.load_sql(physical, columns)}",
        key,
        f"-- then the view {job.output.table}, which serves the active version and its rollback target, e.g.\n"
        + dialect.view_select(job.output.table, state.DEFAULT_ALIAS, [(physical, version)], columns, lineages),
    )
    return Plan(job=job.name, target=redact(str(engine.url)), table=job.output.table, logical_date=logical_date,
                version=version, active_version=pointer.version if pointer else None, domain_size=domain.size,
                domain_columns=columns_seen, keys=tuple(keys), passthrough=job.output.include,
                features=model.features, columns=columns, model_class=model.class_name,
                model_sha256=model.sha256, model_location=model.location, model_source=model.source,
                method=model.method, audits=tuple(planned_audits(job.audits, bool(job.output.top_k))), sql=sql,
                schedule=job.schedule, next_tick=next_tick(job),
                executor=describe(job.executor), serving=tuple(serving(job, engine)),
                input_schema=tuple(tuple(row) for row in scorer.schema or ()), labels=model.labels,
                type_changes=tuple(scorer.guard.changes) if scorer.guard else (), library=model.library,
                incremental=None if top_up is None else (to_score, top_up.copied, len(top_up.kept) - top_up.copied),
                change_driven=pending, full_because=how.full_because if how is not None else None,
                skipped=skip_reason(engine, job.output.table, held, logical_date) if held else None)


def _change_driven(job: Job, engine: Engine, logical_date: date, model: Model,
                   incremental: bool) -> tuple[changes.Plan | None, changes.Pending | None]:
    """For a job with ``[domain] changed`` run incrementally (``--incremental`` or ``[domain] incremental``): how
    the run would build its version, as a run decides it, and what its top-up would read; else (None, None)."""
    if job.domain.changed is None or not (incremental or job.domain.incremental):
        return None, None
    context = RunContext(job, engine, dialect_for(engine), logical_date, RunOptions(incremental=True))
    how = changes.plan(context, model, settings_digest(job, model))
    return how, changes.pending(context, how.active) if how.active is not None else None


def serving(job: Job, engine: Engine) -> list[str]:
    """How the table is cut and served, one phrase each: exclusions, columns passed through, top_k, aliases, the
    A/B split, the default row."""
    found = []
    output = job.output
    if job.domain.exclude is not None:
        excluded = job.domain.exclude
        found.append(f"leaving out the domain rows that {excluded.file or excluded.query} lists ([domain] exclude)")
    if output.include:
        found.append(f"with the domain's {', '.join(output.include)} beside the outputs")
    if output.top_k:
        found.append(f"top {output.top_k} per {', '.join(output.group_by)} by {output.rank_by} "
                     f"({'ascending' if output.ascending else 'descending'}), with rank")
    with reading(engine) as conn:
        if schema.has_schema(conn):
            found += [f"alias {p.alias} on v{p.version} ({view_name(job.output.table, p.alias)})"
                      for p in state.list_pointers(conn, job.output.table) if p.alias != state.DEFAULT_ALIAS]
            ab = state.get_split(conn, job.output.table)
            if ab is not None:
                why = unserved(conn, ab)
                found.append(f"A/B split: {ab.percent}% of keys from {ab.alias} in "
                             f"{view_name(job.output.table, 'ab')}" + (f" (not served: {why})" if why else ""))
    if output.default:
        found.append(f"default for unseen keys in {view_name(output.table, 'default')}: "
                     + ", ".join(f"{c} = {v!r}" for c, v in output.default))
    return found
