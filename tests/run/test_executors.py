"""Executors: the same version from this process and from Dask workers, exactly once when workers die."""

from __future__ import annotations

import dataclasses
import os
import re
import signal

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.database.dialects import dialect_for
from pipeline.database.dialects.postgresql import PostgresqlDialect
from pipeline.database.engines import make_engine
from pipeline.database.transactions import transaction
from pipeline.errors import ModelError
from pipeline.jobspec import ExecutorSpec, with_executor
from pipeline.run.domain import Domain
from pipeline.run.materialize import recover
from pipeline.run.model import load_model
from pipeline.run.partitions import PartitionTask, write_partition
from pipeline.run.scoring import score_chunk
from pipeline.run.store import columns_of
from pipeline.serve import catalog

from fakemodels import Scripted
from helpers import (CUSTOMERS_JOB, PRODUCT_JOB, customers_frame, rest, start_run, version_rows, view_rows, wait_for,
                     write_table, write_users_items)

ROWS = 3000
JOB = CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 400')
DASK = ExecutorSpec("dask", workers=2, partitions=4)


@pytest.fixture
def pg(postgresql_url):
    engine = make_engine(postgresql_url)
    write_table(engine, "customers", customers_frame(ROWS))
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_two_dask_workers_write_the_same_version_as_the_local_executor(pg, postgresql_url, write_job, tmp_path):
    path = write_job(JOB)
    runner = CliRunner()
    local = runner.invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", postgresql_url])
    assert local.exit_code == 0, local.output
    out = runner.invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--force", "--executor", "dask",
                               "--workers", "2", "--partitions", "4", "--db", postgresql_url])
    assert out.exit_code == 0, out.output
    assert "version 2 is active (3000 rows" in out.output

    pd.testing.assert_frame_equal(version_rows(pg, 2), version_rows(pg, 1))
    one, two = (v.version for v in catalog.versions(pg, "scores"))
    assert (two.domain_size, two.domain_fingerprint) == (one.domain_size, one.domain_fingerprint)
    assert two.columns == one.columns
    with pg.connect() as conn:
        parts = conn.execute(text("SELECT partition, row_count FROM pipeline_partitions WHERE version = 2 "
                                  "ORDER BY partition")).all()
    assert [p for p, _ in parts] == [0, 1, 2, 3] and sum(r for _, r in parts) == ROWS
    assert all(r > 0 for _, r in parts)  # the hash spreads the keys
    assert set(view_rows(pg).model_version) == {2}
    # The same date, model and domain is done already, whichever executor made it.
    again = run_job(with_executor(load_job(path), kind="local"), pg)
    assert again.skipped


@pytest.mark.postgres
def test_a_worker_killed_mid_partition_still_gives_a_complete_version(pg, postgresql_url, write_job, tmp_path):
    write_job(JOB)
    run_job(load_job(tmp_path / "jobs" / "scores.toml"), pg)  # version 1, by the local executor
    child, lines = start_run(tmp_path, postgresql_url, "partition-loading:2", "--executor", "dask", "--workers", "2",
                             "--partitions", "4")
    try:
        paused = wait_for(lines, "pipeline: paused at partition-loading")
        worker = int(re.search(r"\(pid (\d+)\)", paused).group(1))
        assert worker != child.pid
        os.kill(worker, signal.SIGKILL)  # its partition's rows are written, not committed
        err = rest(lines)
        assert child.wait(120) == 0, err
    finally:
        child.kill()
    version = catalog.versions(pg, "scores")[-1].version
    assert (version.version, version.status, version.row_count) == (2, "ready", ROWS)
    rows = version_rows(pg, 2)
    assert rows.customer_id.is_unique and len(rows) == ROWS
    pd.testing.assert_frame_equal(rows, version_rows(pg, 1))
    with pg.connect() as conn:
        workers = conn.execute(text("SELECT partition, worker FROM pipeline_partitions WHERE version = 2")).all()
    assert sorted(p for p, _ in workers) == [0, 1, 2, 3]
    assert not any(w.endswith(f":{worker}") for _, w in workers)  # the killed worker's rows rolled back


