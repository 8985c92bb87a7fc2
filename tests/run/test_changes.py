"""Change-driven top-ups: only the rows the source says changed since the watermark are read and scored; the
result equals a full run's, no change made during a run is lost, and a top-up that cannot be trusted is a full run
that says why."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Iterator
from urllib.parse import quote

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.database import state
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.errors import PipelineError
from pipeline.run import materialize
from pipeline.run.context import today
from pipeline.tools.plan import plan_job

from helpers import (CHANGES_JOB, CUSTOMERS_JOB, change, customers_frame, delete, insert, now, quoted, train_model,
                     version_rows, write_source)

KEYS = 1000


def carried(engine: Engine, lineage: int) -> str:
    """How a top-up says it kept the active version's other rows: in its lineage on PostgreSQL, else copied."""
    return f"kept in lineage {lineage}" if dialect_for(engine).LINEAGES else "copied"


def versions(engine: Engine) -> list[tuple]:
    """(version, row_count, domain_size, watermark, top_ups) of each version, as the metadata records them."""
    with engine.connect() as conn:
        return [(v.version, v.row_count, v.domain_size, v.watermark, v.top_ups)
                for v in state.list_versions(conn, "scores")]


def test_a_top_up_after_updates_inserts_and_deletes_equals_a_full_run(engine, db_url, write_job, tmp_path):
    write_source(engine, customers_frame(KEYS))
    write_job(CHANGES_JOB)
    cli = CliRunner()
    base = ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", db_url]
    first = cli.invoke(main, base)
    assert first.exit_code == 0 and "version 1 is active (1000 rows," in first.output, first.output
    change(engine, "customer_id <= 10")                  # 10 changed, 5 of them then deleted
    new = customers_frame(100, seed=9)
    new["customer_id"] += KEYS
    insert(engine, new)                                  # 100 new keys
    delete(engine, "customer_id <= 5 OR customer_id = 500")  # 6 keys gone
    out = cli.invoke(main, base + ["--incremental"])
    assert out.exit_code == 0, out.output
    assert f"version 2 is active (1094 rows: 105 scored, 989 {carried(engine, 1)}" in out.output
    assert "full run" not in out.output
    full = cli.invoke(main, base + ["--full", "--force"])
    assert full.exit_code == 0 and "version 3 is active (1094 rows," in full.output, full.output
    topped, fresh = version_rows(engine, 2), version_rows(engine, 3)
    pd.testing.assert_frame_equal(topped, fresh, check_exact=True)  # the same rows, bit for bit
    one = version_rows(engine, 1).set_index("customer_id")
    two = topped.set_index("customer_id")
    assert (one.loc[6:10, "proba_true"] != two.loc[6:10, "proba_true"]).all()  # the changed rows were scored again
    assert 500 not in two.index and not set(range(1, 6)) & set(two.index)
    rows = versions(engine)
    assert [(v, n, size, top_ups) for v, n, size, _, top_ups in rows] == [
        (1, 1000, 1000, None), (2, 1094, 1094, 1), (3, 1094, 1094, None)]
    assert all(watermark is not None for _, _, _, watermark, _ in rows)
    listed = cli.invoke(main, ["versions", "scores", "--db", db_url]).output.splitlines()
    assert "watermark" in listed[0] and "top-ups" in listed[0]
    second = next(line for line in listed if line.split()[0] == "2")
    assert f"{rows[1][3]:%Y-%m-%d %H:%M:%S}  1  " in second, second
    with engine.connect() as conn:
        audits = conn.execute(text("SELECT COUNT(*) FROM pipeline_audits WHERE version = 2 AND passed = :t"),
                              {"t": True}).scalar()
        assert audits > 0
        assert not any(t.endswith("__gone") for t in engine.dialect.get_table_names(conn))


def _stamp(engine: Engine, value: datetime) -> str:
    """``value`` (UTC) as a literal the source's ``updated_at`` holds (the test servers' sessions are in UTC); a
    whole second as ``CURRENT_TIMESTAMP`` writes it, without a fraction."""
    if dialect_for(engine).name == "sqlite":
        fraction = f".{value.microsecond // 1000:03d}" if value.microsecond else ""
        return f"'{value.strftime('%Y-%m-%d %H:%M:%S')}{fraction}'"
    return f"'{value.replace(tzinfo=None).isoformat(sep=' ')}'"


