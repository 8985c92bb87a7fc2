"""SQLite specifics: WAL, transactional DDL, and index use through the stable view."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.database.transactions import transaction

from helpers import CUSTOMERS_JOB, customers_frame, write_table


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_connections_use_wal(sqlite_engine):
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_ddl_rolls_back_with_the_transaction(sqlite_engine):
    dialect = dialect_for(sqlite_engine)
    with pytest.raises(RuntimeError), transaction(sqlite_engine) as conn:
        dialect.create_table(conn, "t__v1", [("k", "integer"), ("p", "float")])
        dialect.load(conn, "t__v1", [("k", "integer"), ("p", "float")], pd.DataFrame({"k": [1], "p": [0.5]}))
        raise RuntimeError("crash mid-load")
    with sqlite_engine.connect() as conn:
        assert not sqlite_engine.dialect.has_table(conn, "t__v1")


def test_point_lookup_through_the_view_uses_the_key_index(sqlite_engine, write_job):
    write_table(sqlite_engine, "customers", customers_frame(100))
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), sqlite_engine, force=True)
    run_job(load_job(path), sqlite_engine, force=True)
    with sqlite_engine.connect() as conn:
        # a real statement first: EXPLAIN alone does not notice a schema changed by another connection
        row = conn.execute(text("SELECT customer_id, model_version FROM scores WHERE customer_id = 42")).one()
        assert tuple(row) == (42, 2)
        plan = " | ".join(r[-1] for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT * FROM scores WHERE customer_id = 42"))
        assert "USING INDEX scores__v2__key (customer_id=?)" in plan
        assert "USING INDEX scores__v1__key (customer_id=?)" in plan
        assert "SCAN" not in plan


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("held", flush=True)
time.sleep(float(sys.argv[2])) if len(sys.argv) > 2 else sys.stdin.readline()
conn.execute("ROLLBACK")
"""


def hold_write_lock(path, seconds: float | None = None):
    """Another process that holds the database's write lock (BEGIN IMMEDIATE), for ``seconds`` or until told."""
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), *([str(seconds)] if seconds else [])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_run_that_cannot_start_is_recorded_by_the_next_one(sqlite_url, sqlite_engine, write_job, tmp_path):
    """A writer that holds the file past the job's publish_timeout: the run fails saying why and leaves its record in
    the journal beside the database; the next run moves it into pipeline_runs."""
    import subprocess
    import sys

    write_table(sqlite_engine, "customers", customers_frame(50))
    write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "scores"\npublish_timeout = 1'))
    holder = hold_write_lock(tmp_path / "predictions.db")
    try:
        first = subprocess.run([sys.executable, "-m", "pipeline", "run", "scores", "--db", sqlite_url],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    finally:
        holder.communicate("\n", timeout=30)
    assert first.returncode == 1
    assert "database is locked" in first.stderr and "could not start" in first.stderr
    assert "predictions.db-pipeline-runs.jsonl" in first.stderr and "Traceback" not in first.stderr
    second = subprocess.run([sys.executable, "-m", "pipeline", "run", "scores", "--db", sqlite_url],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    with sqlite_engine.connect() as conn:
        runs = conn.execute(text("SELECT status, version, error FROM pipeline_runs ORDER BY id")).all()
    assert [(r.status, r.version) for r in runs] == [("failed", None), ("succeeded", 1)]
    assert "could not start" in runs[0].error and "database is locked" in runs[0].error
    assert not (tmp_path / "predictions.db-pipeline-runs.jsonl").exists()


def test_a_writer_met_while_auditing_is_waited_for_and_the_version_kept(sqlite_url, sqlite_engine, write_job,
                                                                      tmp_path):
    from helpers import rest, start_run, wait_for

    write_table(sqlite_engine, "customers", customers_frame(50))
    write_job(CUSTOMERS_JOB)
    child, lines = start_run(tmp_path, sqlite_url, "auditing:1")
    wait_for(lines, "paused at auditing")
    holder = hold_write_lock(tmp_path / "predictions.db", seconds=4)  # outlasts the pause: the audit must wait
    out = rest(lines)
    assert child.wait(60) == 0, out
    holder.wait(30)
    with sqlite_engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM pipeline_versions")).scalar_one() == "ready"
        assert conn.execute(text("SELECT status FROM pipeline_runs")).scalar_one() == "succeeded"
        assert conn.execute(text("SELECT COUNT(*), MIN(model_version) FROM scores")).one() == (50, 1)


def test_a_later_try_that_could_not_go_on_fails_its_own_row_not_a_second_one(sqlite_engine, write_job, tmp_path):
    """A run recorded itself, failed on a passing fault, and its next try could not even reopen its row (another
    writer held the file): the journal's record became a second run (`could not start`) and the first was reaped
    as abandoned, two failures for one run. The record names the row, which the fold marks failed."""
    import json

    from pipeline.database import schema, state

    write_table(sqlite_engine, "customers", customers_frame(20))
    with transaction(sqlite_engine) as conn:
        schema.ensure_schema(conn)
        run_id = state.start_run(conn, job="scores", table="scores", logical_date=dt.date(2026, 1, 1),
                                 trigger="cron", scheduled_for=None, now=dt.datetime(2026, 1, 1, 3), host="h", pid=7)
    record = dict(job="scores", table="scores", logical_date="2026-01-01", trigger="cron", scheduled_for=None,
                  started_at="2026-01-01T03:00:30+00:00", finished_at="2026-01-01T03:00:31+00:00", host="h", pid=7,
                  error="could not try again: database is locked", run_id=run_id)
    journal = tmp_path / "predictions.db-pipeline-runs.jsonl"
    journal.write_text(json.dumps(record) + "\n", encoding="utf-8")
    run_job(load_job(write_job(CUSTOMERS_JOB)), sqlite_engine)
    with sqlite_engine.connect() as conn:
        runs = conn.execute(text("SELECT id, trigger, status, error FROM pipeline_runs ORDER BY id")).all()
    assert [tuple(r) for r in runs] == [(run_id, "cron", "failed", "could not try again: database is locked"),
                                        (run_id + 1, "manual", "succeeded", None)]


def test_a_journal_line_cut_short_is_skipped_and_the_rest_recorded(sqlite_engine, write_job, tmp_path):
    import json

    write_table(sqlite_engine, "customers", customers_frame(20))
    record = dict(job="scores", table="scores", logical_date="2026-01-01", trigger="cron", scheduled_for=None,
                  started_at="2026-01-01T03:00:00+00:00", finished_at="2026-01-01T03:00:31+00:00", host="h", pid=7,
                  error="could not start: database is locked")
    journal = tmp_path / "predictions.db-pipeline-runs.jsonl"
    journal.write_text(json.dumps(record) + "\n" + '{"job": "sco', encoding="utf-8")
    run_job(load_job(write_job(CUSTOMERS_JOB)), sqlite_engine)
    with sqlite_engine.connect() as conn:
        runs = conn.execute(text("SELECT trigger, status, error FROM pipeline_runs ORDER BY id")).all()
    assert [tuple(r) for r in runs] == [("cron", "failed", "could not start: database is locked"),
                                        ("manual", "succeeded", None)]
    assert not journal.exists()
