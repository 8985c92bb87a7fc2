"""Retention and clean-up: drop old version tables, and reap what dead runs left behind.

Never drops what an alias serves (its active version and rollback target), never drops a
table that another object still reads (it says so instead), and takes a version out of
the views' reach before its table is dropped; a table readers hold is left for later,
never waited on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy.engine import Connection, Engine

from pipeline.database import schema, state
from pipeline.database.dialects import Dialect, dialect_for
from pipeline.database.transactions import reading, retry_on_lock, transaction
from pipeline.errors import JobLocked, TableError, ViewBusy
from pipeline.jobspec import DEFAULT_KEEP
from pipeline.names import lineage_table, version_table
from pipeline.phases import checkpoint
from pipeline.serve.pointer import actor, attach, require_table, serving, serving_set, settle, write_view

log = logging.getLogger("pipeline")

ABANDONED = ("abandoned: the run's end was never recorded (its process killed, its machine lost, or its database "
             "unreachable as it ended: its log then holds its error)")
#: What a run that died after its version was made ready says: its work is done, what follows a publish is not.
DIED_READY = ("its version was made ready (and served, unless the run did not activate it), then the run died before "
              "it recorded its end: what follows a publish (retention, notifications) did not run")


@dataclass
class GcResult:
    table: str
    retired: list[int] = field(default_factory=list)
    cleaned: list[int] = field(default_factory=list)        # failed versions whose tables were dropped
    kept: dict[int, str] = field(default_factory=dict)      # version -> why it had to stay


#: Tries at dropping one retired table that readers hold, before it is left to the next run or gc.
DROP_ATTEMPTS = 5


def gc(engine: Engine, table: str, keep: int = DEFAULT_KEEP, *, clock: Callable = state.utcnow) -> GcResult:
    """Keep the newest ``keep`` ready versions (plus what every alias serves: its active version, rollback target
    and the version it served before its last flip); drop the rest.

    Dropped ready versions become ``retired``; failed versions lose their partial tables. The
    views serve none of the doomed versions (a view from before serving sets were bounded is
    made to); then each table is dropped in a transaction of its own, and one that readers still
    hold (a long transaction, a backup) is skipped and named: the next run or ``gc`` drops it.
    """
    if keep < 1:
        raise TableError("--keep must be at least 1")
    require_table(engine, table)
    dialect = dialect_for(engine)
    reap(engine, table, clock=clock)

    def unlist(conn: Connection) -> list[state.Version]:
        dialect.lock(conn, f"pipeline:{table}")
        found = state.list_versions(conn, table)
        pointers = state.list_pointers(conn, table)
        ready = [v.version for v in found if v.status == "ready"]
        protected = set(sorted(ready)[-keep:]) | serving_set(conn, table)  # and what every alias serves
        doomed = [v for v in found if (v.status == "ready" and v.version not in protected)
                  or (v.status == "failed" and _exists(conn, table, v.version, v.lineage))]
        gone = {v.version for v in doomed}
        for pointer in pointers:  # a view made before serving sets were bounded may list doomed versions
            if gone & set(pointer.view_versions):
                kept = serving(conn, dialect, table, pointer.version, None)
                attach(conn, dialect, table, kept)
                dialect.set_gate(conn, table, pointer.alias, pointer.version, kept[0].columns, kept[0].lineage)
                write_view(conn, dialect, table, pointer.alias, kept, kept[0])  # the view's DDL: no reader plans
                state.set_view_versions(conn, table, pointer.alias, [v.version for v in kept])
        return doomed

    result = GcResult(table)
    doomed = retry_on_lock(engine, dialect, f"{table}: retention", unlist)
    held = settle(engine, table)
    checkpoint("retiring")
    for v in doomed:
        physical = version_table(table, v.version)

        def drop(conn: Connection) -> str | None:
            dialect.lock(conn, f"pipeline:{table}")  # no flip to it until it is dropped and retired
            if v.version in serving_set(conn, table):
                return "an alias serves it again (activated while gc ran)"
            users = dialect.dependents(conn, physical)
            if users:
                return f"{physical} is still read by {', '.join(users)}"
            if v.lineage is not None and any(b.status == "building" and b.lineage == v.lineage and b.version > v.version
                                             for b in state.list_versions(conn, table)):
                return "a top-up in its lineage is running, which may build on it"
            kept = drop_version(conn, dialect, table, v)
            if kept is None and v.status == "ready":
                state.update_version(conn, table, v.version, status="retired")
            return kept

        try:
            why = held.get(v.version) or retry_on_lock(engine, dialect, f"{table}: dropping {physical}", drop,
                                                       attempts=DROP_ATTEMPTS)
        except ViewBusy:
            why = f"{physical} is held by a reader (a long transaction or a backup); the next run or gc drops it"
        if why is not None:
            result.kept[v.version] = why
        elif v.status == "ready":
            result.retired.append(v.version)
        else:
            result.cleaned.append(v.version)
    for version, why in result.kept.items():
        log.warning("%s: kept version %d: %s", table, version, why)
    return result


def _exists(conn: Connection, table: str, version: int, lineage: int | None = None) -> bool:
    """Whether ``version``'s table or view is there (or its lineage's table, for the version that began it)."""
    return (conn.dialect.has_table(conn, version_table(table, version))
            or (lineage == version and conn.dialect.has_table(conn, lineage_table(table, version))))


def drop_version(conn: Connection, dialect: Dialect, table: str, v: state.Version) -> str | None:
    """Drop what holds ``v``'s rows, in the caller's transaction: its table; in a lineage, its view and the rows no
    other version there sees (a version never ready is undone), and the lineage's table with the last of them.
    Returns why nothing was dropped (see :meth:`Dialect.drop_version`), or None."""
    staying = [] if v.lineage is None else [
        o.version for o in state.list_versions(conn, table)
        if o.lineage == v.lineage and o.version != v.version
        and (o.status in ("ready", "building") or (o.status == "failed" and _exists(conn, table, o.version)))]
    return dialect.drop_version(conn, table, v.version, v.lineage, undo=v.status != "ready", staying=staying)


def reap(engine: Engine, table: str | None = None, *, clock: Callable = state.utcnow) -> list[tuple[str, int]]:
    """Mark ``building`` versions whose run is gone as failed and drop their partial tables.

    A run holds its table's run lock until it ends, and the operating system or the
    server releases it when the process dies; so a ``building`` version whose lock is
    free was abandoned. Tables with a live run are left alone.
    """
    dialect = dialect_for(engine)
    with reading(engine) as conn:
        if not schema.has_schema(conn):
            return []
        tables = sorted(t for t in state.unfinished_tables(conn) if table is None or t == table)
    reaped = []
    for name in tables:
        try:
            with dialect.run_lock(engine, name):
                reaped += reap_locked(engine, dialect, name, clock)
        except JobLocked:
            continue
    return reaped


def reap_locked(engine: Engine, dialect: Dialect, table: str, clock: Callable) -> list[tuple[str, int]]:
    """:func:`reap` for a caller that already holds ``table``'s run lock.

    A run that died while publishing may have left its version attached for serving: it is
    detached first, and a table readers still hold is left for ``gc`` (it drops failed versions' tables).
    """
    with reading(engine) as conn:  # most runs find none: then nothing to take out of serving first
        building = any(v.status == "building" for v in state.list_versions(conn, table))
    held = settle(engine, table) if building else {}
    with transaction(engine) as conn:
        dialect.lock(conn, f"pipeline:{table}")
        stale = [v for v in state.list_versions(conn, table) if v.status == "building"]
        for v in stale:
            if v.version not in held:
                drop_version(conn, dialect, table, v)
            state.update_version(conn, table, v.version, status="failed", finished_at=clock(), error=ABANDONED)
            log.warning("%s: version %d was abandoned by a dead run; marked failed", table, v.version)
        made = {v.version: v.status for v in state.list_versions(conn, table)}
        for run in state.running_runs(conn, table):
            if run.version is not None and made.get(run.version) == "ready":
                state.finish_run(conn, run.id, "succeeded", clock(), run.version, DIED_READY)
                log.warning("%s: run %d made version %d ready, then died; recorded succeeded", table, run.id,
                            run.version)
            else:
                state.finish_run(conn, run.id, "failed", clock(), None, ABANDONED)
        repair_pointers(conn, dialect, table, clock)
    return [(table, v.version) for v in stale]


def repair_pointers(conn: Connection, dialect: Dialect, table: str, clock: Callable) -> None:
    """Where a dead run's view DDL committed on its own (MariaDB) but its pointer did not, make each pointer say
    what its view serves, whole, and log the flip as a repair."""
    pointers = {p.alias: p for p in state.list_pointers(conn, table)}
    for alias in sorted(set(pointers) | {state.DEFAULT_ALIAS}):
        served = dialect.served_version(conn, table, alias)
        found = pointers.get(alias)
        if served is None or (found is not None and found.version == served):
            continue
        before = found.version if found is not None else None
        now = clock()
        state.set_pointer(conn, table, alias, served, [served, *(found.view_versions if found else ())], now)
        state.record_flip(conn, table, alias, before, served, now, "repair: a run died between its view and its "
                          "pointer", actor())
        log.warning("%s: the %s view serves version %d, which a run that died published; its pointer (version "
                    "%s) now says so", table, alias, served, before)