def test_since_is_the_watermark_of_the_active_version_from_the_sources_clock(engine, write_job):
    write_source(engine, customers_frame(100))
    job = load_job(write_job(CHANGES_JOB))
    past = datetime(2001, 1, 1, tzinfo=timezone.utc)
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    run_job(job, engine, clock=lambda: past)  # the pipeline's own clock says 2001; the watermark is the source's
    (_, _, _, watermark, _), = versions(engine)
    assert before < watermark < datetime.now(timezone.utc) + timedelta(seconds=5)
    second = watermark.replace(microsecond=0)  # :since: the watermark to the second
    with engine.begin() as conn:  # rows 1-3 stamped just before that second, rows 4-6 in it and after the watermark
        conn.execute(text(f"UPDATE customers SET x1 = x1 + 1, updated_at = "
                          f"{_stamp(engine, second - timedelta(milliseconds=2))} WHERE customer_id <= 3"))
        conn.execute(text(f"UPDATE customers SET x1 = x1 + 1, updated_at = {_stamp(engine, second)} "
                          f"WHERE customer_id BETWEEN 4 AND 5"))
        conn.execute(text(f"UPDATE customers SET x1 = x1 + 1, updated_at = "
                          f"{_stamp(engine, watermark + timedelta(milliseconds=2))} WHERE customer_id = 6"))
    top_up = run_job(job, engine, incremental=True)
    assert (top_up.rows, top_up.copied, top_up.top_up) == (100, 97, True)  # 4, 5 and 6 scored; 1-3 kept as they were
    one, two = (version_rows(engine, v).set_index("customer_id") for v in (1, 2))
    assert (one.loc[1:3, "proba_true"] == two.loc[1:3, "proba_true"]).all()
    assert (one.loc[4:6, "proba_true"] != two.loc[4:6, "proba_true"]).all()


def test_a_change_made_during_a_run_is_read_by_the_next_top_up(engine, write_job, monkeypatch):
    write_source(engine, customers_frame(200))
    job = load_job(write_job(CHANGES_JOB))
    run_job(job, engine)
    change(engine, "customer_id = 1")
    time.sleep(1.01 - datetime.now().microsecond / 1e6)  # so that the next watermark's second comes after it

    def late(phase: str) -> None:  # once this run's rows are read and written: a writer changes row 7
        if phase == "auditing":
            change(engine, "customer_id = 7")

    with monkeypatch.context() as patch:
        patch.setattr(materialize, "checkpoint", late)
        during = run_job(job, engine, incremental=True)
    assert (during.rows, during.copied) == (200, 199)  # row 1 only: row 7 changed after it was read
    after = run_job(job, engine, incremental=True)
    assert after.copied == 199 + 1 - 1  # row 7 scored now (row 1, stamped before this run's watermark, copied)
    assert (version_rows(engine, 3).set_index("customer_id").loc[7, "proba_true"]
            != version_rows(engine, 2).set_index("customer_id").loc[7, "proba_true"])
    full = run_job(job, engine, full=True, force=True)
    pd.testing.assert_frame_equal(version_rows(engine, after.version), version_rows(engine, full.version),
                                  check_exact=True)


def test_a_top_up_without_a_watermark_is_a_full_run_and_says_so(engine, db_url, write_job, tmp_path):
    write_source(engine, customers_frame(100))
    path = write_job(CUSTOMERS_JOB)  # no changed query: versions record no watermark
    run_job(load_job(path), engine)
    write_job(CHANGES_JOB)
    cli = CliRunner()
    base = ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", db_url]
    out = cli.invoke(main, base + ["--incremental", "--force"])
    assert out.exit_code == 0, out.output
    assert ("scores: a full run, not a top-up: version 1 recorded no watermark to read changes from" in out.output)
    assert "version 2 is active (100 rows," in out.output and "scored" not in out.output
    again = cli.invoke(main, base + ["--incremental"])  # version 2 has one
    assert f"version 3 is active (100 rows: 0 scored, 100 {carried(engine, 2)}" in again.output, again.output
    assert "full run" not in again.output


def test_no_active_version_or_another_model_is_a_full_run(engine, write_job, caplog):
    write_source(engine, customers_frame(50))
    path = write_job(CHANGES_JOB)
    first = run_job(load_job(path), engine, incremental=True)
    assert (first.top_up, first.full_because) == (False, "there is no active version to top up")
    train_model(path.parent / "models" / "scores.joblib", seed=5)
    with caplog.at_level("WARNING", logger="pipeline"):
        second = run_job(load_job(path), engine, incremental=True)
    assert not second.top_up and second.full_because.startswith("version 1 was scored by another model")
    assert "a full run, not a top-up: version 1 was scored by another model" in caplog.text
    third = run_job(load_job(path), engine, incremental=True)
    assert third.top_up and third.full_because is None


