"""PostgreSQL, the production target: binary COPY for loads, advisory locks, bounded DDL lock waits."""

from __future__ import annotations

import contextlib
import hashlib
from datetime import date
from typing import Callable, Iterator, Sequence

import pandas as pd
import psycopg
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.contract import Contract
from pipeline.dialects.base import RUN_DATE, Columns, Dialect, arrow_chunks, grant
from pipeline.errors import DatabaseError, JobLocked, SourceError, first_line

#: How long view DDL may wait for readers before it gives up and retries.
LOCK_TIMEOUT = "20ms"
#: pg_locks' row for a granted bigint advisory lock whose halves are %(hi)s and %(lo)s.
_ADVISORY = ("l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
             "AND l.classid = %(hi)s::bigint::oid AND l.objid = %(lo)s::bigint::oid")


class PostgresqlDialect(Dialect):
    name = "postgresql"
    HAS_ADVISORY_LOCK = True
    HAS_REPLACE_VIEW = True

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

        def still_held() -> None:
            try:
                held = conn.exec_driver_sql(f"SELECT COUNT(*) FROM pg_locks l WHERE {_ADVISORY} "
                                            "AND l.pid = pg_backend_pid()", parts).scalar()
            except SQLAlchemyError:
                held = 0
            if not held:
                raise DatabaseError(f"lost the run lock on {name} (its database connection dropped); "
                                    "not publishing, since another run may have started")

        try:
            yield still_held
        finally:
            try:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": key})
            except SQLAlchemyError:
                pass  # the connection is gone, and the lock went with it
            conn.close()

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

    def replace_view(self, conn: Connection, view: str, select_sql: str, same_columns: bool,
                     grants_from: str | None = None) -> None:
        """As the generic one; and since PostgreSQL cannot drop a view other views read, the views built on
        this one (an application's) are dropped with it when its columns change, and made again from their
        own definitions, with their grants. One that reads a column the new version no longer has fails
        the publish, naming it."""
        if same_columns:
            super().replace_view(conn, view, select_sql, same_columns, grants_from)
            return
        built_on = conn.exec_driver_sql(_VIEWS_ON, {"v": self.quote(view)}).all()
        saved = [(name, definition, _grants(conn, name)) for name, definition in built_on]
        for name, _, _ in reversed(saved):
            conn.exec_driver_sql(f"DROP VIEW {name}")
        super().replace_view(conn, view, select_sql, same_columns, grants_from)
        for name, definition, grants in saved:
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql(f"CREATE VIEW {name} AS {definition}")
            except SQLAlchemyError as exc:
                raise DatabaseError(f"{view} changes its columns, and view {name}, which reads it, cannot be made "
                                    f"again on the new ones: {first_line(exc)}") from None
            grant(conn, name, grants)

    def bound_lock_wait(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return isinstance(getattr(exc, "orig", exc), psycopg.errors.LockNotAvailable)

    def load_sql(self, name: str, columns: Columns) -> str:
        return f"COPY {self.quote(name)} ({self.column_list([c for c, _ in columns])}) FROM STDIN (FORMAT BINARY)"

    def load(self, conn: Connection, name: str, columns: Columns, frame: pd.DataFrame) -> None:
        """Binary COPY through psycopg 3, on the connection's own transaction."""
        raw = conn.connection.driver_connection
        sql = self.load_sql(name, columns)
        types = [self.type_sql(t).lower() for _, t in columns]
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            copy.set_types(types)
            for row in self.rows(frame):
                copy.write_row(row)

    def read_query(self, engine: Engine, query: str, run_date: date | None, chunk_size: int,
                   contract: Contract | None = None) -> Iterator[pd.DataFrame]:
        """Read through ADBC: rows arrive as Arrow record batches, several times faster than a cursor,
        and their schema carries the server's column types."""
        import adbc_driver_manager
        import adbc_driver_postgresql.dbapi as adbc

        params: tuple[date | None, ...] = ()
        if RUN_DATE.search(query):
            query, params = RUN_DATE.sub("$1::date", query), (run_date,)
        uri = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with adbc.connect(uri) as conn, conn.cursor() as cursor:
                cursor.execute(query, params or None)
                if cursor.description is None:
                    raise SourceError("it returns no rows to score (is it a SELECT?)")
                yield from arrow_chunks(cursor.fetch_record_batch(), chunk_size, contract or Contract())
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


def _adbc_message(exc: Exception) -> str:
    """ADBC prefixes the server's message with its own codes; keep what the server said."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    marker = "ERROR: "
    return text.split(marker, 1)[1] if marker in text else text
