"""Transactions: commit or roll back as a whole, database failures as one-line errors, DDL that gives way to
readers and is tried again."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.database.transactions import reading, retry_on_lock, transaction
from pipeline.errors import DatabaseError, SourceError, ViewBusy


def has_table(engine, name: str) -> bool:
    with engine.connect() as conn:
        return engine.dialect.has_table(conn, name)


def values(engine, table: str = "t") -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text(f'SELECT k FROM {table} ORDER BY k')).scalars())


def test_a_transaction_commits_its_rows_and_ddl(engine):
    with transaction(engine) as conn:
        conn.execute(text('CREATE TABLE t (k INTEGER)'))
        conn.execute(text('INSERT INTO t VALUES (1), (2)'))
    assert values(engine) == [1, 2]  # read on another connection


def test_an_exception_rolls_back_rows_and_ddl(engine):
    if not dialect_for(engine).TRANSACTIONAL_DDL:
        pytest.skip("MariaDB's DDL commits the transaction around it: runs never rely on rolling it back")
    with transaction(engine) as conn:
        conn.execute(text('CREATE TABLE t (k INTEGER)'))
        conn.execute(text('INSERT INTO t VALUES (1)'))
    with pytest.raises(RuntimeError, match="crash"), transaction(engine) as conn:
        conn.execute(text('INSERT INTO t VALUES (2)'))
        conn.execute(text('CREATE TABLE u (k INTEGER)'))
        conn.execute(text('INSERT INTO u VALUES (3)'))
        conn.execute(text('DROP TABLE t'))
        raise RuntimeError("crash")
    assert values(engine) == [1]  # neither the row nor the DROP happened
    assert not has_table(engine, "u")


def test_a_database_error_is_one_line_from_a_transaction(engine):
    with pytest.raises(DatabaseError) as caught, transaction(engine) as conn:
        conn.execute(text('CREATE TABLE t (k INTEGER)'))
        conn.execute(text("SELECT * FROM no_such_table"))
    message = str(caught.value)
    assert message.startswith("database error: ") and "no_such_table" in message
    assert "\n" not in message
    assert has_table(engine, "t") != dialect_for(engine).TRANSACTIONAL_DDL  # rolled back, where DDL can be


def test_a_database_error_is_one_line_from_reading(engine):
    with pytest.raises(DatabaseError) as caught, reading(engine) as conn:
        conn.execute(text("SELECT missing_column FROM (SELECT 1 AS k) AS s"))
    message = str(caught.value)
    assert message.startswith("database error: ") and "missing_column" in message
    assert "\n" not in message


def test_a_pipeline_error_passes_through_unchanged(engine):
    error = SourceError("the domain is odd")
    with pytest.raises(SourceError) as caught, transaction(engine) as conn:
        conn.execute(text('CREATE TABLE t (k INTEGER)'))
        raise error
    assert caught.value is error
    assert has_table(engine, "t") != dialect_for(engine).TRANSACTIONAL_DDL  # rolled back, where DDL can be
    with pytest.raises(SourceError) as caught, reading(engine):
        raise error
    assert caught.value is error


@pytest.mark.postgres
def test_a_failure_at_commit_is_a_database_error(postgresql_url):
    """A deferred constraint is checked only by COMMIT, which the scope runs on leaving."""
    engine = make_engine(postgresql_url)
    try:
        with transaction(engine) as conn:
            conn.execute(text("CREATE TABLE t (k INTEGER UNIQUE DEFERRABLE INITIALLY DEFERRED)"))
        with pytest.raises(DatabaseError, match=r"^database error: duplicate key value") as caught, \
                transaction(engine) as conn:
            conn.execute(text("INSERT INTO t VALUES (1), (1)"))
        assert "\n" not in str(caught.value)
        assert values(engine) == []
    finally:
        engine.dispose()


def test_an_error_that_is_not_a_lock_timeout_is_not_retried(engine):
    dialect = dialect_for(engine)
    calls = []

    def step(conn):
        calls.append(1)
        conn.execute(text("SELECT * FROM no_such_table"))

    with pytest.raises(DatabaseError, match="no_such_table"):
        retry_on_lock(engine, dialect, "replacing t", step, attempts=5)
    assert len(calls) == 1

    def broken(conn):
        calls.append(1)
        raise ValueError("not the database's fault")

    with pytest.raises(ValueError):
        retry_on_lock(engine, dialect, "replacing t", broken, attempts=5)
    assert len(calls) == 2


def test_retry_on_lock_commits_what_the_step_did_and_returns_its_value(engine):
    with transaction(engine) as conn:
        conn.execute(text('CREATE TABLE t (k INTEGER)'))

    def step(conn):
        conn.execute(text('INSERT INTO t VALUES (7)'))
        return "done"

    assert retry_on_lock(engine, dialect_for(engine), "filling t", step) == "done"
    assert values(engine) == [7]


@pytest.fixture
def pg(postgresql_url):
    engine = make_engine(postgresql_url)
    with transaction(engine) as conn:
        conn.execute(text("CREATE TABLE t (k INTEGER)"))
    yield engine
    engine.dispose()


def hold(engine):
    """Another session in an open transaction holding ACCESS EXCLUSIVE on table t."""
    holder = engine.connect()
    holder.begin()
    holder.execute(text("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"))
    return holder


@pytest.mark.postgres
def test_a_step_that_meets_a_lock_gives_way_and_succeeds_once_it_is_released(pg):
    holder = hold(pg)
    timeouts, calls = [], []

    def step(conn):
        calls.append(1)
        timeouts.append(conn.execute(text("SHOW lock_timeout")).scalar_one())
        conn.execute(text("ALTER TABLE t ADD COLUMN v INTEGER"))
        conn.execute(text("INSERT INTO t VALUES (1, 2)"))
        return len(calls)

    release = threading.Timer(0.4, holder.commit)
    release.start()
    try:
        tried = retry_on_lock(pg, dialect_for(pg), "altering t", step)
    finally:
        release.join()
        holder.close()
    assert tried == len(calls) > 1  # it gave way at least once, then went through
    assert set(timeouts) == {"20ms"}  # each attempt waited briefly, not behind the holder
    with pg.connect() as conn:
        assert conn.execute(text("SELECT k, v FROM t")).all() == [(1, 2)]


@pytest.mark.postgres
def test_a_lock_held_through_every_attempt_raises_view_busy(pg):
    holder = hold(pg)
    calls = []

    def step(conn):
        calls.append(1)
        conn.execute(text("INSERT INTO t VALUES (1)"))

    try:
        with pytest.raises(ViewBusy, match=r"^replacing view t: readers kept the view busy through 3 attempts"):
            retry_on_lock(pg, dialect_for(pg), "replacing view t", step, attempts=3)
    finally:
        holder.rollback()
        holder.close()
    assert len(calls) == 3
    assert values(pg) == []  # no attempt committed anything