def test_full_every_makes_every_nth_run_a_full_one(engine, write_job):
    write_source(engine, customers_frame(50))
    job = load_job(write_job(CHANGES_JOB.replace("[model]", "full_every = 3\n    incremental = true\n    [model]")))
    kinds = []
    for _ in range(6):  # the job's own setting makes them top-ups, no --incremental given
        change(engine, "customer_id = 1")
        result = run_job(job, engine)
        kinds.append((result.top_up, result.full_because))
    every = "domain.full_every = 3 (top-ups since the last full run: 2)"
    assert kinds == [(False, "there is no active version to top up"), (True, None), (True, None), (False, every),
                     (True, None), (True, None)]
    assert [top_ups for *_, top_ups in versions(engine)] == [None, 1, 2, None, 1, 2]
    forced = run_job(job, engine, full=True)  # --full
    assert (forced.top_up, forced.full_because) == (False, None)


def test_a_backfill_runs_in_full_whatever_the_job_says(engine, write_job):
    from datetime import date

    from pipeline.scheduling.backfill import backfill

    write_source(engine, customers_frame(50))
    job = load_job(write_job(CHANGES_JOB.replace("[model]", "incremental = true\n    [model]")))
    assert run_job(job, engine, incremental=True).full_because == "there is no active version to top up"
    assert run_job(job, engine).top_up  # the job's own setting
    done = backfill(job, engine, date(2026, 1, 1), date(2026, 1, 2))
    assert not done.failed and [top_ups for *_, top_ups in versions(engine)] == [None, 1, None, None]


def test_a_top_up_is_refused_on_the_dask_executor_before_a_version_is_made(engine, write_job):
    import dataclasses

    from pipeline.jobspec import ExecutorSpec

    write_source(engine, customers_frame(50))
    job = load_job(write_job(CHANGES_JOB))
    run_job(job, engine)
    with pytest.raises(PipelineError, match="--incremental runs on the local executor"):
        run_job(dataclasses.replace(job, executor=ExecutorSpec("dask")), engine, incremental=True)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT COUNT(*) FROM {quoted(engine, 'pipeline_versions')}")).scalar() == 1


