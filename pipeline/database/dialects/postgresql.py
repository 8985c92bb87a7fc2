"""PostgreSQL, the production target: binary COPY for loads, advisory locks, bounded DDL lock waits, and
serving from a partitioned table whose partitions come and go without a lock any reader holds."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Sequence

import psycopg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.database.dialects.base import RUN_DATE, SINCE, Columns, Dialect, arrow_chunks, grant, session_lock
from pipeline.errors import AuditError, DatabaseError, JobLocked, SourceError, first_line
from pipeline.names import gate_table, lineage_log, lineage_table, serving_table, version_table

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.contract import Contract

#: How long view DDL may wait for readers before it gives up and retries.
LOCK_TIMEOUT = "20ms"
log = logging.getLogger("pipeline")

#: How long the end of a publish waits for statements begun before it to let go of a version that leaves the
#: serving set; past it the version is left "detach pending" (no new statement sees it) and finished later.
DETACH_WAIT = "2s"
#: How long a flip waits at most for statements that may have been planned before an attach.
PLAN_WAIT = 0.5
#: How long attaching a table no view reads may wait for its lock (past deadlock_timeout, so autovacuum yields).
ATTACH_WAIT = "3s"
#: pg_locks' row for a granted bigint advisory lock whose halves are %(hi)s and %(lo)s.
_ADVISORY = ("l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
             "AND l.classid = %(hi)s::bigint::oid AND l.objid = %(lo)s::bigint::oid")


#: ``valid_to`` of a lineage's rows that no version has closed yet: its newest version's.
OPEN = 2147483647

#: SQLSTATEs of passing faults: shutting down or starting up, too many connections, serialization, deadlock.
TRANSIENT_STATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})


class PostgresqlDialect(Dialect):
    name = "postgresql"
    HAS_REPLACE_VIEW = True
    LINEAGES = True
    #: The server's time now, not its transaction's start.
    CLOCK_SQL = "SELECT clock_timestamp()"

    def lock(self, conn: Connection, key: str) -> None:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": _lock_key(conn, key)})

    @contextlib.contextmanager
    def run_lock(self, engine: Engine, name: str) -> Iterator[Callable[[], None]]:
        """A session advisory lock on a connection of its own: the server drops it with the connection."""
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            key = _lock_key(conn, f"pipeline-run:{name}")
            parts = {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}
            taken = conn.exec_driver_sql("SELECT pg_try_advisory_lock(%(key)s)", {"key": key}).scalar()
            if not taken:
                holder = conn.exec_driver_sql(
                    f"SELECT a.pid, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    f"WHERE {_ADVISORY} AND l.pid <> pg_backend_pid()", parts).first()
                conn.close()
                who = f"backend pid {holder[0]} from {holder[1] or 'a local socket'}" if holder else "another session"
                raise JobLocked(f"{name} is being written by another run ({who})")
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database error: {first_line(exc)}") from exc

        with session_lock(conn, name, (f"SELECT COUNT(*) FROM pg_locks l WHERE {_ADVISORY} "
                                       "AND l.pid = pg_backend_pid()", parts),
                          ("SELECT pg_advisory_unlock(%(key)s)", {"key": key})) as still_held:
            yield still_held

    def dependents(self, conn: Connection, table: str) -> list[str]:
        rows = conn.exec_driver_sql(
            "SELECT DISTINCT c.relkind, c.oid::regclass::text FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class c ON c.oid = r.ev_class "
            "WHERE d.refobjid = to_regclass(%(t)s) AND c.oid <> d.refobjid "
            "UNION SELECT 'f', conrelid::regclass::text FROM pg_constraint "
            "WHERE confrelid = to_regclass(%(t)s) AND contype = 'f'",
            {"t": self.quote(table)})
        kinds = {"v": "view", "m": "materialized view", "f": "foreign key from"}
        return [f"{kinds.get(kind, 'object')} {name}" for kind, name in rows]

    def grants(self, conn: Connection, view: str) -> list[tuple[str, str, bool]]:
        return _grants(conn, self.quote(view))

    def grant_select(self, conn: Connection, view: str, roles: Sequence[str]) -> None:
        """A reader needs no right on the version tables: PostgreSQL checks what a view reads with its owner's
        rights (the pipeline's role), so SELECT on the view and USAGE on the schema are enough."""
        if not roles:
            return
        for role, exists in conn.exec_driver_sql(_UNGRANTED, {"v": self.quote(view), "roles": list(roles)}):
            if exists:
                conn.exec_driver_sql(f"GRANT SELECT ON {self.quote(view)} TO {self.quote(role)}")
            else:
                log.warning("%s: role %s ([output] grant_select) does not exist; not granted", view, role)

    def missing_roles(self, engine: Engine, roles: Sequence[str]) -> list[str]:
        try:
            with engine.connect() as conn:
                return list(conn.exec_driver_sql("SELECT r FROM unnest(%(roles)s::text[]) AS r WHERE NOT EXISTS "
                                                 "(SELECT 1 FROM pg_roles WHERE rolname = r)",
                                                 {"roles": list(roles)}).scalars())
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database error: {first_line(exc)}") from exc

    def replace_view(self, conn: Connection, view: str, select_sql: str, same_columns: bool,
                     grants_from: str | None = None) -> None:
        """As the generic one; and since PostgreSQL cannot drop a view other views read, the views built on
        this one (an application's) are dropped with it when its columns change, and made again from their
        own definitions, with their grants. One that reads a column the new version no longer has fails
        the publish, naming it."""
        built_on = [] if same_columns else conn.exec_driver_sql(_VIEWS_ON, {"v": self.quote(view)}).all()
        saved = [(name, definition, _grants(conn, name)) for name, definition in built_on]
        for name, _, _ in reversed(saved):
            conn.exec_driver_sql(f"DROP VIEW {name}")
        super().replace_view(conn, view, select_sql, same_columns, grants_from)
        conn.exec_driver_sql(f"COMMENT ON VIEW {self.quote(view)} IS '{_view_comment(select_sql)}'")
        for name, definition, grants in saved:
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql(f"CREATE VIEW {name} AS {definition}")
            except SQLAlchemyError as exc:
                raise DatabaseError(f"{view} changes its columns, and view {name}, which reads it, cannot be made "
                                    f"again on the new ones: {first_line(exc)}") from None
            grant(conn, name, grants)

    def view_select(self, table: str, alias: str, members: Sequence[tuple[str, int]], columns: Columns,
                    lineages: bool = False) -> str:
        """The view reads the partitioned table of its columns through the pointer gate.

        Each serving version is a partition (LIST on ``model_version``); the gate is an InitPlan
        that runtime pruning compares with the partition bounds, so only the pointer's partition
        is executed. Versions come and go by ATTACH and DETACH ... CONCURRENTLY, neither of which
        conflicts with a reader's lock: the view itself changes only with its columns.

        With ``lineages``, each partition is a lineage (LIST on ``lineage``) and the gate names the lineage and
        the version whose range a row must hold: ``width_bucket(v, valid_from, valid_to, 1) = 1`` is
        ``valid_from <= v < valid_to`` in one gate reference, which plans a lookup a tenth faster than two
        (bench/topup_design/REPORT.md); a lookup probes the key ``(keys, valid_to)``.
        """
        cols = self.column_list([c for c, _ in columns])
        version = self.gate_sql(table, alias)
        if lineages:
            parent = self.quote(serving_table(table, columns, lineages=True))
            return (f"SELECT {cols}, {version} AS model_version FROM {parent} "
                    f"WHERE lineage = {self.gate_sql(table, alias, 'lineage')} "
                    f"AND width_bucket({version}, valid_from, valid_to, 1) = 1")
        return (f"SELECT {cols}, model_version FROM {self.quote(serving_table(table, columns))} "
                f"WHERE model_version = {version}")

    def gate_sql(self, table: str, alias: str, column: str = "version") -> str:
        """The gate reads ``<table>__gate``, a heap of one row per alias without an index, which the flip updates
        with the pointer: planning its seq scan costs a lookup a quarter less than an index scan of
        ``pipeline_pointer`` (pgbench, simple protocol, 0.46x of direct against 0.37x)."""
        return f"(SELECT g.{column} FROM {self.quote(gate_table(table))} g WHERE g.alias = '{alias}')"

    def set_gate(self, conn: Connection, table: str, alias: str, version: int, columns: Columns,
                 lineage: int | None = None) -> None:
        """A version of a lineage sets the gate's lineage too (a gate made by an older release has the column once
        a lineage is attached, :meth:`serve`); others leave it, which their view does not read."""
        gate = self.quote(gate_table(table))
        values = {"v": version, "a": alias, "l": lineage}
        column, value = (", lineage", ", %(l)s") if lineage is not None else ("", "")
        if not conn.exec_driver_sql(f"UPDATE {gate} SET (version{column}) = ROW(%(v)s{value}) WHERE alias = %(a)s",
                                    values).rowcount:
            conn.exec_driver_sql(f"INSERT INTO {gate} (alias, version{column}) VALUES (%(a)s, %(v)s{value})", values)

    def view_serves(self, conn: Connection, view: str, select_sql: str) -> bool:
        """PostgreSQL keeps a view as a parse tree, not as written: each view the pipeline makes carries the
        digest of its SELECT in its comment (:meth:`replace_view`), one catalog read to compare."""
        found = conn.exec_driver_sql("SELECT obj_description(to_regclass(%(v)s), 'pg_class')",
                                     {"v": self.quote(view)}).scalar()
        return found == _view_comment(select_sql)

    def serve(self, conn: Connection, table: str, version: int, columns: Columns, lineage: int | None = None) -> bool:
        """Attach the version's table (its lineage's) to the partitioned table of its columns (made on first use).

        ATTACH takes SHARE UPDATE EXCLUSIVE on the parent, which no reader conflicts with; the
        table carries a ``model_version`` column (a default, stored in no row) and a CHECK that
        matches the partition bound (a lineage's: ``lineage``, from :meth:`mark_lineage`), so attaching
        skips the validation scan. Once attached, the CHECK goes, in the same transaction (ATTACH holds the
        table's ACCESS EXCLUSIVE lock already): the planner tests every CHECK of a partition against a
        lookup's WHERE clause, a tenth of a simple-protocol lookup's cost (bench/results.md). DETACH ...
        CONCURRENTLY adds one back (PostgreSQL duplicates the partition constraint), so that attaching the
        table again, for a rollback, skips the scan too.
        """
        q = self.quote
        if lineage is None:
            parent, physical, bound = serving_table(table, columns), version_table(table, version), version
        else:
            parent, physical, bound = serving_table(table, columns, True), lineage_table(table, lineage), lineage
        found = conn.exec_driver_sql("SELECT inhparent::regclass::text, inhdetachpending FROM pg_inherits "
                                     "WHERE inhrelid = to_regclass(%(t)s)", {"t": q(physical)}).first()
        if found is not None and not found[1]:
            return False  # attached already: the common case of every flip, one catalog read
        if found is not None:  # a detach that readers from before held up: finish it first, if they are gone
            conn.exec_driver_sql(f"ALTER TABLE {found[0]} DETACH PARTITION {q(physical)} FINALIZE")
        gate = q(gate_table(table))
        if conn.exec_driver_sql("SELECT to_regclass(%(p)s)", {"p": q(parent)}).scalar() is None:
            typed = ", ".join(f"{q(c)} {self.type_sql(t)}" for c, t in columns)
            if lineage is None:
                conn.exec_driver_sql(f"CREATE TABLE {q(parent)} ({typed}, model_version integer NOT NULL) "
                                     "PARTITION BY LIST (model_version)")
            else:
                conn.exec_driver_sql(f"CREATE TABLE {q(parent)} ({typed}, lineage integer NOT NULL, valid_from "
                                     "integer NOT NULL, valid_to integer NOT NULL) PARTITION BY LIST (lineage)")
            conn.exec_driver_sql(f"COMMENT ON TABLE {q(parent)} IS 'pipeline: the versions of {table} its views "
                                 f"can serve, one {'partition' if lineage is None else 'lineage'} each; read the "
                                 "view, which picks the active one'")
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {gate} (alias text NOT NULL, "
                                 "version integer NOT NULL, lineage integer)")
        if lineage is not None and not conn.exec_driver_sql(_HAS_COLUMN, {"t": gate, "c": "lineage"}).scalar():
            # a gate made by an older release: one moment's lock, which the publish tries again for
            self.bound_lock_wait(conn)
            conn.exec_driver_sql(f"ALTER TABLE {gate} ADD COLUMN lineage integer")
        if lineage is not None or not self.dependents(conn, physical):
            # no reader can queue behind a lock on the table (no view reads it, or the version views of a
            # lineage that is not attached: read by name only): wait long enough for autovacuum, which gives
            # way after deadlock_timeout, to let go of a freshly loaded table
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ATTACH_WAIT}'")
        if lineage is None and not conn.exec_driver_sql(_HAS_COLUMN, {"t": q(physical), "c": "model_version"}).scalar():
            conn.exec_driver_sql(f"ALTER TABLE {q(physical)} ADD COLUMN model_version integer NOT NULL "
                                 f"DEFAULT {version}, ADD CONSTRAINT {q(physical + '__ver')} "
                                 f"CHECK (model_version = {version})")
        conn.exec_driver_sql(f"ALTER TABLE {q(parent)} ATTACH PARTITION {q(physical)} FOR VALUES IN ({bound})")
        key = "model_version" if lineage is None else "lineage"
        for (check,) in conn.exec_driver_sql(_BOUND_CHECKS, {"t": q(physical), "c": key}).all():
            conn.exec_driver_sql(f"ALTER TABLE {q(physical)} DROP CONSTRAINT {q(check)}")
        self.bound_lock_wait(conn)
        return True

    def mark_lineage(self, conn: Connection, name: str, columns: Columns, keys: Sequence[str], lineage: int) -> None:
        """Columns ``lineage``, ``valid_from`` and ``valid_to`` (defaults, stored in no row), the CHECKs that let
        an ATTACH skip its scan, the key ``(keys, valid_to)`` (one open row per key: a top-up that failed to close
        one fails instead of serving two), and the log of the keys each top-up changes."""
        q = self.quote
        conn.exec_driver_sql(
            f"ALTER TABLE {q(name)} ADD COLUMN lineage integer NOT NULL DEFAULT {lineage}, "
            f"ADD COLUMN valid_from integer NOT NULL DEFAULT {lineage}, "
            f"ADD COLUMN valid_to integer NOT NULL DEFAULT {OPEN}, "
            f"ADD CONSTRAINT lineage_is CHECK (lineage = {lineage}), "
            "ADD CONSTRAINT range_is_not_empty CHECK (valid_to > valid_from)")
        # each top-up leaves the rows it closed dead on pages all over the table: vacuum every ~1% of them
        conn.exec_driver_sql(f"ALTER TABLE {q(name)} SET (autovacuum_vacuum_scale_factor = 0.01)")
        conn.exec_driver_sql(f"ALTER TABLE {q(name)} ADD CONSTRAINT {q(name + '__key')} "
                             f"PRIMARY KEY ({self.column_list(keys)}, valid_to)")
        types = dict(columns)
        typed = ", ".join(f"{q(k)} {self.type_sql(types[k])}" for k in keys)
        conn.exec_driver_sql(f"CREATE TABLE {q(name + '__log')} (changed_in integer NOT NULL, {typed})")

    def version_view(self, conn: Connection, table: str, version: int, lineage: int, columns: Columns) -> None:
        q = self.quote
        view = q(version_table(table, version))
        conn.exec_driver_sql(
            f"CREATE VIEW {view} AS SELECT {self.column_list([c for c, _ in columns])}, {version} AS model_version "
            f"FROM {q(lineage_table(table, lineage))} WHERE valid_from <= {version} AND valid_to > {version}")
        conn.exec_driver_sql(f"COMMENT ON VIEW {view} IS 'pipeline: version {version} of {table}, the rows of "
                             f"lineage {lineage} it holds'")

    def top_up_lineage(self, conn: Connection, table: str, lineage: int, version: int, scored: str, gone: str,
                       columns: Columns, keys: Sequence[str]) -> int:
        """One UPDATE, two INSERTs, no DDL: nothing a reader waits for, and versions before ``version`` keep their
        rows (a closed row stays in every range below ``version``)."""
        q = self.quote
        lineage_name, log_name = q(lineage_table(table, lineage)), q(lineage_log(table, lineage))
        match = " AND ".join(f"l.{q(k)} = g.{q(k)}" for k in keys)
        closed = conn.exec_driver_sql(f"UPDATE {lineage_name} l SET valid_to = {version} FROM {q(gone)} g "
                                      f"WHERE {match} AND l.valid_to = {OPEN}").rowcount
        names = self.column_list([c for c, _ in columns])
        conn.exec_driver_sql(f"INSERT INTO {lineage_name} ({names}, valid_from) "
                             f"SELECT {names}, {version} FROM {q(scored)}")
        conn.exec_driver_sql(f"INSERT INTO {log_name} (changed_in, {self.column_list(keys)}) "
                             f"SELECT {version}, {self.column_list(keys)} FROM {q(gone)}")
        return closed

    def drop_version(self, conn: Connection, table: str, version: int, lineage: int | None, undo: bool = False,
                     staying: Collection[int] = ()) -> str | None:
        """In a lineage, through its log: undone, the rows ``version`` added are deleted and those it closed
        open again; retired, the rows of the keys top-ups changed that no version staying sees are deleted, and
        the log below the oldest staying version (no undo or retirement reads it again). A DELETE or an UPDATE
        takes no lock a reader waits for; dropping the view does, on the view alone (read by name)."""
        if lineage is None:
            return super().drop_version(conn, table, version, lineage)
        q = self.quote
        lineage_name, log_name = q(lineage_table(table, lineage)), q(lineage_log(table, lineage))
        if not staying and conn.exec_driver_sql("SELECT 1 FROM pg_inherits WHERE inhrelid = to_regclass(%(t)s)",
                                                {"t": lineage_name}).first():
            # dropping a partition would lock the parent every view reads: settle detaches it first
            return (f"{lineage_table(table, lineage)} is still within the views' reach (its detach waits for "
                    "readers from before it); a later publish or gc drops it")
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {q(version_table(table, version))}")
        if not staying:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {log_name}, {lineage_name}")
            return None
        if None in conn.exec_driver_sql("SELECT to_regclass(%(t)s), to_regclass(%(l)s)",
                                        {"t": log_name, "l": lineage_name}).one():
            return None  # the lineage (its table or its log) was dropped by hand: no row left to free or undo
        keys = [k for k in conn.exec_driver_sql(_LOG_KEYS, {"t": log_name}).scalars()]
        match = " AND ".join(f"l.{q(k)} = c.{q(k)}" for k in keys)
        if undo:
            conn.exec_driver_sql(f"DELETE FROM {lineage_name} l USING {log_name} c WHERE c.changed_in = {version} "
                                 f"AND {match} AND l.valid_from = {version}")
            conn.exec_driver_sql(f"UPDATE {lineage_name} l SET valid_to = {OPEN} FROM {log_name} c "
                                 f"WHERE c.changed_in = {version} AND {match} AND l.valid_to = {version}")
            conn.exec_driver_sql(f"DELETE FROM {log_name} WHERE changed_in = {version}")
            return None
        names = self.column_list(keys)
        conn.exec_driver_sql(
            f"DELETE FROM {lineage_name} l USING (SELECT DISTINCT {names} FROM {log_name}) c WHERE {match} "
            "AND NOT EXISTS (SELECT 1 FROM unnest(%(kept)s::integer[]) k WHERE l.valid_from <= k AND k < l.valid_to)",
            {"kept": sorted(staying)})
        conn.exec_driver_sql(f"DELETE FROM {log_name} WHERE changed_in <= %(low)s", {"low": min(staying)})
        return None

    def wait_for_planners(self, engine: Engine) -> None:
        """A statement plans with the partitions it sees then, and reads the pointer in the snapshot it executes
        with, taken a moment later: one planned before an attach committed and executed after the flip would
        find no partition for the new version, and return no rows. So the flip waits (at most
        :data:`PLAN_WAIT`) for the statements running when the attach committed; one running longer took its
        snapshot long before the flip, and reads the old version whole. Sessions of other roles show no
        query_start without pg_read_all_stats: for them, the first pause alone stands."""
        deadline = time.monotonic() + PLAN_WAIT
        time.sleep(0.02)
        try:
            with engine.connect() as conn:
                since = conn.exec_driver_sql("SELECT clock_timestamp() - interval '20 milliseconds'").scalar()
                while time.monotonic() < deadline and conn.exec_driver_sql(_PLANNING, {"t": since}).scalar():
                    conn.rollback()
                    time.sleep(0.005)
        except SQLAlchemyError as exc:
            log.debug("could not watch running statements: %s", first_line(exc))

    def settle(self, engine: Engine, table: str, serving: set[int], lineages: Collection[int] = ()) -> dict[int, str]:
        """Detach every other version and lineage, CONCURRENTLY: that waits for statements begun before it, never
        blocks new ones, and from its first step on no new statement plans the partition. Past
        :data:`DETACH_WAIT` the detach is left pending and finished (FINALIZE) by a later call;
        PostgreSQL allows one pending detach per parent, so others wait their turn. A lineage left is only
        logged: dropping it (:meth:`drop_version`) finds it attached and says so."""
        left: dict[int, str] = {}
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                # no reader's lock conflicts with a detach's, and new statements no longer plan the partition:
                # waiting blocks nobody, and lets autovacuum (which yields after deadlock_timeout) go
                conn.exec_driver_sql(f"SET lock_timeout = '{DETACH_WAIT}'")
                conn.exec_driver_sql(f"SET statement_timeout = '{DETACH_WAIT}'")
                try:
                    rows = conn.exec_driver_sql(_PARTITIONS, {"t": table}).all()
                    for parent, child, pending in sorted(rows, key=lambda r: not r[2]):  # pending ones first
                        kind, number = child[len(table) + 2], int(child[len(table) + 3:])
                        if number in (serving if kind == "v" else lineages):
                            continue
                        how = "FINALIZE" if pending else "CONCURRENTLY"
                        try:
                            conn.exec_driver_sql(f"ALTER TABLE {self.quote(parent)} DETACH PARTITION "
                                                 f"{self.quote(child)} {how}")
                        except SQLAlchemyError as exc:
                            if kind == "v":
                                left[number] = _detach_failed(child, exc)
                            else:
                                log.info("%s: lineage %d: %s", table, number, _detach_failed(child, exc))
                finally:  # the pooled connection goes back with the server's settings
                    conn.exec_driver_sql("RESET lock_timeout")
                    conn.exec_driver_sql("RESET statement_timeout")
        except SQLAlchemyError as exc:
            log.warning("%s: could not look at its serving partitions: %s", table, first_line(exc))
        return left

    def bound_lock_wait(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return isinstance(getattr(exc, "orig", exc), psycopg.errors.LockNotAvailable)

    @classmethod
    def transient_error(cls, error: BaseException) -> bool:
        """A connection refused, reset or dropped (no SQLSTATE, or class 08), a server shutting down or starting
        (57P01-57P03), too many connections (53300), a serialization failure or a deadlock (40001, 40P01); from
        psycopg or from ADBC, which domain queries are read with (:meth:`read_query`)."""
        import adbc_driver_manager

        if getattr(error, "connection_invalidated", False):
            return True  # SQLAlchemy saw the connection die under a statement
        if not isinstance(error, (psycopg.Error, adbc_driver_manager.Error)):
            return False
        state = error.sqlstate
        if state is None:
            return isinstance(error, (psycopg.OperationalError, adbc_driver_manager.OperationalError))
        return state.startswith("08") or state in TRANSIENT_STATES

    def load_sql(self, name: str, columns: Columns) -> str:
        return f"COPY {self.quote(name)} ({self.column_list([c for c, _ in columns])}) FROM STDIN (FORMAT BINARY)"

    def sort_key(self, column: str, type_name: str) -> str:
        return f'{self.quote(column)} COLLATE "C"' if type_name == "text" else self.quote(column)

    def load(self, conn: Connection, name: str, columns: Columns, frame: pd.DataFrame) -> None:
        """Binary COPY through psycopg 3, on the connection's own transaction.

        Raises:
            AuditError: a text value holds the NUL character, which PostgreSQL text cannot store (SQLite and
                MariaDB sources can hold it).
        """
        raw = conn.connection.driver_connection
        sql = self.load_sql(name, columns)
        types = [self.type_sql(t).lower() for _, t in columns]
        try:
            with raw.cursor() as cursor, cursor.copy(sql) as copy:
                copy.set_types(types)
                for row in self.rows(frame):
                    copy.write_row(row)
        except psycopg.errors.CharacterNotInRepertoire as exc:
            found = re.search(r"column (\w+)", exc.diag.context or "")
            column = found.group(1) if found else "a text column"
            raise AuditError(f"{column} holds the NUL character (\\x00), which PostgreSQL text cannot store: remove "
                             f"it in the domain query (replace({column}, char(0), '') on SQLite, REPLACE({column}, "
                             f"CHAR(0), '') on MariaDB)") from None

    @contextlib.contextmanager
    def export_snapshot(self, engine: Engine) -> Iterator[str | None]:
        """``pg_export_snapshot()`` of a REPEATABLE READ transaction held open until the block ends: a snapshot
        can be imported only while the transaction that exported it lives, so the server's
        ``idle_in_transaction_session_timeout`` must not end it while the load runs."""
        with contextlib.ExitStack() as stack:
            try:
                conn = stack.enter_context(engine.connect())
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                conn.begin()  # rolled back as the connection closes
                conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
                exported = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
            except SQLAlchemyError as exc:
                raise SourceError(first_line(exc)) from None
            yield exported

    def read_query(self, engine: Engine, query: str, run_date: date | None, chunk_size: int,
                   contract: Contract | None = None, since: datetime | None = None,
                   snapshot: str | None = None) -> Iterator[pd.DataFrame]:
        """Read through ADBC: rows arrive as Arrow record batches, several times faster than a cursor,
        and their schema carries the server's column types. ``:since`` is a ``timestamptz``: compared with a
        ``timestamp`` column, that column is read in the session's ``TimeZone``, as ``now()`` stamped it. With
        ``snapshot``, the query reads as of it (ADBC's connection is in a transaction from the start, and SET
        TRANSACTION must come first in it)."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        from pipeline.contract import Contract

        params: tuple[date | str | None, ...] = ()
        if RUN_DATE.search(query):
            query, params = RUN_DATE.sub("$1::date", query), (run_date,)
        if since is not None and SINCE.search(query):  # ISO text with its offset: no time zone guessed on the way
            params += (since.astimezone(timezone.utc).isoformat(),)
            query = SINCE.sub(f"${len(params)}::timestamptz", query)
        try:
            with adbc.connect(conninfo(engine)) as conn, conn.cursor() as cursor:
                if snapshot is not None:
                    literal = snapshot.replace("'", "''")
                    cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    cursor.execute(f"SET TRANSACTION SNAPSHOT '{literal}'")
                cursor.execute(query, params or None)
                if cursor.description is None:
                    raise SourceError("it returns no rows to score (is it a SELECT?)")
                contract = contract or Contract()
                batches = _as_values(cursor.fetch_record_batch(), contract.keys)
                yield from arrow_chunks(batches, chunk_size, contract)
        except adbc_driver_manager.Error as exc:
            raise SourceError(_adbc_message(exc)) from None

    def partition_query(self, query: str, columns: Sequence[str], partition: int, partitions: int) -> str | None:
        """Hash the rows' key columns in the server, so a worker reads only its own partition.

        Each column's text is hashed, seeded with the hash of the columns before it (about
        twice as fast as hashing the whole ``ROW(...)::text``); NULL hashes like '', so a
        row with a NULL key lands in a partition, and the key check then refuses it.
        """
        hashed = "0"
        for column in columns:
            hashed = f"hashtextextended(COALESCE(pipeline_domain.{self.quote(column)}::text, ''), {hashed})"
        bucket = f"(({hashed} % {partitions}) + {partitions}) % {partitions}"
        return (f"SELECT * FROM ({query.strip().rstrip(';')}\n) AS pipeline_domain "
                f"WHERE {bucket} = {partition}")

    def add_unique_key(self, conn: Connection, name: str, keys: Sequence[str]) -> None:
        conn.exec_driver_sql(
            f"ALTER TABLE {self.quote(name)} ADD CONSTRAINT {self.quote(name + '__key')} "
            f"PRIMARY KEY ({self.column_list(keys)})"
        )


#: The views built on a view (%(v)s), directly or through others, each with its definition, in an order they can
#: be created in.
_VIEWS_ON = """
WITH RECURSIVE built_on(oid, depth) AS (
    SELECT r.ev_class, 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
     WHERE d.refobjid = to_regclass(%(v)s) AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, b.depth + 1 FROM built_on b JOIN pg_depend d ON d.refobjid = b.oid
      JOIN pg_rewrite r ON r.oid = d.objid
     WHERE r.ev_class <> d.refobjid AND b.depth < 32
)
SELECT c.oid::regclass::text, pg_get_viewdef(c.oid) FROM built_on b JOIN pg_class c ON c.oid = b.oid
 WHERE c.relkind = 'v' GROUP BY c.oid ORDER BY max(b.depth), 1
