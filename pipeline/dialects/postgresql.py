"""PostgreSQL, the production target: binary COPY for loads, advisory locks, bounded DDL lock waits."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Iterator, Sequence

import pandas as pd
import psycopg
from sqlalchemy.engine import Connection, Engine

from pipeline.dialects.base import Columns, Dialect
from pipeline.errors import JobLocked

#: How long view DDL may wait for readers before it gives up and retries.
LOCK_TIMEOUT = "20ms"


class PostgresqlDialect(Dialect):
    name = "postgresql"
    HAS_ADVISORY_LOCK = True
    HAS_REPLACE_VIEW = True

    def lock(self, conn: Connection, key: str) -> None:
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": _lock_key(key)})

    @contextlib.contextmanager
    def run_lock(self, engine: Engine, name: str) -> Iterator[None]:
        """A session advisory lock on a connection of its own: the server drops it with the connection."""
        key = _lock_key(f"pipeline-run:{name}")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if not conn.exec_driver_sql("SELECT pg_try_advisory_lock(%(key)s)", {"key": key}).scalar():
                holder = conn.exec_driver_sql(
                    "SELECT a.pid, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                    "AND l.classid = %(hi)s::bigint::oid AND l.objid = %(lo)s::bigint::oid",
                    {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF}).first()
                who = f"backend pid {holder[0]} from {holder[1] or 'a local socket'}" if holder else "another session"
                raise JobLocked(f"{name} is being written by another run ({who})")
            try:
                yield
            finally:
                conn.exec_driver_sql("SELECT pg_advisory_unlock(%(key)s)", {"key": key})

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

    def bound_lock_wait(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return isinstance(getattr(exc, "orig", exc), psycopg.errors.LockNotAvailable)

    def load(self, conn: Connection, name: str, columns: Columns, frame: pd.DataFrame) -> None:
        """Binary COPY through psycopg 3, on the connection's own transaction."""
        raw = conn.connection.driver_connection
        sql = f"COPY {self.quote(name)} ({self.column_list([c for c, _ in columns])}) FROM STDIN (FORMAT BINARY)"
        types = [self.type_sql(t).lower() for _, t in columns]
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            copy.set_types(types)
            for row in self.rows(frame):
                copy.write_row(row)

    def add_unique_key(self, conn: Connection, name: str, keys: Sequence[str]) -> None:
        conn.exec_driver_sql(
            f"ALTER TABLE {self.quote(name)} ADD CONSTRAINT {self.quote(name + '__key')} "
            f"PRIMARY KEY ({self.column_list(keys)})"
        )


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
