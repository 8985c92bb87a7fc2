"""Crash safety: kill -9 a real run at each phase; terminate its database connections mid-load.

The run is a child process (``python -m pipeline run``) stopped at a phase by
``$PIPELINE_PAUSE_AT``, then killed. Afterwards the view must serve the previous version
whole, the metadata must call the run failed (once ``pipeline status`` noticed), and the
next run must succeed. So for every kind of run: full, incremental and change-driven
top-ups (whose next one must equal a full run and lose no change), top-k, and ``pipeline gc``.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.serve import catalog

from helpers import (CHANGES_JOB, CUSTOMERS_JOB, PRODUCT_JOB, change, customers_frame, rest, start_command, start_run,
                     version_rows, view_rows, wait_for, write_source, write_table, write_users_items)

ROWS = 3000
JOB = CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 500')
PHASES = ["loading", "indexing", "auditing", "attached", "flipping"]
TOPK_JOB = PRODUCT_JOB.replace('keys = ["user_id", "item_id"]', 'keys = ["user_id", "item_id"]\nchunk_size = 500') + """
    top_k = 3
    group_by = ["user_id"]
    rank_by = "proba_true"
"""
TOPK_ORDER = "user_id, item_id"


@pytest.fixture
def served(engine, write_job):
    """Version 1 is active; returns what the view serves."""
    write_table(engine, "customers", customers_frame(ROWS))
    run_job(load_job(write_job(JOB)), engine)
    return view_rows(engine)


def kill_at(tmp_path: Path, db_url: str, phase: str, *command: str) -> None:
    """``pipeline COMMAND`` in a child stopped at ``phase`` (skipped where no run reaches it), killed there."""
    if phase == "attached" and db_url.startswith("sqlite"):
        pytest.skip("SQLite's view names its version tables: there is nothing to attach before the flip")
    child, lines = start_command(tmp_path, db_url, phase, *command)
    wait_for(lines, f"pipeline: paused at {phase}")
    child.send_signal(signal.SIGKILL)
    child.wait(10)


def topk_rows(engine: Engine) -> pd.DataFrame:
    """What a top-k view serves, in key order (its rows share a user_id)."""
    return view_rows(engine, key="user_id").sort_values(["user_id", "item_id"], ignore_index=True)


def assert_reaped(engine: Engine, db_url: str, served: pd.DataFrame,
                  read: Callable[[Engine], pd.DataFrame] = view_rows) -> None:
    """The view serves version 1 as before, whole; ``pipeline status`` marks the dead run's version 2 failed and
    drops its partial table; the dead run is recorded failed."""
    pd.testing.assert_frame_equal(read(engine), served)
    assert catalog.status(engine)[0].active_version == 1
    status = CliRunner().invoke(main, ["status", "--db", db_url])
    assert status.exit_code == 0
    assert "scores: version 2 was abandoned by a run that died; marked failed" in status.output
    killed = catalog.versions(engine, "scores")[1].version
    assert (killed.version, killed.status) == (2, "failed") and killed.error.startswith("abandoned")
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "scores__v2")  # the partial table is gone
    run = catalog.runs(engine, "scores")[0]
    assert (run.status, run.error[:9]) == ("failed", "abandoned")


def assert_same_version(engine: Engine, version: int, full: int, order: str = "customer_id") -> None:
    """``version``'s table holds what the full run's ``full`` holds, row for row."""
    pd.testing.assert_frame_equal(version_rows(engine, version, order), version_rows(engine, full, order),
                                  check_exact=True)


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_at_each_phase_leaves_the_view_whole_and_the_next_run_green(phase, db_url, engine, served, tmp_path):
    kill_at(tmp_path, db_url, phase, "run", "scores", "--force")
    assert_reaped(engine, db_url, served)
    again = run_job(load_job(tmp_path / "jobs" / "scores.toml"), engine, force=True)
    assert (again.version, again.activated) == (3, True)
    view = view_rows(engine)
    assert len(view) == ROWS and set(view.model_version) == {3}


def assert_top_up_equals_a_full_run(engine, job) -> None:
    """The next top-up (version 3, after the dead run's 2) rescores the 100 changed keys, copies the rest, and
    holds what a full run then makes."""
    again = run_job(job, engine, incremental=True)
    assert (again.version, again.activated, again.top_up, again.copied) == (3, True, True, ROWS - 100)
    assert run_job(job, engine, force=True, full=True).version == 4
    assert_same_version(engine, 3, 4)


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_during_an_incremental_top_up_leaves_the_view_whole_and_the_next_top_up_equal_to_a_full_run(
        phase, db_url, engine, served, tmp_path):
    source = customers_frame(ROWS)
    source.loc[:99, "x1"] += 1  # 100 keys changed
    new = customers_frame(200, seed=5)
    new["customer_id"] += ROWS  # and 200 new ones
    write_table(engine, "customers", pd.concat([source, new], ignore_index=True))
    kill_at(tmp_path, db_url, phase, "run", "scores", "--incremental")
    assert_reaped(engine, db_url, served)

    assert_top_up_equals_a_full_run(engine, load_job(tmp_path / "jobs" / "scores.toml"))


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_during_a_change_driven_top_up_loses_no_change(phase, db_url, engine, write_job, tmp_path):
    """The next top-up reads from the watermark of the version that serves, not the dead run's: the rows changed
    before the dead run began and those changed after it died are both scored. On PostgreSQL the dead run's rows
    in the lineage are undone: the next top-up holds exactly a full run's rows."""
    if phase == "attached" and db_url.startswith("postgresql"):
        pytest.skip("a top-up on PostgreSQL adds to its lineage, attached already: it attaches nothing")
    write_source(engine, customers_frame(ROWS))
    job = load_job(write_job(CHANGES_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 500')))
    run_job(job, engine)
    served = view_rows(engine)
    change(engine, "customer_id <= 50")
    kill_at(tmp_path, db_url, phase, "run", "scores", "--incremental")
    assert_reaped(engine, db_url, served)
    change(engine, f"customer_id > {ROWS - 50}")

    assert_top_up_equals_a_full_run(engine, job)


@pytest.mark.parametrize("phase", PHASES)
def test_kill_9_during_a_top_k_run_leaves_the_rankings_whole(phase, db_url, engine, write_job, tmp_path):
    write_users_items(engine, 60, 45, seed=3)
    job = load_job(write_job(TOPK_JOB))
    run_job(job, engine)
    served = topk_rows(engine)
    kill_at(tmp_path, db_url, phase, "run", "scores", "--force")
    assert_reaped(engine, db_url, served, topk_rows)

    again = run_job(job, engine, force=True)
    assert (again.version, again.activated, again.rows) == (3, True, 60 * 3)
    assert_same_version(engine, 3, 1, TOPK_ORDER)  # the same inputs and model as version 1's full run


def test_kill_9_while_gc_retires_leaves_the_view_whole_and_the_next_gc_finishes(db_url, engine, served, tmp_path):
    job = load_job(tmp_path / "jobs" / "scores.toml")
    for version in (2, 3):
        assert run_job(job, engine, force=True).version == version
    served = view_rows(engine)
    kill_at(tmp_path, db_url, "retiring", "gc", "scores", "--keep", "1")

    pd.testing.assert_frame_equal(view_rows(engine), served)
    with engine.connect() as conn:
        for found in catalog.versions(engine, "scores"):
            exists = engine.dialect.has_table(conn, f"scores__v{found.version.version}")
            assert exists == (found.version.status == "ready"), found.version  # retired ones are gone
    status = CliRunner().invoke(main, ["status", "--db", db_url])
    assert status.exit_code == 0 and "abandoned" not in status.output, status.output
    assert catalog.status(engine)[0].active_version == 3
    out = CliRunner().invoke(main, ["gc", "scores", "--keep", "1", "--db", db_url])
    assert out.exit_code == 0 and "scores: retired 1;" in out.output, out.output  # 2 is 3's rollback target
    assert [v.version.status for v in catalog.versions(engine, "scores")] == ["retired", "ready", "ready"]
    assert run_job(job, engine, force=True).version == 4
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"),
                                  served.drop(columns="model_version"))


def test_kill_9_while_a_run_retires_old_versions_leaves_its_version_served_and_the_run_succeeded(
        db_url, engine, served, write_job, tmp_path):
    """Retention follows the publish, and a clean-up that fails cannot fail the run: neither can its death."""
    job = load_job(write_job(JOB.replace('table = "scores"', 'table = "scores"\nkeep = 1')))
    assert run_job(job, engine, force=True).version == 2  # version 1 is its rollback target, kept
    kill_at(tmp_path, db_url, "retiring", "run", "scores", "--force")

    view = view_rows(engine)
    assert len(view) == ROWS and set(view.model_version) == {3}
    status = CliRunner().invoke(main, ["status", "--db", db_url])
    assert status.exit_code == 0 and "abandoned" not in status.output, status.output
    run = catalog.runs(engine, "scores")[0]
    assert (run.status, run.version, run.error) == ("succeeded", 3, None)
    assert [v.version.status for v in catalog.versions(engine, "scores")] == ["ready", "ready", "ready"]
    assert run_job(job, engine, force=True).version == 4
    assert [v.version.status for v in catalog.versions(engine, "scores")] == ["retired", "retired", "ready", "ready"]


def test_kill_9_after_the_flip_committed_records_the_run_succeeded_with_its_version(db_url, engine, served,
                                                                                    write_job, tmp_path):
    """Killed after its flip committed, as it took old versions out of the views' reach: the view served its
    version 2, yet reaping recorded the run failed, abandoned, with no version, and status counted a failure."""
    kill_at(tmp_path, db_url, "published", "run", "scores", "--force")
    view = view_rows(engine)
    assert len(view) == ROWS and set(view.model_version) == {2}
    status = CliRunner().invoke(main, ["status", "--db", db_url, "--json"])
    (row,) = json.loads(status.output)
    assert status.exit_code == 0 and row["active_version"] == 2 and row["failed_runs"] == 0, status.output
    run = catalog.runs(engine, "scores")[0]
    assert (run.status, run.version) == ("succeeded", 2) and "then the run died" in run.error
    assert [v.version.status for v in catalog.versions(engine, "scores")] == ["ready", "ready"]


def test_kill_9_while_flipping_to_other_columns_leaves_a_whole_view_and_a_truthful_pointer(db_url, engine, served,
                                                                                          write_job, tmp_path):
    """A run whose model outputs other columns is killed after the view's DDL and before the pointer's commit.
    Where DDL is transactional nothing happened; on MariaDB the view already serves the new version, whole, and
    the next status makes the pointer say so. Either way readers get one version and the metadata agrees."""
    write_job(JOB.replace('method = "predict_proba"', 'method = "predict"'))  # `prediction`, not probabilities
    child, lines = start_run(tmp_path, db_url, "flipping")
    wait_for(lines, "pipeline: paused at flipping")
    child.send_signal(signal.SIGKILL)
    child.wait(10)

    status = CliRunner().invoke(main, ["status", "--db", db_url])
    assert status.exit_code == 0, status.output
    view = view_rows(engine)
    active = catalog.status(engine)[0].active_version
    assert len(view) == ROWS and set(view.model_version) == {active}
    if active == 1:  # nothing of the dead run is served
        assert view.equals(served)
    else:  # MariaDB: the new columns, whole, and a pointer that says so
        assert active == 2 and "prediction" in view.columns
        repair = catalog.history(engine, "scores")[-1]
        assert (repair.from_version, repair.to_version, repair.reason[:6]) == (1, 2, "repair")
    again = run_job(load_job(tmp_path / "jobs" / "scores.toml"), engine, force=True)
    assert (again.version, again.activated) == (3, True)
    assert set(view_rows(engine).model_version) == {3}


def test_a_second_run_while_one_is_in_progress_is_refused(db_url, engine, served, tmp_path):

    child, lines = start_run(tmp_path, db_url, "loading:30")
    try:
        wait_for(lines, "pipeline: paused at loading")
        out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--force", "--db", db_url])
        assert out.exit_code == 75 and "scores is being written by" in out.output
        assert out.output.count("\n") == 1
    finally:
        child.kill()
        child.wait(10)
    pd.testing.assert_frame_equal(view_rows(engine), served)


@pytest.mark.postgres
def test_connections_terminated_mid_load_fail_the_run_cleanly(postgresql_url, write_job, tmp_path):

    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    write_table(engine, "customers", customers_frame(ROWS))
    run_job(load_job(write_job(JOB)), engine)
    served = view_rows(engine)
    url = f"{postgresql_url}&application_name=crash_test_run"
    child, lines = start_run(tmp_path, url, "loading:2")
    wait_for(lines, "pipeline: paused at loading")
    with engine.connect() as conn:
        killed = conn.execute(text("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name = 'crash_test_run'")).scalar()
    assert killed >= 2  # the load's connection and the run lock's
    err = rest(lines)
    assert child.wait(60) == 1
    error = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "database error" in error[0] and "Traceback" not in err
    pd.testing.assert_frame_equal(view_rows(engine), served)
    version = catalog.versions(engine, "scores")[1].version
    assert version.status == "failed" and "database error" in version.error
    assert run_job(load_job(tmp_path / "jobs" / "scores.toml"), engine, force=True).version == 3
    engine.dispose()


def test_read_commands_answer_while_a_run_holds_the_write_lock(db_url, engine, served, tmp_path):
    """`versions` and `status` during a load: reading never waits for the writer (SQLite's lock included)."""
    import time

    child, lines = start_run(tmp_path, db_url, "loading:30")
    try:
        wait_for(lines, "pipeline: paused at loading")
        for command in (["versions", "scores"], ["status"]):
            started = time.monotonic()
            out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), *command, "--db", db_url])
            assert out.exit_code == 0, out.output
            assert time.monotonic() - started < 10  # SQLite's busy timeout is 30 s
    finally:
        child.kill()
        child.wait(10)
