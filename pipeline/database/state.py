"""Every read and write of the pipeline's bookkeeping tables (defined in :mod:`pipeline.database.schema`):
versions, pointers and their flips, audits, splits, partitions of distributed runs, and runs.

Read functions are apart from write functions; both take a Connection inside a
transaction someone else owns, and answer records rather than rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Sequence

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, Row

from pipeline.database.schema import (MAX_VERSION, RUN_STATUSES, STATUSES, audits, flips, grants, has_schema,
                                      partitions, pointer, runs, splits, versions)
from pipeline.errors import TableError
from pipeline.names import DEFAULT_ALIAS, outputs_of


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _json(value: str | None) -> Any:
    return json.loads(value) if value else None


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands timestamps back naive; every stored timestamp is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


#: The largest LIMIT every database takes (a larger one overflows SQLite's and PostgreSQL's integers).
MAX_LIMIT = 2**31 - 1
#: How the record of a scheduled tick that no run stood for begins (a failed run with no version).
MISSED = "missed"


@dataclass(frozen=True)
class Version:
    table_name: str
    version: int
    job: str
    logical_date: date | None
    status: str
    keys: tuple[str, ...]
    columns: tuple[tuple[str, str], ...]
    row_count: int | None
    domain_size: int | None
    domain_fingerprint: str | None
    model_path: str
    model_sha256: str
    model_class: str | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    #: Where a registry model came from: uri, name, version, alias, run_id, signature; None for a model file.
    model_source: dict[str, Any] | None = None
    #: The model's library: name, trained_with (where the file says) and installed versions.
    model_library: dict[str, Any] | None = None
    #: What the model was handed: ``[[feature, dtype, categories or None], ...]``.
    input_schema: list[list[Any]] | None = None
    #: Feature types that differ from the version active when this one was made (allowed by the job).
    type_changes: str | None = None
    #: Which class each output column holds: ``[[column, label], ...]``.
    output_labels: list[list[Any]] | None = None
    #: A digest of the job settings that shape the rows (method, features, outputs, keys, top-k, defaults);
    #: None for versions made before it was recorded.
    settings_sha256: str | None = None
    #: Per feature, the share of NULLs and the deciles of numeric ones (see :mod:`pipeline.run.gates`); None
    #: unless the job has input gates.
    input_profile: dict[str, Any] | None = None
    #: Domain columns stored beside the outputs (``[output] include``): neither keys nor outputs.
    passthrough: tuple[str, ...] = ()

    #: The source database's clock as the run that made it began: the next top-up's ``:since`` (UTC); None unless
    #: the job has ``[domain] changed``.
    watermark: datetime | None = None
    #: How many top-ups in a row made it since a full run: 0 or None for a full run.
    top_ups: int | None = None
    #: The lineage whose table holds its rows (:func:`pipeline.names.lineage_table`); None: a table of its own.
    lineage: int | None = None

    @property
    def outputs(self) -> list[tuple[str, str]]:
        """The model's output columns (and ``rank``): what audits, diffs and reports compare."""
        return outputs_of(self.columns, (*self.keys, *self.passthrough))

    @classmethod
    def from_row(cls, row: Any) -> "Version":
        m = row._mapping
        return cls(
            table_name=m["table_name"], version=m["version"], job=m["job"], logical_date=m["logical_date"],
            status=m["status"], keys=tuple(json.loads(m["keys"])),
            columns=tuple(tuple(c) for c in json.loads(m["columns"] or "[]")),
            row_count=m["row_count"], domain_size=m["domain_size"], domain_fingerprint=m["domain_fingerprint"],
            model_path=m["model_path"], model_sha256=m["model_sha256"], model_class=m["model_class"],
            started_at=_utc(m["started_at"]), finished_at=_utc(m["finished_at"]), error=m["error"],
            model_source=_json(m["model_source"]), model_library=_json(m["model_library"]),
            input_schema=_json(m["input_schema"]), type_changes=m["type_changes"],
            output_labels=_json(m["output_labels"]), settings_sha256=m.get("settings_sha256"),
            input_profile=_json(m.get("input_profile")), passthrough=tuple(_json(m.get("passthrough")) or ()),
            watermark=_utc(m.get("watermark")), top_ups=m.get("top_ups"),
            lineage=m.get("lineage"),
        )