#: users x items; a partition of 50 users pauses at partition-loading after its first chunk of three.
PRODUCT = PRODUCT_JOB.replace('keys = ["user_id", "item_id"]', 'keys = ["user_id", "item_id"]\n    chunk_size = 500')
#: Changes every row of both factors, and which users and items there are.
CHANGE = ["UPDATE users SET x1 = x1 + 1", "DELETE FROM users WHERE user_id % 3 = 0",
          "INSERT INTO users SELECT user_id + 1000, x1 FROM users", "UPDATE items SET x2 = -x2",
          "INSERT INTO items SELECT item_id + 1000, x2, x3 FROM items"]


def change_domain(engine) -> None:
    with engine.begin() as conn:
        for statement in CHANGE:
            conn.execute(text(statement))


def assert_same_domain(engine, version: int, before: int) -> None:
    """``version`` holds the rows of version ``before``, scored from the same domain."""
    order = "user_id, item_id"
    pd.testing.assert_frame_equal(version_rows(engine, version, order), version_rows(engine, before, order))
    versions = {v.version.version: v.version for v in catalog.versions(engine, "scores")}
    now, then = versions[version], versions[before]
    assert (now.domain_size, now.domain_fingerprint) == (then.domain_size, then.domain_fingerprint)


@pytest.mark.postgres
def test_every_partition_reads_the_domain_as_of_the_runs_snapshot(postgresql_url, write_job, tmp_path):
    """Both factors change while the first partitions are loading: the later ones read the domain as it was
    when the run began, like the first ones (without the snapshot, they would read the change)."""
    engine = make_engine(postgresql_url)
    write_users_items(engine, 200, 30, seed=1)
    run_job(load_job(write_job(PRODUCT)), engine)  # version 1: the domain before the change, scored locally
    child, lines = start_run(tmp_path, postgresql_url, "partition-loading:1", "--executor", "dask", "--workers", "2",
                             "--partitions", "4")
    try:
        wait_for(lines, "pipeline: paused at partition-loading")  # 2 partitions at most have begun reading
        change_domain(engine)
        err = rest(lines)
        assert child.wait(120) == 0, err
    finally:
        child.kill()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM users")).scalar() == 2 * 133
    assert_same_domain(engine, 2, before=1)
    engine.dispose()


@pytest.mark.postgres
def test_a_local_product_reads_its_factors_as_of_one_snapshot(postgresql_url, write_job, monkeypatch):
    """The domain changes after the items were read and before the users are: the run reads the users
    as they were when it read the items."""
    engine = make_engine(postgresql_url)
    write_users_items(engine, 50, 20, seed=2)
    job = load_job(write_job(PRODUCT))
    run_job(job, engine)
    read_query = PostgresqlDialect.read_query
    reads = []

    def read_then_change(self, *args, **kwargs):
        reads.append(args[1])
        if len(reads) == 2:
            change_domain(engine)
        yield from read_query(self, *args, **kwargs)

    monkeypatch.setattr(PostgresqlDialect, "read_query", read_then_change)
    run_job(job, engine, force=True)
    assert [q.split()[-1] for q in reads] == ["items", "users"]
    assert_same_domain(engine, 2, before=1)
    engine.dispose()


@pytest.mark.mysql
def test_a_dask_run_on_mariadb_gives_the_local_executors_rows(mysql_url, write_job):
    """MariaDB shares no snapshot: the partitions read without one, as before."""
    engine = make_engine(mysql_url)
    write_users_items(engine, 60, 10, seed=3)
    job = load_job(write_job(PRODUCT))
    run_job(job, engine)
    run_job(dataclasses.replace(job, executor=DASK), engine, force=True)
    assert_same_domain(engine, 2, before=1)
    engine.dispose()