def test_incremental_and_full_together_are_refused(write_job, tmp_path, sqlite_url):
    write_job(CHANGES_JOB)
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", sqlite_url,
                                    "--incremental", "--full"])
    assert out.exit_code == 2 and "--incremental and --full ask for opposite runs; give one" in out.output


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def zoned_engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A database whose sessions are 5 hours behind UTC, so that local stamps and UTC ones differ."""
    url = request.getfixturevalue(f"{request.param}_url")
    if request.param == "postgresql":
        monkeypatch.setenv("PGTZ", "EST")  # libpq's: every connection, ADBC's reader too, sets TimeZone
    else:
        url += "?init_command=" + quote("SET time_zone = '-05:00'")
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_since_compares_with_local_stamps_in_the_sessions_time_zone(zoned_engine, write_job):
    engine = zoned_engine
    with engine.connect() as conn:  # the test is void unless the session's clock reads local time
        local = conn.execute(text(f"SELECT {now(engine)}")).scalar_one()
    assert abs(local.replace(tzinfo=None) - datetime.now(timezone.utc).replace(tzinfo=None)) > timedelta(hours=4)
    write_source(engine, customers_frame(100))  # updated_at: a timestamp / DATETIME without a zone
    job = load_job(write_job(CHANGES_JOB))
    run_job(job, engine)
    change(engine, "customer_id <= 4")  # stamped with now() / NOW(6): local time, 5 hours behind UTC
    top_up = run_job(job, engine, incremental=True)
    assert (top_up.rows, top_up.copied) == (100, 96)
    full = run_job(job, engine, full=True, force=True)
    pd.testing.assert_frame_equal(version_rows(engine, 2), version_rows(engine, full.version), check_exact=True)


def test_a_database_an_older_release_made_gains_the_watermark_and_tops_up_after_a_full_run(engine, write_job):
    write_source(engine, customers_frame(50))
    job = load_job(write_job(CHANGES_JOB))
    run_job(job, engine)
    with engine.begin() as conn:  # as a release before change-driven top-ups left it
        conn.execute(text("ALTER TABLE pipeline_versions DROP COLUMN watermark"))
        conn.execute(text("ALTER TABLE pipeline_versions DROP COLUMN top_ups"))
    upgraded = run_job(job, engine, incremental=True)
    assert not upgraded.top_up and upgraded.full_because.startswith("version 1 recorded no watermark")
    again = run_job(job, engine, incremental=True)
    assert again.top_up, again.full_because


def test_plan_counts_what_a_top_up_would_read_or_says_why_it_would_be_a_full_run(engine, db_url, write_job,
                                                                                   tmp_path):
    write_source(engine, customers_frame(KEYS))
    path = write_job(CHANGES_JOB)
    cli = CliRunner()
    base = ["--jobs", str(tmp_path / "jobs"), "plan", "scores", "--incremental", "--db", db_url]
    first = cli.invoke(main, base)
    assert first.exit_code == 0 and "top-up:    none, a full run: there is no active version to top up" \
        in first.output, first.output
    run_job(load_job(path), engine)
    change(engine, "customer_id <= 7")
    delete(engine, "customer_id > 997")
    out = cli.invoke(main, base)
    assert out.exit_code == 0, out.output
    watermark = versions(engine)[0][3].replace(microsecond=0)
    assert (f"top-up:    from v1 (watermark {watermark}): 7 row(s) changed since, 3 key(s) removed; the rest of "
            f"v1's 1000 rows {carried(engine, 1)}") in out.output
    assert "rows to score (new or changed)" not in out.output  # the domain's hashes are not compared
    found = plan_job(load_job(path), engine, today(load_job(path)), incremental=True)
    assert (found.change_driven.changed, found.change_driven.removed, found.full_because) == (7, 3, None)
    assert versions(engine)[-1][0] == 1  # nothing was written
    train_model(path.parent / "models" / "scores.joblib", seed=5)
    again = cli.invoke(main, base)
    assert "top-up:    none, a full run: version 1 was scored by another model" in again.output, again.output


def test_a_null_key_that_removed_lists_matches_nothing_and_leaves_no_table_behind(engine, write_job):
    write_source(engine, customers_frame(100))
    path = write_job(CHANGES_JOB)
    run_job(load_job(path), engine)
    delete(engine, "customer_id = 40")
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO customers_gone (customer_id, deleted_at) VALUES (NULL, {now(engine)})"))
    topped = run_job(load_job(path), engine, incremental=True)
    assert topped.top_up and topped.version == 2
    assert versions(engine)[1][:2] == (2, 99)
    assert 40 not in set(version_rows(engine, 2).customer_id)
    with engine.connect() as conn:
        assert not any(t.endswith("__gone") for t in engine.dialect.get_table_names(conn))


@pytest.mark.parametrize("changed, removed, error", [
    pytest.param("SELECT customer_id, x1, x2, x3 FROM nowhere WHERE updated_at >= :since", None,
                 "[domain] changed: domain query failed", id="changed-fails"),
    pytest.param("SELECT CAST(customer_id AS CHAR(20)) AS customer_id, x1, x2, x3 FROM customers "
                 "WHERE updated_at >= :since", None, "[domain] changed: it returns customer_id as text values where "
                 "the active version's customer_id is integer; cast it to that type in the query",
                 id="changed-text-keys"),
    pytest.param(None, "SELECT customer_id AS id FROM customers_gone WHERE deleted_at >= :since",
                 "[domain] removed: domain key(s) customer_id not among the domain's columns: id", id="removed-no-key"),
    pytest.param(None, "SELECT CAST(customer_id AS CHAR(20)) AS customer_id FROM customers_gone "
                 "WHERE deleted_at >= :since", "[domain] removed: it returns customer_id as text values where the "
                 "active version's customer_id is integer; cast it to that type in the query", id="removed-text-keys"),
])
def test_a_change_query_that_fails_is_named_and_the_served_version_stays(engine, db_url, write_job, tmp_path,
                                                                        changed, removed, error):
    """A failure in ``changed`` or ``removed`` names that query (a bare "domain query failed" points at the domain's
    own, which works); text keys for an integer key are refused: ``'5'`` is not ``5`` to the copy, and PostgreSQL
    failed on them with an unexpected TypeError."""
    write_source(engine, customers_frame(100))
    body = CHANGES_JOB
    if changed:
        body = body.replace("SELECT customer_id, x1, x2, x3 FROM customers WHERE updated_at >= :since", changed)
    if removed:
        body = body.replace("SELECT customer_id FROM customers_gone WHERE deleted_at >= :since", removed)
    write_job(body)
    base = ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", db_url]
    assert CliRunner().invoke(main, base + ["--full"]).exit_code == 0
    change(engine, "customer_id <= 10")
    delete(engine, "customer_id = 5")
    out = CliRunner().invoke(main, base + ["--incremental"])
    assert out.exit_code == 1 and out.output.strip().splitlines()[-1].startswith(f"Error: {error}"), out.output
    assert "Traceback" not in out.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT DISTINCT model_version FROM scores")).scalars().all() == [1]
        assert state.get_version(conn, "scores", 2).status == "failed"
