"""PostgreSQL, the production target: binary COPY for loads, advisory locks, bounded DDL lock waits."""

from __future__ import annotations

import hashlib
from typing import Sequence

import pandas as pd
import psycopg
from sqlalchemy.engine import Connection

from pipeline.dialects.base import Columns, Dialect

#: How long view DDL may wait for readers before it gives up and retries.
LOCK_TIMEOUT = "100ms"


class PostgresqlDialect(Dialect):
    name = "postgresql"
    HAS_ADVISORY_LOCK = True
    HAS_REPLACE_VIEW = True

    def lock(self, conn: Connection, key: str) -> None:
        digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": digest})

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
