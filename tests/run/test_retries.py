"""Passing database faults are tried again, up to the job's ``retries``; mistakes never are."""

from __future__ import annotations

import contextlib

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.errors import DatabaseError, JobFileError, JobLocked, LockLost, PipelineError, SourceError
from pipeline.serve import catalog

from fakemodels import Scripted
from helpers import CUSTOMERS_JOB, SCRIPTED_JOB, customers_frame, rest, start_run, view_rows, wait_for, write_table


def test_a_server_restarted_in_the_middle_of_a_load_is_tried_again(private_postgres, write_job, tmp_path):
    engine = make_engine(private_postgres.url)
    write_table(engine, "customers", customers_frame(2000))
    write_job("retries = 3\n" + CUSTOMERS_JOB)  # a real model: the child process loads it
    child, lines = start_run(tmp_path, private_postgres.url, "indexing:2")
    wait_for(lines, "paused at indexing")  # the rows are written, not committed
    private_postgres.restart()  # every connection, the run lock's included, is cut
    out = rest(lines)
    assert child.wait(timeout=120) == 0, out
    assert "try 1 of 4 failed on a passing fault" in out
    run = catalog.runs(engine)[0]
    assert run.status == "succeeded" and len(run.retries) >= 1 and run.version >= 2
    versions = {r.version.version: r.version.status for r in catalog.versions(engine, "scores")}
    assert versions[run.version] == "ready" and list(versions.values()).count("ready") == 1  # nothing partial
    assert len(view_rows(engine)) == 2000
    listed = CliRunner().invoke(main, ["runs", "--db", private_postgres.url])
    assert listed.exit_code == 0 and " tries " in listed.output.splitlines()[0]
    engine.dispose()


def test_a_bad_query_is_not_tried_again(engine, write_job, caplog):
    write_table(engine, "customers", customers_frame(10))
    job = load_job(write_job("retries = 3\n" + SCRIPTED_JOB.replace("FROM customers", "FROM no_such_table"),
                             model=Scripted()))
    with pytest.raises(SourceError):
        run_job(job, engine)
    run = catalog.runs(engine)[0]
    assert run.status == "failed" and run.retries is None and "passing fault" not in caplog.text


def test_without_retries_a_passing_fault_fails_the_run(private_postgres, write_job, tmp_path):
    engine = make_engine(private_postgres.url)
    write_table(engine, "customers", customers_frame(100))
    write_job(CUSTOMERS_JOB)
    child, lines = start_run(tmp_path, private_postgres.url, "indexing:2")
    wait_for(lines, "paused at indexing")
    private_postgres.restart()
    out = rest(lines)
    assert child.wait(timeout=120) == 1 and "passing fault" not in out
    assert catalog.runs(engine)[0].status == "failed"
    engine.dispose()


def test_what_counts_as_a_passing_fault_on_postgresql(postgresql_url):
    engine = make_engine(postgresql_url)
    dialect = dialect_for(engine)
    refused = make_engine("postgresql://postgres@127.0.0.1:1/test")
    with pytest.raises(OperationalError) as connection_refused:
        refused.connect()
    with engine.connect() as conn, pytest.raises(Exception) as undefined_table:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert dialect.transient(connection_refused.value)
    assert dialect.transient(DatabaseError("wrapped"))  is False
    assert not dialect.transient(undefined_table.value)
    for state, passing in (("40001", True), ("40P01", True), ("57P01", True), ("53300", True), ("08006", True),
                           ("42P01", False), ("23505", False), ("55P03", False)):
        error = psycopg.Error.__new__(psycopg.errors.lookup(state))
        assert dialect.transient(error) is passing, state
    try:
        raise SourceError("domain query failed") from connection_refused.value
    except SourceError as wrapped:
        assert dialect.transient(wrapped)  # the cause counts, however the step wrapped it
    assert dialect.transient(LockLost("lost the run lock"))
    engine.dispose()
    refused.dispose()


@pytest.mark.parametrize("where, source", [("gate", "postgresql://postgres@127.0.0.1:1/test"),
                                           ("gate", "mysql://root@127.0.0.1:1/test"),
                                           ("domain", "postgresql://postgres@127.0.0.1:1/test")])