@dataclass(frozen=True)
class Pointer:
    table_name: str
    alias: str
    version: int
    view_versions: tuple[int, ...]
    updated_at: datetime


@dataclass(frozen=True)
class Run:
    id: int
    job: str
    table_name: str
    logical_date: date
    trigger: str
    scheduled_for: datetime | None
    status: str
    version: int | None
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    host: str | None
    pid: int | None
    #: The upstream gates checked before scoring: ``[[name, passed, detail], ...]``; None when none were.
    gates: list[list[Any]] | None = None
    #: The passing faults (one line each) after which the run tried again; None when its first try ended it.
    retries: list[str] | None = None

    @classmethod
    def from_row(cls, row: Any) -> "Run":
        m = dict(row._mapping)
        for key in ("scheduled_for", "started_at", "finished_at"):
            m[key] = _utc(m[key])
        m["gates"], m["retries"] = _json(m.get("gates")), _json(m.get("retries"))
        return cls(**m)

    @property
    def gates_summary(self) -> str | None:
        """``7 passed``, or the names of the gates that failed; None when the run checked none."""
        if not self.gates:
            return None
        failed = [name for name, passed, _ in self.gates if not passed]
        return f"failed: {', '.join(failed)}" if failed else f"{len(self.gates)} passed"


@dataclass(frozen=True)
class AuditRow:
    name: str
    passed: bool
    detail: str
    checked_at: datetime


@dataclass(frozen=True)
class Flip:
    table_name: str
    alias: str
    from_version: int | None
    to_version: int
    flipped_at: datetime
    reason: str
    actor: str | None


@dataclass(frozen=True)
class Split:
    """The A/B split of a table: ``percent`` % of keys served from ``alias`` through ``<table>__ab``."""

    table: str
    alias: str
    percent: int
    updated_at: datetime | None = None


# -- reads --------------------------------------------------------------------

def get_version(conn: Connection, table: str, version: int) -> Version | None:
    if not 1 <= version <= MAX_VERSION:  # no such version, and binding it would fail (SQLite, PostgreSQL)
        return None
    row = conn.execute(select(versions).where(versions.c.table_name == table,
                                              versions.c.version == version)).first()
    return None if row is None else Version.from_row(row)


def list_versions(conn: Connection, table: str) -> list[Version]:
    rows = conn.execute(select(versions).where(versions.c.table_name == table).order_by(versions.c.version))
    return [Version.from_row(r) for r in rows]


def list_tables(conn: Connection) -> list[str]:
    """Every table the pipeline has written a version of."""
    return list(conn.execute(select(versions.c.table_name).distinct().order_by(versions.c.table_name)).scalars())


def run_tables(conn: Connection) -> list[str]:
    """Every table a run was recorded for, whether or not a version of it was ever made."""
    return list(conn.execute(select(runs.c.table_name).distinct().order_by(runs.c.table_name)).scalars())


def get_pointer(conn: Connection, table: str, alias: str = DEFAULT_ALIAS) -> Pointer | None:
    row = conn.execute(select(pointer).where(pointer.c.table_name == table, pointer.c.alias == alias)).first()
    return None if row is None else _pointer(row)


def active_version(conn: Connection, table: str, alias: str = DEFAULT_ALIAS) -> Version | None:
    """The version ``alias`` (the table's own pointer by default) serves, or None."""
    found = get_pointer(conn, table, alias)
    return None if found is None else get_version(conn, table, found.version)


