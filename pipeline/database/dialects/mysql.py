"""MariaDB (and ``mysql://`` URLs to it): a domain source, and a target whose flips are one-row InnoDB UPDATEs.

MariaDB's DDL commits the transaction around it and waits for every reader's metadata lock,
and any view with UNION ALL is materialized per statement. So nothing a flip does is DDL:
the views read one shared serving table per column set (``<table>__p<hash>``, every served
version, keyed by ``(model_version, keys)``) joined to a gate table of one row per alias
(``<table>__gate``); a flip updates the gate row with the pointer, in one transaction. The
view changes only with the columns, and that DDL waits at most :data:`VIEW_WAIT` seconds a
try, so readers never queue behind it. ``bench/mariadb_design/REPORT.md`` has the measurements.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterator, Sequence

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from pipeline.database.dialects.base import RUN_DATE, SINCE, Columns, Dialect, grant, session_lock
from pipeline.errors import AuditError, DatabaseError, JobLocked, SourceError, TableError, first_line
from pipeline.names import gate_table, served_table, serving_table, version_table, view_name

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.contract import Contract

log = logging.getLogger("pipeline")

#: The BINARY flag of a result column (``cursor.description[i][7]`` in MariaDB Connector/Python).
BINARY_FLAG = 128
#: Field types of DATE, DATETIME, TIMESTAMP and NEWDATE result columns.
DATE_FIELDS = frozenset({10, 12, 7, 14})
#: How long DDL on an object readers use may wait for their metadata locks, a try (seconds): while it waits,
#: every new reader queues behind it, so the wait is bounded and the step tried again (``SET STATEMENT``).
VIEW_WAIT = 0.05
#: How long a flip's gate UPDATE may wait for a locking reader (``SELECT ... FOR SHARE``) of the gate row, a try.
GATE_WAIT = 1
#: How long a writer waits for another's :meth:`MariaDBDialect.lock` (seconds).
LOCK_WAIT = 600
#: Error numbers of a bounded wait that gave up: lock wait timeout, max_statement_time, NOWAIT.
LOCK_TIMEOUTS = frozenset({1205, 1969, 3572})
#: Error numbers of passing faults: connection refused, gone or lost, server shutting down, too many
#: connections, deadlock, connection killed.
TRANSIENT_ERRORS = frozenset({2002, 2003, 2006, 2013, 2055, 1040, 1053, 1213, 1927, 4031})
#: Error numbers of a server or client that refuses ``LOAD DATA LOCAL``.
LOCAL_FILES_REFUSED = frozenset({1148, 2068, 3948, 4166})
#: Where loads write their CSV chunks: memory, where the machine has it.
_TEMP_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
#: URL parameters of other drivers (PyMySQL, mysqlclient) that Connector/Python has no use for: it always speaks
#: utf8mb4 and returns text as ``str``.
UNICODE_PARAMETERS = ("charset", "use_unicode")
#: Connection info key: the server refused LOAD DATA LOCAL on this connection.
_NO_LOCAL_FILES = "pipeline_no_local_files"
#: Error numbers of keying a table whose key is NULL or repeated.
KEY_ERRORS = frozenset({1062, 1138, 1171, 1265, 1048})
#: Column types of version tables, by portable type name.
TYPES = {"integer": "BIGINT", "float": "DOUBLE", "text": "LONGTEXT", "boolean": "BOOL", "date": "DATE",
         "timestamp": "DATETIME(6)", "timestamptz": "DATETIME(6)", "numeric": "DECIMAL(65,30)"}
#: How text columns are made: utf8mb4 whatever the database's default (latin1 upstream), compared byte for byte
#: without padding. The default collations fold case and accents and ignore trailing spaces, so 'a', 'A' and 'a '
#: would be one key, and a lookup of one would find the others.
TEXT_COLLATION = "CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin"
#: Bytes an InnoDB key may hold, and per character of utf8mb4.
KEY_BYTES, CHAR_BYTES = 3072, 4
#: Bytes a key column of each type takes.
KEY_WIDTH = {"integer": 8, "float": 8, "boolean": 1, "date": 3, "timestamp": 8, "timestamptz": 8, "numeric": 30}
#: Rows of a retired version deleted from a serving table per transaction.
DELETE_CHUNK = 10_000
#: A transaction open this long (seconds) may be a backup that will read any table it listed: none is dropped.
#: ``trx_started`` counts whole seconds, so one begun 1 to 2 seconds before the check may pass unseen.
OLD_TRANSACTION = 1
#: Where the dialect records the digest of each view it made (MariaDB keeps a view's text rewritten).
VIEWS = "pipeline_view_digests"
_VERSION_TABLE = re.compile(r"^(?P<table>.+)__v(?P<version>[0-9]+)$")
#: Connection info key: the connection holds :meth:`MariaDBDialect.lock` locks to release when it is returned.
_HOLDS = "pipeline_user_locks"


class MariaDBDialect(Dialect):
    name = "mariadb"
    HAS_REPLACE_VIEW = True
    TRANSACTIONAL_DDL = False
    NEEDS_DATABASE = True
    #: READ COMMITTED, as on PostgreSQL (and as Django sets for MySQL): under InnoDB's default REPEATABLE READ, a
    #: DELETE that finds no rows gap-locks the end of the index, so two runs recording their first audits (or
    #: grants) at once deadlock on their INSERTs; READ COMMITTED takes no such gap locks.
    ENGINE_OPTIONS = {"isolation_level": "READ COMMITTED"}
    #: The server's time to the microsecond, in UTC whatever the session's time zone.
    CLOCK_SQL = "SELECT UTC_TIMESTAMP(6)"

    @classmethod
    def configure(cls, engine: Engine) -> None:
        """Strict mode (a value that does not fit is an error, not a truncation), local files for loads, and
        :meth:`lock`'s locks released when a transaction's connection goes back to the pool. The session's time
        zone is left alone, so a domain query means what it means in the user's own client; the pipeline's
        times are DATETIME values it writes in UTC."""

        @event.listens_for(engine, "do_connect")
        def _connect_args(dialect: Any, _record: Any, args: Any, kwargs: dict[str, Any]) -> Any:
            """A URL written for PyMySQL or mysqlclient (``?charset=utf8mb4``) connects too, and one with a
            parameter the connector does not take fails in one line naming it, not with a bare TypeError."""
            kwargs.setdefault("local_infile", True)  # loads send their chunks as files (see load)
            for name in UNICODE_PARAMETERS:
                kwargs.pop(name, None)
            try:
                return dialect.loaded_dbapi.connect(*args, **kwargs)
            except TypeError as exc:
                where = engine.url.render_as_string(hide_password=True)
                raise DatabaseError(f"cannot connect to {where}: {exc} (MySQL and MariaDB are read with MariaDB "
                                    "Connector/Python, which takes its own URL parameters)") from None

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
            cursor.close()

        @event.listens_for(engine, "checkin")
        def _checkin(dbapi_connection: Any, record: Any) -> None:
            if record is not None and record.info.pop(_HOLDS, False) and dbapi_connection is not None:
                try:
                    cursor = dbapi_connection.cursor()
                    cursor.execute("SELECT RELEASE_ALL_LOCKS()")
                    cursor.close()
                except Exception:  # noqa: BLE001 - a dead connection took its locks with it
                    record.invalidate()

    # -- reading the domain -------------------------------------------------

    def read_query(self, engine: Engine, query: str, run_date: date | None, chunk_size: int,
                   contract: Contract | None = None, since: datetime | None = None,
                   snapshot: str | None = None) -> Iterator[pd.DataFrame]:
        """Stream through MariaDB Connector/Python's unbuffered cursor in the binary protocol: a server-side
        prepared statement whose numbers and dates arrive as binary values, not text to parse. 1M rows of an int,
        4 floats and a text column, into conformed chunks: 2.1 s, against 5.9 s through mysqlclient and 9.7 s
        through PyMySQL, each with its own server-side cursor (``bench/mysql_drivers.py``).

        ``:run_date`` becomes a ``?`` parameter the server types as DATE; ``:since`` a DATETIME(6) in the session's
        time zone (``FROM_UNIXTIME`` of the watermark's epoch seconds), which compares with a TIMESTAMP column and
        with a DATETIME one that ``NOW()`` stamped. Column kinds come from each result column's field type
        (:func:`pipeline.contract.mysql_kind`), so a chunk of NULLs has its column's dtype."""
        import mariadb

        from pipeline.contract import Contract, mysql_kind

        params: list[Any] = []

        def mark(match: re.Match[str]) -> str:
            if match[0] == ":run_date":
                params.append(run_date)
                return "CAST(? AS DATE)"
            params.append(_epoch(since))
            return "FROM_UNIXTIME(CAST(? AS DECIMAL(20, 6)))"

        query = _PARAMETER.sub(mark, query) if since is not None else RUN_DATE.sub(mark, query)
        contract = contract or Contract()
        try:
            with engine.connect() as conn:
                driver = conn.connection.driver_connection
                self._refuse_invalid_dates(driver, query, tuple(params))
                cursor = driver.cursor(buffered=False, binary=True)
                try:
                    cursor.execute(query, tuple(params))
                    if not cursor.description:
                        raise SourceError("it returns no rows to score (is it a SELECT?)")
                    columns = [d[0] for d in cursor.description]
                    contract.declare(columns, [mysql_kind(d[1], d[3], bool(d[7] & BINARY_FLAG))
                                               for d in cursor.description])
                    while rows := cursor.fetchmany(chunk_size):
                        yield contract.records(rows, columns)
                finally:
                    cursor.close()
        except (mariadb.Error, SQLAlchemyError) as exc:
            raise SourceError(first_line(exc)) from None

    def _refuse_invalid_dates(self, driver: Any, query: str, params: tuple[Any, ...]) -> None:
        """Fail, naming the column, on a zero or partial date ('0000-00-00', '2024-05-00') in the query's result,
        which a lenient sql_mode lets MariaDB store: Connector/Python cannot read one (its bug CONPY-368), and
        fails with a bare SystemError or crashes the process, in either protocol. Only a result with a DATE,
        DATETIME or TIMESTAMP column is looked at (its columns come from ``LIMIT 0`` of it as a derived table,
        which the server answers without running it), in the snapshot the read then uses; the look costs about
        a quarter of the read (1M rows: 0.6 s against 2.2 s)."""
        import mariadb

        query = query.rstrip().rstrip(";")  # as a derived table
        cursor = driver.cursor()
        try:
            try:
                cursor.execute(f"SELECT * FROM ({query}) AS _pipeline_columns LIMIT 0", params)
            except mariadb.Error:
                return  # not a query a derived table can hold: it runs, and fails if it must, as it is
            dates = [d[0] for d in cursor.description or () if d[1] in DATE_FIELDS]
            if not dates:
                return
            driver.rollback()
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            q = self.quote
            flags = [f"{q(c)} IS NOT NULL AND YEAR({q(c)}) * MONTH({q(c)}) * DAYOFMONTH({q(c)}) = 0" for c in dates]
            cursor.execute(f"SELECT {', '.join(flags)} FROM ({query}) AS _pipeline_dates "
                           f"WHERE {' OR '.join(f'({f})' for f in flags)} LIMIT 1", params)
            found = cursor.fetchone()
        finally:
            cursor.close()
        if found is not None:
            column = next(c for c, bad in zip(dates, found) if bad)
            raise SourceError(f"column {column} holds a zero or partial date ('0000-00-00', '2024-05-00'), which "
                              f"MariaDB Connector/Python cannot read (CONPY-368): select it as IF(YEAR({column}) * "
                              f"MONTH({column}) * DAYOFMONTH({column}) = 0, NULL, {column}) AS {column} (NULL, as "
                              "pandas.read_sql gives it), or mend the rows")

    # -- locks --------------------------------------------------------------

    def lock(self, conn: Connection, key: str) -> None:
        """A user lock (``GET_LOCK``) held until the connection goes back to the pool, after its transaction:
        MariaDB has no transaction-scoped advisory lock, and DDL would end a row lock's transaction early."""
        conn.connection.info[_HOLDS] = True
        got = conn.exec_driver_sql("SELECT GET_LOCK(?, ?)", (_lock_name(conn, key), LOCK_WAIT)).scalar()
        if got != 1:
            raise DatabaseError(f"waited {LOCK_WAIT} s for another writer of {key.split(':', 1)[-1]}; try again")

    @contextlib.contextmanager
    def run_lock(self, engine: Engine, name: str) -> Iterator[Callable[[], None]]:
        """``GET_LOCK(name, 0)`` on a connection of its own: the server releases it when the connection dies."""
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            _require_mariadb(conn)
            lock = _lock_name(conn, f"pipeline-run:{name}")
            if conn.exec_driver_sql("SELECT GET_LOCK(?, 0)", (lock,)).scalar() != 1:
                holder = conn.exec_driver_sql(
                    "SELECT p.ID, p.HOST FROM information_schema.PROCESSLIST p WHERE p.ID = IS_USED_LOCK(?)",
                    (lock,)).first()
                conn.close()
                who = f"connection {holder[0]} from {holder[1]}" if holder else "another session"
                raise JobLocked(f"{name} is being written by another run ({who})")
        except SQLAlchemyError as exc:
            raise DatabaseError(f"database error: {first_line(exc)}") from exc

        with session_lock(conn, name, ("SELECT IS_USED_LOCK(?) = CONNECTION_ID()", (lock,)),
                          ("SELECT RELEASE_LOCK(?)", (lock,))) as still_held:
            yield still_held

    def is_lock_timeout(self, exc: BaseException) -> bool:
        return getattr(getattr(exc, "orig", exc), "errno", None) in LOCK_TIMEOUTS

    @classmethod
    def transient_error(cls, error: BaseException) -> bool:
        """Asked of every fault, whatever the target (see :func:`~pipeline.database.dialects.transient`): where
        the driver was never imported (a machine without it), no error can be the driver's."""
        if getattr(error, "connection_invalidated", False):
            return True
        mariadb = sys.modules.get("mariadb")
        return (mariadb is not None and isinstance(error, mariadb.Error)
                and getattr(error, "errno", None) in TRANSIENT_ERRORS)

    # -- version tables -----------------------------------------------------

    def type_sql(self, type_name: str) -> str:
        return TYPES[type_name]

    def column_sql(self, columns: Columns, keys: Sequence[str] = ()) -> str:
        """Column definitions; a text key is a VARCHAR as wide as InnoDB's key allows (a TEXT cannot be keyed).
        Text is utf8mb4 in :data:`TEXT_COLLATION`, whatever the database's defaults: its values are stored and
        compared as their exact characters, as PostgreSQL and SQLite keep them."""
        types = dict(columns)
        texts = [k for k in keys if types.get(k) == "text"]
        room = KEY_BYTES - sum(KEY_WIDTH.get(types.get(k, ""), 8) for k in keys if k not in texts) - 4
        width = max(1, room // CHAR_BYTES // max(1, len(texts)))

        def kind(column: str, type_name: str) -> str:
            if type_name != "text":
                return self.type_sql(type_name)
            return f"{f'VARCHAR({width})' if column in texts else self.type_sql(type_name)} {TEXT_COLLATION}"

        return ", ".join(f"{self.quote(c)} {kind(c, t)}" for c, t in columns)

    def create_table(self, conn: Connection, name: str, columns: Columns, keys: Sequence[str] = ()) -> None:
        conn.exec_driver_sql(f"CREATE TABLE {self.quote(name)} ({self.column_sql(columns, keys)}) ENGINE=InnoDB")

    def drop_scratch(self, conn: Connection, name: str) -> None:
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE {self.quote(name)}")  # a plain DROP TABLE would commit

    def sort_key(self, column: str, type_name: str) -> str:
        return f"CAST({self.quote(column)} AS BINARY)" if type_name == "text" else self.quote(column)

    def load(self, conn: Connection, name: str, columns: Columns, frame: pd.DataFrame) -> None:
        """``LOAD DATA LOCAL INFILE`` of the frame written as CSV by Arrow: 1M rows of five columns in 3.5 s here,
        against 6.2 s for MariaDB Connector/Python's bulk ``executemany`` (``bench/run.py``). Where the server
        refuses local files (``local_infile = OFF``), the ``executemany``. Arrow writes floats in their shortest
        exact form; NaN and infinity (which a DOUBLE cannot hold) become NULL, which the ``outputs_finite``
        audit refuses; times with a zone are stored in UTC."""
        import pyarrow.csv as pacsv

        if not conn.connection.info.get(_NO_LOCAL_FILES):
            table, names, assignments = self._csv(frame, columns)
            handle, path = tempfile.mkstemp(prefix="pipeline-load-", suffix=".csv", dir=_TEMP_DIR)
            os.close(handle)
            try:
                pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
                conn.exec_driver_sql(
                    f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {self.quote(name)} CHARACTER SET utf8mb4 "
                    "FIELDS TERMINATED BY ',' ENCLOSED BY '\"' ESCAPED BY '' LINES TERMINATED BY '\\n' "
                    f"({', '.join(names)}) SET {', '.join(assignments)}")
                self._refuse_altered(conn, name)
                return
            except DBAPIError as exc:
                if getattr(exc.orig, "errno", None) not in LOCAL_FILES_REFUSED:
                    raise
                conn.connection.info[_NO_LOCAL_FILES] = True
                log.debug("the server refuses LOAD DATA LOCAL (%s); loading with executemany", first_line(exc))
            finally:
                os.unlink(path)
        cursor = conn.connection.driver_connection.cursor()
        try:
            cursor.executemany(self.load_sql(name, columns), self.rows(_storable(frame, columns)))
        finally:
            cursor.close()

    def _refuse_altered(self, conn: Connection, name: str) -> None:
        """Fail on a value the last ``LOAD DATA LOCAL`` stored otherwise than given. With LOCAL, the server takes
        even strict mode's errors as warnings (it cannot stop the client's file): a text key longer than its
        VARCHAR is cut short, and would then stand for another key, or collide with one.

        Raises:
            AuditError: a value was truncated or out of its column's range.
        """
        warned = [w for w in conn.exec_driver_sql("SHOW WARNINGS").all() if w[0] != "Note"]  # max_error_count rows
        if not warned:
            return
        message = str(warned[0][2])
        found = re.search(r"column [`']?(?:\w+[`']?\.[`']?)*(\w+)[`']?", message)
        width = conn.exec_driver_sql(
            "SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "AND TABLE_NAME = %(t)s AND COLUMN_NAME = %(c)s AND DATA_TYPE = 'varchar'",
            {"t": name, "c": found.group(1) if found else ""}).scalar()
        why = (f": a text key of more than {width} characters (what InnoDB's key allows for these keys)"
               if width is not None else "")
        raise AuditError(f"MariaDB would not store a value of {name} as given ({message}, counting rows within a "
                         f"chunk){why}")

    def _csv(self, frame: pd.DataFrame, columns: Columns) -> tuple[Any, list[str], list[str]]:
        """The frame as an Arrow table ready for CSV, with the variables and ``SET`` clauses that read it back:
        every valid value is quoted and NULL is an empty unquoted field, so text values carry a one-character
        prefix to tell an empty string from NULL."""
        import pyarrow as pa
        import pyarrow.compute as pc

        frame = _storable(frame, columns)
        arrays, names, assignments = [], [], []
        for i, (column, kind) in enumerate(columns):
            array = pa.array(frame[column], from_pandas=True)
            variable = f"@c{i}"
            if kind == "text":
                array = pc.binary_join_element_wise(pa.scalar("x", pa.large_string()), array.cast(pa.large_string()),
                                                    pa.scalar("", pa.large_string()))
                value = f"IF({variable} = '', NULL, SUBSTRING({variable}, 2))"
            else:
                if kind == "boolean":
                    array = array.cast(pa.int8())
                elif kind == "float":  # a float32 output widened first: its shortest form is another double
                    array = array.cast(pa.float64())
                elif kind in ("timestamp", "timestamptz"):
                    array = array.cast(pa.timestamp("us"))
                value = f"NULLIF({variable}, '')"
            arrays.append(array)
            names.append(variable)
            assignments.append(f"{self.quote(column)} = {value}")
        return pa.Table.from_arrays(arrays, names=names), names, assignments

    def add_unique_key(self, conn: Connection, name: str, keys: Sequence[str]) -> None:
        """The primary key, built after the load (it commits the load: the table is the run's own)."""
        try:
            conn.exec_driver_sql(f"ALTER TABLE {self.quote(name)} ADD PRIMARY KEY ({self.column_list(keys)})")
        except DBAPIError as exc:
            if getattr(exc.orig, "errno", None) in KEY_ERRORS:
                raise IntegrityError(exc.statement, exc.params, exc.orig) from None
            raise

    def floor_sql(self, expression: str) -> str:
        return f"CAST(FLOOR({expression}) AS SIGNED)"

    def analyze(self, conn: Connection, name: str) -> None:
        conn.exec_driver_sql(f"ANALYZE TABLE {self.quote(name)}").all()

    def drop_table(self, conn: Connection, name: str) -> None:
        """Drop a table; a version table's mark and then its rows leave the serving tables first, so that an
        interrupted drop leaves a version that :meth:`serve` copies again whole."""
        found = _VERSION_TABLE.match(name)
        if found is not None:
            table, version = found["table"], int(found["version"])
            if _exists(conn, served_table(table)):
                conn.exec_driver_sql(f"DELETE FROM {self.quote(served_table(table))} WHERE version = ?", (version,))
            for serving in self._serving_tables(conn, table):
                # a transaction per chunk keeps the undo log small; the DROP below commits the caller's anyway
                while conn.exec_driver_sql(f"DELETE FROM {self.quote(serving)} WHERE model_version = ? "
                                           f"LIMIT {DELETE_CHUNK}", (version,)).rowcount >= DELETE_CHUNK:
                    conn.exec_driver_sql("COMMIT")
        kind = "VIEW" if _table_type(conn, name) == "VIEW" else "TABLE"  # a served version's table is a view
        conn.exec_driver_sql(f"SET STATEMENT max_statement_time = {VIEW_WAIT} FOR "
                             f"DROP {kind} IF EXISTS {self.quote(name)}")

    # -- the stable view ----------------------------------------------------

    def view_select(self, table: str, alias: str, members: Sequence[tuple[str, int]], columns: Columns,
                    lineages: bool = False) -> str:
        """The view joins the serving table of its columns to the alias's gate row: MariaDB reads the gate as a
        constant table (a primary-key equality), so a lookup is two primary-key probes and a join is
        ``eq_ref`` on ``(version, key)``, however many versions the serving table holds."""
        cols = ", ".join(f"s.{self.quote(c)}" for c, _ in columns)
        serving = serving_table(table, columns)
        return (f"SELECT {cols}, s.model_version FROM {self.quote(serving)} s JOIN {self.quote(gate_table(table))} g "
                f"ON s.model_version = g.version WHERE g.alias = '{alias}' AND g.serving = '{serving}'")

    def set_gate(self, conn: Connection, table: str, alias: str, version: int, columns: Columns,
                 lineage: int | None = None) -> None:
        """Upsert the alias's gate row for ``columns``; a row of other columns than the view reads is not seen
        until the view is made on them, so it is opened before (and commits with) that DDL."""
        conn.exec_driver_sql(
            f"SET STATEMENT innodb_lock_wait_timeout = {GATE_WAIT} FOR INSERT INTO {self.quote(gate_table(table))} "
            "(alias, serving, version) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE version = VALUE(version)",
            (alias, serving_table(table, columns), version))

    def has_version(self, conn: Connection, table: str, version: int) -> bool:
        """Its rows are in a serving table (whatever became of the view ``<table>__v<N>`` of them) or its own."""
        served = served_table(table)
        if _exists(conn, served) and conn.exec_driver_sql(f"SELECT 1 FROM {self.quote(served)} WHERE version = ?",
                                                          (version,)).first():
            return True
        return super().has_version(conn, table, version)

    def serve(self, conn: Connection, table: str, version: int, columns: Columns, lineage: int | None = None) -> bool:
        """Copy the version into the serving table of its columns (made on first use, with the gate), with its
        mark in ``<table>__served``, in the caller's transaction; nothing if it is marked already. Rows of the
        version an interrupted drop left are deleted first."""
        serving, served, physical = serving_table(table, columns), served_table(table), version_table(table, version)
        self._ensure_serving(conn, table, serving, columns, physical)
        q = self.quote
        if conn.exec_driver_sql(f"SELECT 1 FROM {q(served)} WHERE version = ?", (version,)).first():
            return False
        if _table_type(conn, physical) != "BASE TABLE":  # its rows lived in the serving table only, and left it
            raise TableError(f"{physical} is gone (the version was being retired); it cannot be served again")
        names = self.column_list([c for c, _ in columns])
        conn.exec_driver_sql(f"DELETE FROM {q(serving)} WHERE model_version = ?", (version,))
        conn.exec_driver_sql(f"INSERT INTO {q(serving)} (model_version, {names}) SELECT ?, {names} "
                             f"FROM {q(physical)}", (version,))
        conn.exec_driver_sql(f"INSERT INTO {q(served)} (version, serving) VALUES (?, ?)", (version, serving))
        return True

    def settle(self, engine: Engine, table: str, serving: set[int], lineages: Collection[int] = ()) -> dict[int, str]:
        """Replace the staging table of each version copied whole into a serving table by a view of its rows there,
        so a served version is stored once; what a run, ``diff`` or ``report`` reads as ``<table>__v<N>`` stays
        the same rows. A staging table an old transaction may still read (see :meth:`dependents`) is left for a
        later publish or ``gc``. It never takes a version out of the views' reach: every retained version stays
        served, and a rollback to any is one gate UPDATE."""
        q = self.quote
        try:
            with engine.connect() as conn:
                if not _exists(conn, served_table(table)):
                    return {}
                for version, serving_name in conn.exec_driver_sql(
                        f"SELECT version, serving FROM {q(served_table(table))} ORDER BY version").all():
                    physical = version_table(table, version)
                    kind = _table_type(conn, physical)
                    if kind == "VIEW":
                        continue
                    if kind == "BASE TABLE":
                        users = self.dependents(conn, physical)
                        if users:
                            log.info("%s: %s stays a table while %s", table, physical, ", ".join(users))
                            continue
                        conn.exec_driver_sql(f"SET STATEMENT max_statement_time = {VIEW_WAIT} FOR "
                                             f"DROP TABLE {q(physical)}")
                    names = conn.exec_driver_sql(
                        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND "
                        "TABLE_NAME = ? AND COLUMN_NAME <> 'model_version' ORDER BY ORDINAL_POSITION",
                        (serving_name,)).scalars().all()
                    conn.exec_driver_sql(f"CREATE VIEW {q(physical)} AS SELECT {self.column_list(names)} FROM "
                                         f"{q(serving_name)} WHERE model_version = {int(version)}")
                    conn.commit()
        except SQLAlchemyError as exc:
            log.info("%s: version tables stay as they are for now: %s", table, first_line(exc))
        return {}

    def _ensure_serving(self, conn: Connection, table: str, serving: str, columns: Columns, physical: str) -> None:
        """Make the serving table of these columns, the gate and the marks where missing. That DDL commits the
        caller's transaction, which has written nothing yet (and a snapshot taken before would not see them)."""
        q = self.quote
        wanted = {
            gate_table(table): "(alias VARCHAR(63) NOT NULL, serving VARCHAR(64) NOT NULL, version INT NOT NULL, "
                               "PRIMARY KEY (alias, serving))",
            served_table(table): "(version INT NOT NULL PRIMARY KEY, serving VARCHAR(64) NOT NULL)",
        }
        if not _exists(conn, serving):
            keys = conn.exec_driver_sql(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX", (physical,)).scalars().all()
            wanted[serving] = (f"(model_version INT NOT NULL, {self.column_sql(columns, keys)}, "
                               f"PRIMARY KEY (model_version, {self.column_list(keys)}))")
        for name, ddl in wanted.items():
            if not _exists(conn, name):
                conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {q(name)} {ddl} ENGINE=InnoDB")

    def _serving_tables(self, conn: Connection, table: str) -> list[str]:
        pattern = re.compile(rf"^{re.escape(table)}__p[0-9a-f]{{6}}$")
        found = conn.exec_driver_sql("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                                     "AND TABLE_NAME LIKE ?", (f"{table}\\_\\_p%",)).scalars()
        return [name for name in found if pattern.match(name)]

    def served_version(self, conn: Connection, table: str, alias: str) -> int | None:
        """The serving table the view names (its definition, as MariaDB keeps it), and the alias's gate row for
        it."""
        definition = conn.exec_driver_sql("SELECT VIEW_DEFINITION FROM information_schema.VIEWS WHERE "
                                          "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
                                          (view_name(table, alias),)).scalar()
        found = re.search(rf"`({re.escape(table)}__p[0-9a-f]{{6}})`", definition or "")
        if found is None:
            return None
        return conn.exec_driver_sql(f"SELECT version FROM {self.quote(gate_table(table))} WHERE alias = ? "
                                    "AND serving = ?", (alias, found[1])).scalar()

    def view_serves(self, conn: Connection, view: str, select_sql: str) -> bool:
        """MariaDB keeps a view's text rewritten: the digest of the SELECT each view was made from is kept in
        :data:`VIEWS` instead, beside the view's existence."""
        if not _exists(conn, VIEWS) or not _exists(conn, view):
            return False
        found = conn.exec_driver_sql(f"SELECT digest FROM {VIEWS} WHERE view_name = ?", (view,)).scalar()
        return found == _digest(select_sql)

    def replace_view(self, conn: Connection, view: str, select_sql: str, same_columns: bool,
                     grants_from: str | None = None) -> None:
        """``CREATE OR REPLACE`` in one atomic statement that waits at most :data:`VIEW_WAIT` for readers (a
        timeout is tried again by the caller). Grants are by name in MariaDB, so a view made again keeps
        them; one made for the first time gets those of ``grants_from``."""
        fresh = not _exists(conn, view)
        if not _exists(conn, VIEWS):  # DDL, like the view's own: both commit the caller's transaction
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {VIEWS} (view_name VARCHAR(64) NOT NULL "
                                 "PRIMARY KEY, digest CHAR(16) NOT NULL) ENGINE=InnoDB")
        conn.exec_driver_sql(f"SET STATEMENT max_statement_time = {VIEW_WAIT} FOR "
                             f"CREATE OR REPLACE SQL SECURITY DEFINER VIEW {self.quote(view)} AS\n{select_sql}")
        conn.exec_driver_sql(f"INSERT INTO {VIEWS} (view_name, digest) VALUES (?, ?) "
                             "ON DUPLICATE KEY UPDATE digest = VALUE(digest)", (view, _digest(select_sql)))
        if fresh and grants_from and grants_from != view:
            grant(conn, self.quote(view), self.grants(conn, grants_from))

    def drop_view(self, conn: Connection, view: str) -> None:
        conn.exec_driver_sql(f"SET STATEMENT max_statement_time = {VIEW_WAIT} FOR DROP VIEW IF EXISTS "
                             f"{self.quote(view)}")

    def grants(self, conn: Connection, view: str) -> list[tuple[str, str, bool]]:
        rows = conn.exec_driver_sql(
            "SELECT PRIVILEGE_TYPE, GRANTEE, IS_GRANTABLE FROM information_schema.TABLE_PRIVILEGES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY 2, 1", (view,))
        return [(privilege, grantee, grantable == "YES") for privilege, grantee, grantable in rows]

    def grant_select(self, conn: Connection, view: str, roles: Sequence[str]) -> None:
        """``GRANT SELECT`` to each role (a MariaDB role, or a user of any host, as ``'name'@'%'``) that lacks
        it; readers need nothing on the serving tables, since the views run with their definer's rights."""
        if not roles or not _exists(conn, view):
            return
        have = {grantee for privilege, grantee, _ in self.grants(conn, view) if privilege == "SELECT"}
        for role in roles:
            if f"'{role}'@'%'" in have or f"'{role}'" in have:
                continue
            try:
                conn.exec_driver_sql(f"GRANT SELECT ON {self.quote(view)} TO {self.quote(role)}")
            except DBAPIError as exc:
                log.warning("%s: role %s ([output] grant_select) cannot be granted: %s", view, role,
                            first_line(exc))

    def missing_roles(self, engine: Engine, roles: Sequence[str]) -> list[str]:
        try:
            with engine.connect() as conn:
                known = set(conn.exec_driver_sql("SELECT User FROM mysql.user").scalars())
        except SQLAlchemyError:
            return []  # the pipeline's user may not read mysql.user: the GRANT itself then says
        return [role for role in roles if role not in known]

    def dependents(self, conn: Connection, table: str) -> list[str]:
        """Views whose definition names ``table`` (MariaDB keeps no dependencies), foreign keys to it, and
        transactions open for more than :data:`OLD_TRANSACTION` seconds: a consistent snapshot (what
        ``mariadb-dump --single-transaction`` holds) that lists a table and reads it later fails if it was
        dropped in between, and MariaDB cannot say which tables a transaction will read."""
        views = conn.exec_driver_sql(
            "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE() "
            "AND LOCATE(CONCAT(CHAR(96), ?, CHAR(96)), VIEW_DEFINITION) > 0 AND TABLE_NAME <> ?",
            (table, table)).scalars()
        keys = conn.exec_driver_sql(
            "SELECT DISTINCT TABLE_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = DATABASE() "
            "AND REFERENCED_TABLE_NAME = ?", (table,)).scalars()
        try:
            open_since = conn.exec_driver_sql(
                "SELECT trx_mysql_thread_id, trx_started FROM information_schema.INNODB_TRX WHERE "
                f"trx_mysql_thread_id <> CONNECTION_ID() AND trx_started < NOW() - INTERVAL {OLD_TRANSACTION} "
                "SECOND ORDER BY trx_started LIMIT 3").all()
        except DBAPIError:  # INNODB_TRX needs the PROCESS privilege: without it, drop as the other databases do
            open_since = []
        return ([f"view {name}" for name in views] + [f"foreign key from {name}" for name in keys]
                + [f"the transaction of connection {thread} open since {started:%H:%M:%S} UTC (a backup or a long "
                   "reader may still read it)" for thread, started in open_since])


def _storable(frame: pd.DataFrame, columns: Columns) -> pd.DataFrame:
    """``frame`` as MariaDB can hold it: times with a zone in UTC, infinity as NaN (stored as NULL)."""
    import numpy as np

    for column, kind in columns:
        series = frame[column]
        if kind == "timestamptz" and getattr(series.dtype, "tz", None) is not None:
            frame = frame.assign(**{column: series.dt.tz_convert("UTC").dt.tz_localize(None)})
        elif kind == "float" and series.dtype.kind == "f" and np.isinf(series.to_numpy()).any():
            frame = frame.assign(**{column: series.replace([np.inf, -np.inf], np.nan)})
    return frame


#: ``:run_date`` or ``:since``, in the order a query names them (each is one ``?``).
_PARAMETER = re.compile(f"{RUN_DATE.pattern}|{SINCE.pattern}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _epoch(value: datetime) -> str:
    """Seconds since 1970 of ``value``, to the microsecond, as exact decimal text."""
    micros = (value - _EPOCH) // (datetime.resolution)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _table_type(conn: Connection, name: str) -> str | None:
    """``BASE TABLE``, ``VIEW``, or None where nothing has that name."""
    return conn.exec_driver_sql("SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                                "AND TABLE_NAME = ?", (name,)).scalar()


def _exists(conn: Connection, name: str) -> bool:
    return conn.exec_driver_sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                                "AND TABLE_NAME = ?", (name,)).scalar() > 0


def _digest(select_sql: str) -> str:
    return hashlib.sha256(select_sql.encode()).hexdigest()[:16]


def _lock_name(conn: Connection, key: str) -> str:
    """A user lock's name for ``key`` in the connection's database, within MariaDB's 64 characters."""
    name = f"{conn.exec_driver_sql('SELECT DATABASE()').scalar()}.{key}"
    return name if len(name) <= 64 else "pipeline:" + hashlib.sha256(name.encode()).hexdigest()[:48]


def _require_mariadb(conn: Connection) -> None:
    """Prediction tables need MariaDB's bounded DDL (``SET STATEMENT``), which MySQL lacks."""
    if not getattr(conn.dialect, "is_mariadb", False):
        version = ".".join(map(str, conn.dialect.server_version_info or ()))
        raise DatabaseError(f"MySQL {version} as a target is not supported: prediction tables need MariaDB "
                            "(10.6 or later); MySQL works as a [domain] source")