def test_a_source_of_another_kind_that_refuses_connections_is_tried_again(sqlite_url, write_job, caplog, where,
                                                                          source):
    """A SQLite target reading a PostgreSQL or MariaDB source that is down: the fault is that database's, and
    passing, whatever the target is."""
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(10))
    body = (SCRIPTED_JOB + f'[gates]\n[[gates.wait_for]]\nname = "up"\nquery = "SELECT 1"\nsource = "{source}"\n'
            if where == "gate" else SCRIPTED_JOB.replace("[domain]", f'[domain]\nsource = "{source}"'))
    job = load_job(write_job("retries = 1\n" + body, model=Scripted()))
    with pytest.raises(PipelineError):
        run_job(job, engine)
    assert "try 1 of 2 failed on a passing fault" in caplog.text
    (run,) = catalog.runs(engine)
    assert run.status == "failed" and len(run.retries) == 1
    engine.dispose()


def test_a_busy_sqlite_database_is_a_passing_fault(sqlite_url):
    import sqlite3

    dialect = dialect_for(make_engine(sqlite_url))
    assert dialect.transient(sqlite3.OperationalError("database is locked"))
    assert not dialect.transient(sqlite3.OperationalError("no such table: x"))


@pytest.mark.parametrize("value, message", [("-1", "retries: must be from 0 to 10"), ("11", "must be from 0 to 10"),
                                            ('"3"', "retries")])
def test_bad_retries_are_named(write_job, value, message):
    with pytest.raises(JobFileError, match=message):
        load_job(write_job(f"retries = {value}\n" + SCRIPTED_JOB, model=Scripted()))


def test_a_run_that_could_not_start_then_succeeds_is_one_record_with_its_tries(sqlite_url, write_job, monkeypatch):
    """Another process holds the SQLite write lock past the timeout at the run's start, then lets go: the run's
    second try succeeds, and the history holds that one run with the fault it tried again after, not a failed run
    beside it."""
    import logging
    import sqlite3

    from pipeline.database.dialects import sqlite as sqlite_dialect

    monkeypatch.setattr(sqlite_dialect, "BUSY_TIMEOUT_MS", 200)
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(20))
    job = load_job(write_job("retries = 2\n" + SCRIPTED_JOB + "publish_timeout = 1\n", model=Scripted()))
    blocker = sqlite3.connect(engine.url.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    class LetGo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed on a passing fault" in record.getMessage() and blocker.in_transaction:
                blocker.execute("ROLLBACK")

    handler = LetGo()
    logging.getLogger("pipeline").addHandler(handler)
    try:
        run_job(job, engine)
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
        blocker.close()
    (run,) = catalog.runs(engine)
    assert run.status == "succeeded" and len(run.retries) == 1 and "database is locked" in run.retries[0]
    engine.dispose()


def test_a_retry_that_finds_the_table_taken_fails_the_run_instead_of_saying_nothing_was_done(sqlite_url, write_job,
                                                                                             caplog):
    """Between a failed try and the next, another run took the table's lock: the run ended as JobLocked (exit 75,
    `--scheduled` exit 0, no notification) though it had failed and was recorded so."""
    import logging

    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(10))
    body = SCRIPTED_JOB + ('[gates]\n[[gates.wait_for]]\nname = "up"\nquery = "SELECT 1"\n'
                           'source = "postgresql://postgres@127.0.0.1:1/test"\n')
    job = load_job(write_job("retries = 1\n" + body, model=Scripted()))
    taken = contextlib.ExitStack()

    class TakeTheTable(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed on a passing fault" in record.getMessage():
                taken.enter_context(dialect_for(engine).run_lock(engine, "scores"))

    handler = TakeTheTable()
    logging.getLogger("pipeline").addHandler(handler)
    try:
        with pytest.raises(PipelineError) as failed:
            run_job(job, engine)
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
        taken.close()
    said = str(failed.value)
    assert not isinstance(failed.value, JobLocked)
    assert said.startswith("scores: could not try again after gate 'up'") and "lock file" in said, said
    (run,) = catalog.runs(engine)
    assert run.status == "failed" and "127.0.0.1" in run.error
    engine.dispose()
