"""Retention (gc) and the reaping of versions that dead runs left behind."""

from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import gc, load_job, reap, rollback, run_job
from pipeline.cli import main
from pipeline.database import state
from pipeline.database.transactions import transaction
from pipeline.errors import AuditError
from pipeline.serve import catalog

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, start_command, view_rows, wait_for, write_table


@pytest.fixture
def job_path(engine, write_job):
    write_table(engine, "customers", customers_frame(50))
    return write_job(SCRIPTED_JOB, model=Scripted())


def statuses(engine) -> dict[int, str]:
    return {r.version.version: r.version.status for r in catalog.versions(engine, "scores")}


def tables(engine) -> set[str]:
    """The version tables (on MariaDB, a served version's is a view of its rows in the serving table)."""
    with engine.connect() as conn:
        found = set(engine.dialect.get_table_names(conn)) | set(engine.dialect.get_view_names(conn))
        return {t for t in found if t.startswith("scores__v")}


def test_gc_keeps_the_newest_the_active_and_the_rollback_target(engine, job_path):
    job_path.write_text(job_path.read_text().replace('table = "scores"', 'table = "scores"\nkeep = 100'))
    for _ in range(6):
        run_job(load_job(job_path), engine, force=True)
    rollback(engine, "scores", to=2)  # active 2; its rollback target is 1
    result = gc(engine, "scores", keep=2)
    assert sorted(result.retired) == [3, 4]
    assert statuses(engine) == {1: "ready", 2: "ready", 3: "retired", 4: "retired", 5: "ready", 6: "ready"}
    assert tables(engine) == {"scores__v1", "scores__v2", "scores__v5", "scores__v6"}
    assert set(view_rows(engine).model_version) == {2} and len(view_rows(engine)) == 50
    from pipeline import activate
    activate(engine, "scores", 6)  # versions kept stay one flip away
    assert set(view_rows(engine).model_version) == {6}


def test_gc_cleans_failed_tables_and_keeps_what_another_view_reads(engine, job_path, write_job):
    job_path.write_text(job_path.read_text().replace('table = "scores"', 'table = "scores"\nkeep = 100'))
    run_job(load_job(job_path), engine, force=True)
    bad = load_job(write_job(SCRIPTED_JOB + '\n[audits]\nbounds = { prediction = { max = -100 } }',
                             name="strict", model=Scripted()))
    with pytest.raises(AuditError):
        run_job(bad, engine)
    assert "scores__v2" in tables(engine)  # a failed version's table stays for inspection
    assert gc(engine, "scores", keep=100).cleaned == [2]  # until gc (or the next run's own retention) cleans it
    for _ in range(3):
        run_job(load_job(job_path), engine, force=True)
    with transaction(engine) as conn:
        conn.execute(text('CREATE VIEW report_v3 AS SELECT * FROM scores__v3'))
    result = gc(engine, "scores", keep=1)
    assert result.cleaned == [] and result.retired == [1]
    assert "scores__v3 is still read by view report_v3" in result.kept[3]
    assert statuses(engine)[3] == "ready" and "scores__v3" in tables(engine)
    assert tables(engine) == {"scores__v3", "scores__v4", "scores__v5"}


def test_keep_in_the_job_applies_after_each_run(engine, job_path):
    job_path.write_text(job_path.read_text().replace('table = "scores"', 'table = "scores"\nkeep = 2'))
    for _ in range(5):
        run_job(load_job(job_path), engine, force=True)
    assert statuses(engine) == {1: "retired", 2: "retired", 3: "retired", 4: "ready", 5: "ready"}
    assert tables(engine) == {"scores__v4", "scores__v5"}


def test_gc_command(engine, db_url, job_path, tmp_path, monkeypatch):
    for _ in range(4):
        run_job(load_job(job_path), engine, force=True)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["gc", "scores", "--keep", "1", "--db", db_url])
    assert result.exit_code == 0 and result.output.strip() == "scores: retired 1, 2; cleaned failed none"
    result = CliRunner().invoke(main, ["gc", "scores", "--keep", "0", "--db", db_url])
    assert result.exit_code == 2 and "--keep" in result.output


def test_a_building_version_without_a_live_run_is_reaped(engine, job_path):
    run_job(load_job(job_path), engine, force=True)
    with transaction(engine) as conn:  # what a run killed mid-load leaves: a building row and maybe a table
        state.insert_version(conn, table="scores", version=2, job="scores", logical_date=None, keys=["customer_id"],
                             model_path="m", model_sha256="0" * 64, model_class="x", started_at=state.utcnow())
        conn.execute(text('CREATE TABLE scores__v2 (customer_id INTEGER)'))
    assert reap(engine) == [("scores", 2)]
    version = catalog.versions(engine, "scores")[1].version
    assert version.status == "failed" and version.error.startswith("abandoned")
    assert "scores__v2" not in tables(engine)
    assert run_job(load_job(job_path), engine, force=True).version == 3