"""


#: Of the roles %(roles)s, those not granted SELECT on view %(v)s (when it exists), each with whether it exists.
_UNGRANTED = """
SELECT r.name, g.oid IS NOT NULL FROM unnest(%(roles)s::text[]) AS r(name)
  LEFT JOIN pg_roles g ON g.rolname = r.name
 WHERE to_regclass(%(v)s) IS NOT NULL AND NOT EXISTS (
       SELECT 1 FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        WHERE c.oid = to_regclass(%(v)s) AND a.privilege_type = 'SELECT' AND a.grantee = g.oid)
"""

#: Statements of this database running since before %(t)s, but this session's.
_PLANNING = """
SELECT count(*) FROM pg_stat_activity
 WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND datname = current_database() AND query_start < %(t)s
"""

#: The version tables of table %(t)s attached to a partitioned table of the current schema, and whether each one's
#: detach is pending.
_PARTITIONS = """
SELECT p.relname, c.relname, i.inhdetachpending FROM pg_inherits i
  JOIN pg_class p ON p.oid = i.inhparent JOIN pg_class c ON c.oid = i.inhrelid
 WHERE p.relkind = 'p' AND p.relnamespace = current_schema()::regnamespace
   AND c.relname ~ ('^' || %(t)s || '__[vl][0-9]+$')