def list_pointers(conn: Connection, table: str) -> list[Pointer]:
    """Every alias of ``table`` (the default one, champion, included)."""
    rows = conn.execute(select(pointer).where(pointer.c.table_name == table).order_by(pointer.c.alias))
    return [_pointer(row) for row in rows]


def _pointer(row: Any) -> Pointer:
    m = row._mapping
    return Pointer(m["table_name"], m["alias"], m["version"], tuple(json.loads(m["view_versions"])),
                   _utc(m["updated_at"]))


def list_flips(conn: Connection, table: str, alias: str = DEFAULT_ALIAS) -> list[Flip]:
    rows = conn.execute(select(flips).where(flips.c.table_name == table, flips.c.alias == alias)
                        .order_by(flips.c.id))
    return [Flip(r.table_name, r.alias, r.from_version, r.to_version, _utc(r.flipped_at), r.reason, r.actor)
            for r in rows]


def list_audits(conn: Connection, table: str, version: int) -> list[AuditRow]:
    rows = conn.execute(select(audits).where(audits.c.table_name == table, audits.c.version == version)
                        .order_by(audits.c.name))
    return [AuditRow(r.name, bool(r.passed), r.detail, _utc(r.checked_at)) for r in rows]


def unfinished_tables(conn: Connection) -> set[str]:
    """Tables with a ``building`` version or a ``running`` run: what a dead run may have left."""
    building = select(versions.c.table_name).where(versions.c.status == "building")
    running = select(runs.c.table_name).where(runs.c.status == "running")
    return set(conn.execute(building.union(running)).scalars())


def get_split(conn: Connection, table: str) -> Split | None:
    row = conn.execute(select(splits).where(splits.c.table_name == table)).first()
    return None if row is None else Split(row.table_name, row.alias, row.percent, row.updated_at)


def grant_roles(conn: Connection, table: str) -> tuple[str, ...]:
    """The roles ``table``'s views are granted SELECT to, as its last run recorded them."""
    return tuple(conn.execute(select(grants.c.role).where(grants.c.table_name == table)
                              .order_by(grants.c.role)).scalars())


def get_partition(conn: Connection, table: str, version: int, partition: int) -> Row | None:
    """The committed record of one partition of a distributed run, or None."""
    p = partitions.c
    return conn.execute(select(partitions).where(p.table_name == table, p.version == version,
                                                 p.partition == partition)).first()


def require_table(conn: Connection, table: str) -> None:
    """Raise :class:`TableError` unless the pipeline has written a version of ``table`` here."""
    if not has_schema(conn) or table not in list_tables(conn):
        where = conn.engine.url.render_as_string(hide_password=True)
        raise TableError(f"no prediction table {table!r} in this database, {where} (see `pipeline status`)")


def next_version(conn: Connection, table: str) -> int:
    """Versions count up per table and are never reused, failed ones included."""
    current = conn.execute(select(func.max(versions.c.version)).where(versions.c.table_name == table)).scalar()
    return (current or 0) + 1


# -- writes -------------------------------------------------------------------

def insert_version(conn: Connection, *, table: str, version: int, job: str, logical_date: date | None,
                   keys: Sequence[str], model_path: str, model_sha256: str, model_class: str,
                   started_at: datetime, model_source: str | None = None, model_library: dict[str, Any] | None = None,
                   output_labels: Sequence[Sequence[Any]] = (), settings_sha256: str | None = None,
                   passthrough: Sequence[str] = (), lineage: int | None = None) -> None:
    """Record a ``building`` version; ``model_source`` is JSON text (see :class:`pipeline.run.registry.Source`)."""
    conn.execute(versions.insert().values(
        table_name=table, version=version, job=job, logical_date=logical_date, status="building",
        keys=json.dumps(list(keys)), model_path=model_path, model_sha256=model_sha256,
        model_class=model_class, model_source=model_source, started_at=started_at,
        model_library=json.dumps(model_library) if model_library else None,
        output_labels=json.dumps([list(pair) for pair in output_labels]) if output_labels else None,
        settings_sha256=settings_sha256, passthrough=json.dumps(list(passthrough)) if passthrough else None,
        lineage=lineage))