def test_gc_reaps_with_the_clock_it_is_given(engine, job_path):
    run_job(load_job(job_path), engine, force=True)
    with transaction(engine) as conn:  # a run that died while building version 2
        state.insert_version(conn, table="scores", version=2, job="scores", logical_date=None, keys=["customer_id"],
                             model_path="m", model_sha256="0" * 64, model_class="x", started_at=state.utcnow())
    then = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    gc(engine, "scores", keep=5, clock=lambda: then)
    version = catalog.versions(engine, "scores")[1].version
    assert version.status == "failed" and version.finished_at == then


def test_a_building_version_of_a_live_run_is_left_alone(engine, job_path):
    from pipeline.database.dialects import dialect_for

    run_job(load_job(job_path), engine, force=True)
    with transaction(engine) as conn:
        state.insert_version(conn, table="scores", version=2, job="scores", logical_date=None, keys=["customer_id"],
                             model_path="m", model_sha256="0" * 64, model_class="x", started_at=state.utcnow())
    with dialect_for(engine).run_lock(engine, "scores"):
        assert reap(engine) == []
    assert statuses(engine)[2] == "building"


@pytest.mark.postgres
def test_a_table_a_reader_holds_is_skipped_and_the_run_still_succeeds(postgresql_url, write_job):
    """A transaction that read an old version table (what pg_dump does to every table) must not fail the run
    that retires it: the run publishes and succeeds, the table is named and kept, and a later gc drops it."""
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    try:
        write_table(engine, "customers", customers_frame(50))
        path = write_job(SCRIPTED_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 1'), model=Scripted())
        for _ in range(2):
            run_job(load_job(path), engine, force=True)
        holder = engine.connect()
        try:
            holder.execute(text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
            held = holder.execute(text('SELECT COUNT(*) FROM scores__v1')).scalar_one()
            result = run_job(load_job(path), engine, force=True)  # retires v1 (and v2 is the rollback target)
            assert result.version == 3 and result.activated
            assert set(view_rows(engine).model_version) == {3}
            assert "scores__v1" in tables(engine) and statuses(engine)[1] == "ready"
            with engine.connect() as conn:
                run = conn.execute(text("SELECT status FROM pipeline_runs ORDER BY id DESC LIMIT 1")).scalar_one()
            assert run == "succeeded"
            assert holder.execute(text('SELECT COUNT(*) FROM scores__v1')).scalar_one() == held == 50
            kept = gc(engine, "scores", keep=1).kept
            assert "scores__v1 is held by a reader" in kept[1]
        finally:
            holder.rollback()
            holder.close()
        assert gc(engine, "scores", keep=1).retired == [1]
        assert statuses(engine)[1] == "retired" and "scores__v1" not in tables(engine)
    finally:
        engine.dispose()


def test_a_job_keeps_five_versions_by_default(engine, job_path):
    for _ in range(7):
        run_job(load_job(job_path), engine, force=True)
    assert statuses(engine) == {1: "retired", 2: "retired", 3: "ready", 4: "ready", 5: "ready", 6: "ready",
                                7: "ready"}
    assert tables(engine) == {f"scores__v{v}" for v in range(3, 8)}


def test_a_version_activated_while_gc_runs_is_kept(engine, db_url, write_job, tmp_path):
    """`pipeline gc scores --keep 1` while `pipeline activate scores 1` flipped to a version gc meant to drop: on
    PostgreSQL and MariaDB gc dropped it after the flip, and the pointer named a retired version whose view served
    no rows."""
    from pipeline import activate

    write_table(engine, "customers", customers_frame(30))
    path = write_job(SCRIPTED_JOB, model=Scripted())
    for _ in range(4):
        run_job(load_job(path), engine, force=True)
    child, lines = start_command(tmp_path, db_url, "retiring:5", "gc", "scores", "--keep", "1")
    try:
        wait_for(lines, "pipeline: paused at retiring")
        activate(engine, "scores", 1)
        assert child.wait(60) == 0
    finally:
        child.kill()
    assert "scores: kept version 1: " in child.stdout.read()
    assert set(view_rows(engine).model_version) == {1}
    assert [r.version.status for r in catalog.versions(engine, "scores")][:2] == ["ready", "retired"]