"""

#: The CHECK constraints of table %(t)s (as SQL) on its column %(c)s alone: the partition bound's, which a lookup's
#: planning would test again.
_BOUND_CHECKS = """
SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%(t)s) AND contype = 'c'
   AND conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = to_regclass(%(t)s) AND attname = %(c)s)]
"""

#: Whether table %(t)s (as SQL) has column %(c)s.
_HAS_COLUMN = """
SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(%(t)s) AND attname = %(c)s AND NOT attisdropped
"""

#: The key columns of a lineage's log %(t)s (as SQL): all its columns but ``changed_in``.
_LOG_KEYS = """
SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%(t)s) AND attnum > 0 AND NOT attisdropped
   AND attname <> 'changed_in' ORDER BY attnum
"""


def _detach_failed(child: str, exc: SQLAlchemyError) -> str:
    """Why ``child`` is still within the views' reach: another publish or ``gc`` detached it (42P01) or is
    detaching it (55000) since this one listed it, or else a reader holds it."""
    done_elsewhere = (psycopg.errors.UndefinedTable, psycopg.errors.ObjectNotInPrerequisiteState)
    if isinstance(getattr(exc, "orig", None), done_elsewhere):
        return f"another process detached it first (a publish or gc at the same time) ({first_line(exc)})"
    return (f"{child} is held by a reader (a statement or transaction begun before the publish); a later publish "
            f"or gc detaches it ({first_line(exc)})")


def _view_comment(select_sql: str) -> str:
    """The comment of a view the pipeline made: what it is, and the digest of the SELECT it was made from."""
    digest = hashlib.sha256(select_sql.encode()).hexdigest()[:16]
    return f"made by the pipeline; read it, do not change it (definition {digest})"


def _grants(conn: Connection, relation: str) -> list[tuple[str, str, bool]]:
    """Who besides its owner may use ``relation`` (an SQL name): (privilege, grantee as SQL, grantable) each."""
    rows = conn.exec_driver_sql(
        "SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
        "ELSE quote_ident(pg_get_userbyid(a.grantee)) END, a.is_grantable "
        "FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a "
        "WHERE c.oid = to_regclass(%(v)s) AND a.grantee <> c.relowner ORDER BY 2, 1", {"v": relation})
    return [(privilege, grantee, bool(grantable)) for privilege, grantee, grantable in rows]


def _lock_key(conn: Connection, name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` in the connection's schema.

    Advisory locks are per database, not per schema: the schema is part of the key so
    that two schemas with a table of the same name do not lock each other out.
    """
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar() or ""
    digest = hashlib.sha256(f"{schema}.{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def conninfo(engine: Engine) -> str:
    """The libpq connection string of ``engine``'s connections, for clients that are not SQLAlchemy's (ADBC).

    Built from the arguments the engine's own driver gets, as keyword=value pairs: a URL rendered back would
    carry a space of ``options=-c search_path=x`` as ``+``, which libpq reads as a ``+``, not a space."""
    known = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
    _, params = engine.dialect.create_connect_args(engine.url)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if k in known})