def test_a_partition_written_twice_is_written_once(engine, write_job):
    """A task retried after its partition committed (its worker died before saying so) writes nothing again."""
    write_table(engine, "customers", customers_frame(ROWS))
    job = load_job(write_job(JOB))
    model = load_model(job.model)
    domain = Domain(job.domain, engine)
    first = next(domain.chunks())
    domain.close()
    columns = tuple(columns_of(score_chunk(model, job.domain.keys, first)))
    recover(engine, "scores")
    with transaction(engine) as conn:
        dialect_for(engine).create_table(conn, "scores__v1", list(columns))
    url = engine.url.render_as_string(hide_password=False)
    task = PartitionTask(url, job, 1, "scores__v1", columns, 1, 3, ("customer_id",), pd.Timestamp("2026-01-01").date())
    seen = []
    done = write_partition(task, model, progress=seen.append)
    again = write_partition(task, model)
    assert done.written and not again.written
    assert (again.rows, again.digest) == (done.rows, done.digest)
    assert seen and seen[-1] == done.rows
    with engine.connect() as conn:
        assert conn.execute(text('SELECT COUNT(*) FROM scores__v1')).scalar() == done.rows
    assert 0 < done.rows < ROWS


def test_sqlite_refuses_the_dask_executor_before_building(sqlite_url, write_job, tmp_path):
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(10))
    write_job(JOB.replace('[output]', '[executor]\nkind = "dask"\n[output]'))
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", sqlite_url])
    assert out.exit_code == 1
    assert out.output.startswith("Error: the dask executor needs a database that takes concurrent writers")
    assert out.output.count("\n") == 1
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "scores")
        assert conn.execute(text("SELECT COUNT(*) FROM pipeline_versions")).scalar() == 0


@pytest.mark.postgres
def test_a_partition_that_fails_fails_the_version_and_leaves_the_pointer(pg, write_job):
    good = run_job(load_job(write_job(JOB.replace('"predict_proba"', '"predict"'), model=Scripted())), pg)
    served = view_rows(pg)
    bad = dataclasses.replace(load_job(write_job(JOB.replace('"predict_proba"', '"predict"'),
                                                 model=Scripted(rows_short=1))), executor=DASK)
    with pytest.raises(ModelError, match="returned shape"):
        run_job(bad, pg, force=True)
    pd.testing.assert_frame_equal(view_rows(pg), served)
    failed = catalog.versions(pg, "scores")[-1].version
    assert (failed.version, failed.status) == (good.version + 1, "failed")
    with pg.connect() as conn:
        assert not pg.dialect.has_table(conn, "scores__v2")  # the coordinator's table is dropped


@pytest.mark.postgres
def test_an_unreachable_scheduler_is_one_line_and_changes_nothing(pg, postgresql_url, write_job, tmp_path):
    write_job(JOB)
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--executor", "dask",
                                    "--dask-address", "tcp://127.0.0.1:9", "--db", postgresql_url])
    assert out.exit_code == 1 and out.output.count("\n") == 1
    assert out.output.startswith("Error: cannot reach the Dask scheduler at tcp://127.0.0.1:9")
    with pg.connect() as conn:
        assert not pg.dialect.has_table(conn, "scores")


def test_scheduled_runs_take_the_executor_from_the_job_file(sqlite_url, write_job, tmp_path):
    write_job(JOB)
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--scheduled",
                                    "--executor", "dask", "--db", sqlite_url])
    assert out.exit_code == 2 and "--scheduled runs with the job file's [executor]" in out.output


def test_the_local_executor_does_not_import_dask(db_url, write_job, tmp_path):
    import subprocess
    import sys

    engine = make_engine(db_url)
    write_table(engine, "customers", customers_frame(10))
    engine.dispose()
    write_job(JOB)
    code = ("import sys; from pipeline import load_job, run_job; from pipeline.database.engines import make_engine; "
            f"run_job(load_job('jobs/scores.toml'), make_engine({db_url!r})); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
