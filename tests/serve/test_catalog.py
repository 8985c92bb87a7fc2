"""The catalog operators read: versions with the pointers at them, the flip history, one status line per table,
the run history and stored audits."""

from __future__ import annotations

import pytest

from pipeline import activate, load_job, rollback, run_job
from pipeline.errors import AuditError, SourceError, TableError
from pipeline.serve import catalog

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, write_table

ROWS = 40


@pytest.fixture
def job_path(engine, write_job):
    write_table(engine, "customers", customers_frame(ROWS))
    return write_job(SCRIPTED_JOB, model=Scripted())


@pytest.fixture
def history_made(engine, job_path):
    """Versions 1..3 by runs, the challenger alias at 1, then the champion rolled back from 3 to 2."""
    for _ in range(3):
        run_job(load_job(job_path), engine, force=True)
    activate(engine, "scores", 1, alias="challenger")
    rollback(engine, "scores")
    return engine


def broken_job(write_job):
    """A job of the same table whose domain query names a table that does not exist."""
    return load_job(write_job(SCRIPTED_JOB.replace("FROM customers", "FROM no_such_table"), name="broken",
                              model=Scripted()))


def test_versions_lists_every_version_oldest_first_with_the_active_one_and_its_aliases(history_made):
    rows = catalog.versions(history_made, "scores")
    assert [r.version.version for r in rows] == [1, 2, 3]
    assert [r.active for r in rows] == [False, True, False]
    assert [r.aliases for r in rows] == [("challenger",), ("champion",), ()]
    assert [(r.version.status, r.version.row_count, r.version.job) for r in rows] == [("ready", ROWS, "scores")] * 3
    assert all(r.version.table_name == "scores" and r.version.keys == ("customer_id",) for r in rows)


def test_history_lists_the_flips_oldest_first_per_alias(history_made):
    flips = catalog.history(history_made, "scores")
    assert [(f.from_version, f.to_version, f.reason) for f in flips] == [
        (None, 1, "run of job scores"), (1, 2, "run of job scores"), (2, 3, "run of job scores"), (3, 2, "rollback")]
    assert all(f.alias == "champion" and f.table_name == "scores" and "@" in f.actor for f in flips)
    times = [f.flipped_at for f in flips]
    assert times == sorted(times)
    challenger = catalog.history(history_made, "scores", alias="challenger")
    assert [(f.alias, f.from_version, f.to_version, f.reason) for f in challenger] == [
        ("challenger", None, 1, "activate")]
    assert catalog.history(history_made, "scores", alias="nobody") == []
    with pytest.raises(TableError, match="alias \"Bad'\" must be lower-case"):  # no alias has that name
        catalog.history(history_made, "scores", alias="Bad'")


def test_status_gives_one_line_per_table(history_made, write_job):
    other = write_job(SCRIPTED_JOB.replace('table = "scores"', 'table = "other"'), name="other", model=Scripted())
    run_job(load_job(other), history_made, force=True)
    lines = catalog.status(history_made)
    assert [s.table for s in lines] == ["other", "scores"]
    scores = lines[1]
    assert (scores.active_version, scores.row_count, scores.latest_version, scores.latest_status) == (2, ROWS, 3,
                                                                                                      "ready")
    assert scores.aliases == (("challenger", 1),) and scores.split is None
    assert scores.failed_runs == 0 and scores.latest_error is None
    assert (scores.last_run.job, scores.last_run.status, scores.last_run.version) == ("scores", "succeeded", 3)
    assert scores.activated_at == catalog.history(history_made, "scores")[-1].flipped_at  # the rollback
    versions = {r.version.version: r.version for r in catalog.versions(history_made, "scores")}
    assert (scores.model_sha256, scores.logical_date) == (versions[2].model_sha256, versions[2].logical_date)
    assert (lines[0].active_version, lines[0].row_count, lines[0].aliases, lines[0].last_run.job) == (1, ROWS, (),
                                                                                                      "other")


