"""Crash safety: kill -9 a real run at each phase; terminate its database connections mid-load.

The run is a child process (``python -m pipeline run``) stopped at a phase by
``$PIPELINE_PAUSE_AT``, then killed. Afterwards the view must serve the previous version
whole, the metadata must call the run failed (once ``pipeline status`` noticed), and the
next run must succeed.
"""

from __future__ import annotations

import signal

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.serve import catalog

from helpers import CUSTOMERS_JOB, customers_frame, rest, start_run, view_rows, wait_for, write_table

ROWS = 3000
JOB = CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 500')


@pytest.fixture
def served(engine, write_job):
    """Version 1 is active; returns what the view serves."""
    write_table(engine, "customers", customers_frame(ROWS))
    run_job(load_job(write_job(JOB)), engine)
    return view_rows(engine)


@pytest.mark.parametrize("phase", ["loading", "indexing", "auditing", "attached", "flipping"])
def test_kill_9_at_each_phase_leaves_the_view_whole_and_the_next_run_green(phase, db_url, engine, served, tmp_path):
    import pandas as pd

    if phase == "attached" and engine.dialect.name == "sqlite":
        pytest.skip("SQLite's view names its version tables: there is nothing to attach before the flip")

    child, lines = start_run(tmp_path, db_url, phase)
    wait_for(lines, f"pipeline: paused at {phase}")
    child.send_signal(signal.SIGKILL)
    child.wait(10)

    pd.testing.assert_frame_equal(view_rows(engine), served)
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

    again = run_job(load_job(tmp_path / "jobs" / "scores.toml"), engine, force=True)
    assert (again.version, again.activated) == (3, True)
    view = view_rows(engine)
    assert len(view) == ROWS and set(view.model_version) == {3}


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
    import pandas as pd

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
    import pandas as pd

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