def update_version(conn: Connection, table: str, version: int, **values: Any) -> None:
    """Set fields of one version; ``columns`` is given as a list of (name, type) pairs, ``input_schema`` as a list,
    ``input_profile`` as a dict."""
    for key in ("columns", "input_schema"):
        if values.get(key) is not None:
            values[key] = json.dumps([list(c) for c in values[key]])
    if values.get("input_profile") is not None:
        values["input_profile"] = json.dumps(values["input_profile"])
    if "status" in values and values["status"] not in STATUSES:
        raise ValueError(f"unknown status {values['status']!r}")
    conn.execute(update(versions).where(versions.c.table_name == table, versions.c.version == version)
                 .values(**values))


def set_pointer(conn: Connection, table: str, alias: str, version: int, view_versions: Sequence[int],
                now: datetime) -> None:
    values = dict(version=version, view_versions=json.dumps(sorted(view_versions)), updated_at=now)
    done = conn.execute(update(pointer).where(pointer.c.table_name == table, pointer.c.alias == alias)
                        .values(**values))
    if done.rowcount == 0:
        conn.execute(pointer.insert().values(table_name=table, alias=alias, **values))


def record_flip(conn: Connection, table: str, alias: str, from_version: int | None, to_version: int,
                now: datetime, reason: str, actor: str | None) -> None:
    conn.execute(flips.insert().values(table_name=table, alias=alias, from_version=from_version,
                                       to_version=to_version, flipped_at=now, reason=reason, actor=actor))


def set_view_versions(conn: Connection, table: str, alias: str, view_versions: Sequence[int]) -> None:
    """Record which versions the alias serves now, without moving the pointer."""
    conn.execute(update(pointer).where(pointer.c.table_name == table, pointer.c.alias == alias)
                 .values(view_versions=json.dumps(sorted(view_versions))))


def set_split(conn: Connection, split: Split | None, table: str) -> None:
    """Replace ``table``'s split by ``split`` (None: no split)."""
    conn.execute(delete(splits).where(splits.c.table_name == table))
    if split is not None:
        conn.execute(insert(splits).values(table_name=table, alias=split.alias, percent=split.percent,
                                           updated_at=split.updated_at))


def set_grant_roles(conn: Connection, table: str, roles: Sequence[str]) -> None:
    """Replace the roles recorded for ``table`` (a run's ``[output] grant_select``)."""
    conn.execute(delete(grants).where(grants.c.table_name == table))
    if roles:
        conn.execute(insert(grants), [dict(table_name=table, role=role) for role in roles])


def record_partition(conn: Connection, **values: Any) -> None:
    """Record a partition of a distributed run, in the transaction that commits its rows."""
    conn.execute(insert(partitions).values(**values))


def save_audits(conn: Connection, table: str, version: int, results: Sequence[Any], now: datetime) -> None:
    """Store the latest audit results of a version (objects with ``name``, ``passed``, ``detail``)."""
    conn.execute(delete(audits).where(audits.c.table_name == table, audits.c.version == version))
    if results:
        conn.execute(audits.insert(), [dict(table_name=table, version=version, name=r.name, passed=r.passed,
                                            detail=r.detail, checked_at=now) for r in results])


def start_run(conn: Connection, *, job: str, table: str, logical_date: date, trigger: str,
              scheduled_for: datetime | None, now: datetime, host: str, pid: int,
              retries: Sequence[str] = ()) -> int | None:
    """Record a run as ``running``, with the faults it tried again after before it could (``retries``); None when
    a run of this job already stands for ``scheduled_for``."""
    if scheduled_for is not None and conn.execute(
            select(runs.c.id).where(runs.c.job == job, runs.c.scheduled_for == scheduled_for)).first():
        return None
    result = conn.execute(runs.insert().values(
        job=job, table_name=table, logical_date=logical_date, trigger=trigger, scheduled_for=scheduled_for,
        status="running", started_at=now, host=host, pid=pid, retries=json.dumps(list(retries)) if retries else None))
    return int(result.inserted_primary_key[0])