def test_status_counts_failed_runs_since_the_last_success(engine, job_path, write_job):
    run_job(load_job(job_path), engine, force=True)
    broken = broken_job(write_job)
    for _ in range(2):
        with pytest.raises(SourceError):
            run_job(broken, engine, force=True)
    [line] = catalog.status(engine)
    assert line.failed_runs == 2
    assert (line.last_run.job, line.last_run.status) == ("broken", "failed")
    assert (line.active_version, line.latest_version, line.latest_status) == (1, 3, "failed")
    assert "no_such_table" in line.latest_error
    run_job(load_job(job_path), engine, force=True)
    [line] = catalog.status(engine)
    assert (line.failed_runs, line.active_version, line.last_run.status) == (0, 4, "succeeded")


def test_runs_are_newest_first_and_filtered_by_job_and_limited(engine, job_path, write_job):
    for _ in range(2):
        run_job(load_job(job_path), engine, force=True)
    with pytest.raises(SourceError):
        run_job(broken_job(write_job), engine, force=True)
    run_job(load_job(job_path), engine, force=True)
    every = catalog.runs(engine)
    assert [(r.job, r.status) for r in every] == [
        ("scores", "succeeded"), ("broken", "failed"), ("scores", "succeeded"), ("scores", "succeeded")]
    assert [every[0].version, every[2].version, every[3].version] == [4, 2, 1]  # the broken run's version 3 failed
    assert "no_such_table" in every[1].error and every[0].error is None
    assert [r.id for r in every] == sorted((r.id for r in every), reverse=True)
    assert all(r.table_name == "scores" and r.trigger == "manual" for r in every)
    assert [r.id for r in catalog.runs(engine, job="scores")] == [every[0].id, every[2].id, every[3].id]
    assert [r.id for r in catalog.runs(engine, job="broken")] == [every[1].id]
    assert [r.id for r in catalog.runs(engine, limit=2)] == [every[0].id, every[1].id]
    assert [r.id for r in catalog.runs(engine, job="scores", limit=1)] == [every[0].id]
    assert catalog.runs(engine, job="nobody") == []
    # `pipeline runs --limit 99999999999999999999` said "unexpected OverflowError" (SQLite), "bigint out of range"
    # (PostgreSQL) or "You have an error in your SQL syntax" (MariaDB): it asks for every run
    assert [r.id for r in catalog.runs(engine, limit=10**20)] == [r.id for r in every]


def test_audits_returns_the_stored_results_of_a_version(engine, job_path, write_job):
    result = run_job(load_job(job_path), engine, force=True)
    stored = catalog.audits(engine, "scores", 1)
    assert [a.name for a in stored] == sorted(r.name for r in result.audits)
    assert {a.name: (a.passed, a.detail) for a in stored} == {r.name: (r.passed, r.detail) for r in result.audits}
    assert {"row_count", "keys_not_null", "keys_unique"} <= {a.name for a in stored}
    strict = load_job(write_job(SCRIPTED_JOB + "\n[audits]\nbounds = { prediction = { max = -100 } }",
                                name="strict", model=Scripted()))
    with pytest.raises(AuditError):
        run_job(strict, engine)
    failed = {a.name: a.passed for a in catalog.audits(engine, "scores", 2)}
    assert failed["bounds:prediction"] is False and failed["row_count"] is True
    assert catalog.audits(engine, "scores", 9) == []


def test_an_unknown_table_is_refused(engine, job_path):
    for call in (catalog.versions, catalog.history):
        with pytest.raises(TableError, match=r"^no prediction table 'scores' in this database"):
            call(engine, "scores")  # no bookkeeping tables at all yet
    run_job(load_job(job_path), engine, force=True)
    for call in (catalog.versions, catalog.history):
        with pytest.raises(TableError, match=r"^no prediction table 'nope' in this database"):
            call(engine, "nope")


def test_an_empty_database_has_no_status_runs_or_audits(engine):
    assert catalog.status(engine) == []
    assert catalog.runs(engine) == []
    assert catalog.runs(engine, job="scores") == []
    assert catalog.audits(engine, "scores", 1) == []
