"""SQLite: the embedded default. WAL so readers never wait for the writer; explicit BEGIN so DDL is transactional."""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

import pandas as pd
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from pipeline.dialects.base import Columns, Dialect

#: Execution option a writer sets so its transaction takes the write lock up front.
WRITE_OPTION = "pipeline_write"


class SQLiteDialect(Dialect):
    name = "sqlite"

    @classmethod
    def configure(cls, engine: Engine) -> None:
        """Hand transactions to SQLAlchemy: pysqlite's own handling runs DDL outside them.

        This is the recipe from SQLAlchemy's pysqlite documentation ("Serializable
        isolation / Savepoints / Transactional DDL"), with BEGIN IMMEDIATE for writers so
        that two writers queue on the busy timeout instead of failing to upgrade a lock.
        """

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA busy_timeout = 30000")
            try:
                dbapi_connection.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError:
                pass  # a read-only file keeps its journal mode; writes to it fail with a clear error later

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "DEFERRED"
            conn.exec_driver_sql(f"BEGIN {mode}")

    def load(self, conn: Connection, name: str, columns: Columns, frame: pd.DataFrame) -> None:
        marks = ", ".join("?" for _ in columns)
        sql = f"INSERT INTO {self.quote(name)} ({self.column_list([c for c, _ in columns])}) VALUES ({marks})"
        conn.exec_driver_sql(sql, self.rows(frame))

    def add_unique_key(self, conn: Connection, name: str, keys: Sequence[str]) -> None:
        conn.exec_driver_sql(
            f"CREATE UNIQUE INDEX {self.quote(name + '__key')} ON {self.quote(name)} ({self.column_list(keys)})"
        )