def record_missed(conn: Connection, *, job: str, table: str, ticks: Sequence[tuple[datetime, date]], trigger: str,
                  error: str, now: datetime, host: str, pid: int) -> None:
    """Record each of ``ticks`` (a UTC tick and its logical date, oldest first) as a failed run saying ``error``, in
    one statement (a long gap holds thousands), but those a run already stands for."""
    if not ticks:
        return
    stood = {_utc(t) for t in conn.execute(select(runs.c.scheduled_for).where(
        runs.c.job == job, runs.c.scheduled_for.between(ticks[0][0], ticks[-1][0]))).scalars()}
    rows = [dict(job=job, table_name=table, logical_date=day, trigger=trigger, scheduled_for=tick, status="failed",
                 started_at=now, finished_at=now, error=error, host=host, pid=pid)
            for tick, day in ticks if tick not in stood]
    if rows:
        conn.execute(runs.insert(), rows)


def finish_run(conn: Connection, run_id: int, status: str, now: datetime, version: int | None = None,
               error: str | None = None) -> None:
    if status not in RUN_STATUSES:
        raise ValueError(f"unknown run status {status!r}")
    conn.execute(update(runs).where(runs.c.id == run_id)
                 .values(status=status, finished_at=now, version=version, error=error))


def fail_recorded_run(conn: Connection, run_id: int, now: datetime, error: str) -> bool:
    """Mark run ``run_id`` failed saying ``error``, unless it succeeded or is gone; whether it was."""
    done = conn.execute(update(runs).where(runs.c.id == run_id, runs.c.status.in_(("running", "failed")))
                        .values(status="failed", finished_at=now, version=None, error=error))
    return done.rowcount == 1


def run_builds(conn: Connection, run_id: int, version: int) -> None:
    """Name the version a running run builds: a run that dies once that version is ready made it (see reaping)."""
    conn.execute(update(runs).where(runs.c.id == run_id).values(version=version))


def reopen_run(conn: Connection, run_id: int, retries: Sequence[str]) -> None:
    """Mark a run ``running`` again for another try, with the faults it tried again after."""
    conn.execute(update(runs).where(runs.c.id == run_id)
                 .values(status="running", finished_at=None, error=None, retries=json.dumps(list(retries))))


def record_gates(conn: Connection, run_id: int, results: Sequence[Sequence[Any]]) -> None:
    """Store the gates a run checked, ``[(name, passed, detail), ...]``, with the run."""
    conn.execute(update(runs).where(runs.c.id == run_id).values(gates=json.dumps([list(r) for r in results])))


def list_runs(conn: Connection, job: str | None = None, limit: int = 50, table: str | None = None) -> list[Run]:
    """The latest runs, newest first, of one job or one table or all (a ``limit`` past any count: all)."""
    query = select(runs).order_by(runs.c.id.desc()).limit(min(limit, MAX_LIMIT))
    if job is not None:
        query = query.where(runs.c.job == job)
    if table is not None:
        query = query.where(runs.c.table_name == table)
    return [Run.from_row(r) for r in conn.execute(query)]


def running_runs(conn: Connection, table: str) -> list[Run]:
    rows = conn.execute(select(runs).where(runs.c.table_name == table, runs.c.status == "running"))
    return [Run.from_row(r) for r in rows]


def last_tick(conn: Connection, job: str) -> datetime | None:
    """The latest cron tick a run of ``job`` stood for."""
    return _utc(conn.execute(select(func.max(runs.c.scheduled_for)).where(runs.c.job == job)).scalar())