#: PostgreSQL types ADBC reads into an Arrow type that holds another value than ``pandas.read_sql`` gives, each with
#: what it gives and the cast (of ``{c}``, the column) that reads the value itself.
_MISREAD = {
    "money": ("an integer count of its smallest unit (12.34 as 1234)", "{c}::numeric"),
    "oid": ("a signed 32-bit integer (4294967295 as -1)", "{c}::bigint"),
    # an encoder fitted on read_sql's timedeltas takes DateOffsets for values it never saw: other predictions
    "interval": ("pandas DateOffset objects, not the timedeltas pandas.read_sql gives", "extract(epoch from {c})"),
}
#: Below these (microseconds, days since 1970), no PostgreSQL timestamp or date lies, 4714-11-24 BC being its first
#: day: ADBC shifts 'infinity' and '-infinity' to Arrow's epoch with a wrap, which lands them there.
_FLOORS = {"timestamp": -211_813_488_000_000_000, "date": -2_440_588}
#: Types ADBC has no Arrow type for whose binary wire format is their text in UTF-8: read as text.
_TEXT_WIRE = frozenset({"citext"})


def _as_values(reader: Any, keys: Collection[str] = ()) -> Iterator[Any]:
    """The record batches of an ADBC result, refusing (naming the column and the cast to make) what ADBC gives in
    another form than the value: a type in :data:`_MISREAD` (money, oid, interval), a type it has no Arrow type
    for (the bytes of PostgreSQL's binary wire format: timetz, inet, ranges...) but those in :data:`_TEXT_WIRE`,
    which become text, and infinite timestamps and dates, which would reach the model as dates in year -290278 or
    fail in pandas without a word of which column. Arrays and composites are refused from the schema, as the
    contract refuses them: ADBC fails to read an anonymous ``ROW(...)`` (a record) with an ``ArrowInvalid`` naming
    no column.

    A ``char(n)`` key is stored as PostgreSQL casts it to text, without its padding, since PostgreSQL compares
    it so: stored padded, it would match no row of its source in a join. Features keep the padding, as
    ``pandas.read_sql`` gives them.

    Raises:
        SourceError: such a column, or such a value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.contract import nested_values

    floors, texts, trimmed, schema = [], [], [], reader.schema
    for i, field in enumerate(reader.schema):
        typname = (field.metadata or {}).get(b"POSTGRESQL:type", b"").decode()
        name = field.name
        if typname.startswith("unnamed<oid:"):
            typname = f"type oid {typname[12:-1]}"
        if pa.types.is_nested(field.type):
            raise nested_values(name)
        if typname in _MISREAD:
            form, cast = _MISREAD[typname]
        elif isinstance(field.type, pa.OpaqueType) and field.type.storage_type == pa.binary():
            if typname in _TEXT_WIRE:
                texts.append(i)
                schema = schema.set(i, field.with_type(pa.string()))
                continue
            form, cast = "the bytes of its binary wire format", "{c}::text"
        else:
            if typname == "bpchar" and name in keys:
                trimmed.append(i)
            elif pa.types.is_timestamp(field.type):
                floors.append((i, name, pa.int64(), _FLOORS["timestamp"]))
            elif pa.types.is_date32(field.type):
                floors.append((i, name, pa.int32(), _FLOORS["date"]))
            continue
        raise SourceError(f"domain column {name!r} is PostgreSQL {typname}, which ADBC reads as {form}: "
                          f"cast it in the query ({cast.format(c=name)})")
    for batch in reader:
        if texts or trimmed:
            columns = list(batch.columns)
            for i in texts:
                columns[i] = columns[i].storage.cast(pa.string())  # checks that the bytes are UTF-8
            for i in trimmed:
                columns[i] = pc.utf8_rtrim(columns[i], characters=" ")
            batch = pa.RecordBatch.from_arrays(columns, schema=schema)
        for i, name, integers, floor in floors:
            low = pc.min(batch.column(i).view(integers)).as_py()
            if low is not None and low < floor:
                raise SourceError(f"domain column {name!r} holds infinity or -infinity, which pandas cannot hold: "
                                  f"map it in the query (CASE WHEN isfinite({name}) THEN {name} END gives NULL)")
        yield batch


def _adbc_message(exc: Exception) -> str:
    """ADBC prefixes the server's message with its own codes; keep what the server said."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    marker = "ERROR: "
    return text.split(marker, 1)[1] if marker in text else text
