"""Backfills and logical dates: one version per date, resumable, never moving the pointer backwards."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.database.engines import make_engine
from pipeline.errors import PipelineError
from pipeline.scheduling.backfill import backfill
from pipeline.serve import catalog
from pipeline.serve.retention import reap

from helpers import CUSTOMERS_JOB, Outage, customers_frame, view_rows, write_table

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)
# The domain does not depend on the date; the query still takes it, as a real one would.
DATED = CUSTOMERS_JOB.replace("FROM customers", "FROM customers WHERE CAST(:run_date AS VARCHAR(10)) > '2000'")
# On 2026-01-02 this domain lists every key twice, so that date fails its key check.
BROKEN_ON_D2 = CUSTOMERS_JOB.replace(
    '"SELECT customer_id, x1, x2, x3 FROM customers"',
    '"SELECT customer_id, x1, x2, x3 FROM customers UNION ALL SELECT customer_id, x1, x2, x3 FROM customers '
    "WHERE CAST(:run_date AS VARCHAR(10)) = '2026-01-02'\"")


@pytest.fixture
def job_path(engine, write_job):
    write_table(engine, "customers", customers_frame(100))
    return write_job(DATED)


def dated_versions(engine) -> dict[dt.date, list[str]]:
    found: dict[dt.date, list[str]] = {}
    for row in catalog.versions(engine, "scores"):
        found.setdefault(row.version.logical_date, []).append(row.version.status)
    return found


def end_the_run_lock(pg) -> None:
    """End the server session that holds the PostgreSQL run lock of ``scores`` (as a restart would), and wait until
    it has gone, lock and all."""
    from pipeline.database.dialects.postgresql import _lock_key

    with pg.begin() as conn:
        key = _lock_key(conn, "pipeline-run:scores")
        conn.execute(text("SELECT pg_terminate_backend(pid, 60000) FROM pg_locks WHERE locktype = 'advisory' "
                          "AND objsubid = 1 AND classid = CAST(CAST(:hi AS bigint) AS oid) "
                          "AND objid = CAST(CAST(:lo AS bigint) AS oid)"),
                     {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF})


def active_date(engine) -> dt.date:
    return next(r.version.logical_date for r in catalog.versions(engine, "scores") if r.active)


def test_three_dates_then_nothing_on_a_second_pass(engine, job_path):
    result = backfill(load_job(job_path), engine, D1, D3)
    assert sorted(result.done) == [D1, D2, D3] and not result.failed
    assert dated_versions(engine) == {D1: ["ready"], D2: ["ready"], D3: ["ready"]}
    assert active_date(engine) == D3 and result.flip.to_version == 3
    again = backfill(load_job(job_path), engine, D1, D3)
    assert all(r.skipped for r in again.done.values()) and again.flip is None
    assert len(catalog.versions(engine, "scores")) == 3
    assert [r.status for r in catalog.runs(engine, "scores")][:3] == ["skipped"] * 3


def test_a_failed_date_is_the_only_one_redone(engine, job_path, write_job):
    result = backfill(load_job(write_job(BROKEN_ON_D2)), engine, D1, D3)
    assert sorted(result.done) == [D1, D3] and list(result.failed) == [D2]
    assert "more than once" in result.failed[D2]
    assert active_date(engine) == D3
    fixed = backfill(load_job(write_job(DATED.replace(
        "WHERE CAST(:run_date AS VARCHAR(10)) > '2000'", ""))), engine, D1, D3)
    assert [d for d, r in fixed.done.items() if not r.skipped] == [D2] and not fixed.failed
    assert dated_versions(engine) == {D1: ["ready"], D2: ["failed", "ready"], D3: ["ready"]}
    assert active_date(engine) == D3  # the pointer stays on the newest date


def test_the_pointer_never_goes_back_to_an_older_date(engine, job_path):
    run_job(load_job(job_path), engine, logical_date=D3)
    result = backfill(load_job(job_path), engine, D1, D2)
    assert result.flip is None and "stands for 2026-01-03" in result.kept_pointer
    assert active_date(engine) == D3
    backfill(load_job(job_path), engine, dt.date(2026, 1, 4), dt.date(2026, 1, 4), activate="none")
    assert active_date(engine) == D3


def test_parallel_dates(engine, job_path):
    result = backfill(load_job(job_path), engine, D1, dt.date(2026, 1, 4), parallel=2)
    assert len(result.done) == 4 and not result.failed, result.failed
    assert sorted(dated_versions(engine)) == [D1, D2, D3, dt.date(2026, 1, 4)]
    assert len(view_rows(engine)) == 100 and active_date(engine) == dt.date(2026, 1, 4)


def test_bad_ranges(engine, job_path):
    with pytest.raises(PipelineError, match="--end 2026-01-01 is before --start 2026-01-03"):
        backfill(load_job(job_path), engine, D3, D1)


def test_backfill_and_runs_commands(engine, db_url, job_path, write_job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_job(BROKEN_ON_D2)
    runner = CliRunner()
    out = runner.invoke(main, ["--quiet", "backfill", "scores", "--start", "2026-01-01", "--end", "2026-01-03", "--db", db_url])
    assert out.exit_code == 1
    lines = out.output.splitlines()
    assert lines[0].startswith("2026-01-01: version 1") and lines[1].startswith("2026-01-02: failed: ")
    assert lines[-1] == ("Error: 1 of 3 date(s) failed: 2026-01-02; run the backfill again to retry them")
    out = runner.invoke(main, ["runs", "scores", "--db", db_url])
    rows = [line.split() for line in out.output.splitlines()[1:]]
    assert out.exit_code == 0 and [(r[2], r[3], r[4]) for r in rows] == [
        ("2026-01-03", "backfill", "succeeded"), ("2026-01-02", "backfill", "failed"),
        ("2026-01-01", "backfill", "succeeded")]


def test_a_manual_run_of_a_done_date_is_skipped_unless_forced(engine, job_path):
    first = run_job(load_job(job_path), engine, logical_date=D1)
    again = run_job(load_job(job_path), engine, logical_date=D1)
    assert again.skipped and again.version == first.version
    assert run_job(load_job(job_path), engine, logical_date=D2).version == 2  # another date is new work
    assert run_job(load_job(job_path), engine, logical_date=D1, force=True).version == 3


@pytest.mark.postgres
def test_a_backfill_that_lost_its_run_lock_publishes_no_more_dates(pg, write_job):
    """The run lock's connection dropped between two dates (a server-side idle timeout, pg_terminate_backend):
    another run may hold the table now, so no later date may publish, as a single run that lost it does not."""
    write_table(pg, "customers", customers_frame(50))
    job = load_job(write_job(DATED))

    def cut_the_lock(day: dt.date, *_: object) -> None:
        if day == D1:
            end_the_run_lock(pg)

    result = backfill(job, pg, D1, D2, on_date=cut_the_lock)
    assert list(result.done) == [D1] and "lost the run lock" in result.failed[D2]
    assert dated_versions(pg) == {D1: ["ready"], D2: ["failed"]}


@pytest.mark.postgres
def test_a_database_outage_during_a_backfill_is_tried_again_for_each_date(postgresql_url, pg, write_job):
    """The server goes away after the first date (every connection cut, the run lock's session ended) and is back
    once a try has failed: with retries, each date is tried again, as a single run is, under the run lock taken
    anew, and each date is one run in pipeline_runs."""
    url = make_url(postgresql_url)
    outage = Outage(url.host, url.port or 5432)
    engine = make_engine(url.set(port=outage.port).render_as_string(hide_password=False))

    class BackUp(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "failed on a passing fault" in record.getMessage():
                outage.down = False

    def cut(day: dt.date, *_: object) -> None:
        if day == D1:
            outage.cut()
            end_the_run_lock(pg)

    handler = BackUp()
    logging.getLogger("pipeline").addHandler(handler)
    try:
        write_table(engine, "customers", customers_frame(50))
        result = backfill(load_job(write_job("retries = 3\n" + DATED)), engine, D1, D3, on_date=cut)
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
        outage.close()
        engine.dispose()
    assert sorted(result.done) == [D1, D2, D3] and not result.failed, result.failed
    runs = {r.logical_date: r for r in catalog.runs(pg, "scores")}
    assert len(catalog.runs(pg, "scores")) == 3 and {r.status for r in runs.values()} == {"succeeded"}
    assert runs[D1].retries is None and len(runs[D2].retries) >= 1
    assert dated_versions(pg) == {D1: ["ready"], D2: ["ready"], D3: ["ready"]}


def test_the_newest_dates_success_is_told_after_the_activation_it_had(engine, job_path, write_job):
    """Each date's success is told as it ends but the newest's, which waits for the activation at the end: a hook
    that pages on ``activated`` hears the version the backfill made active once, as active (before, every date
    said activated=false, that one too)."""
    job = load_job(write_job(DATED + '\n[notify.on_success]\ncommand = "cat >> told.jsonl; echo >> told.jsonl"\n'))
    result = backfill(job, engine, D1, D3)
    told = [json.loads(line) for line in (job.path.parent / "told.jsonl").read_text().splitlines()]
    assert [(t["logical_date"], t["activated"]) for t in told] == [
        ("2026-01-01", False), ("2026-01-02", False), ("2026-01-03", True)]
    assert (told[-1]["version"], told[-1]["previous_version"]) == (result.flip.to_version, None)
    assert told[-1]["message"].endswith("active (was none)")


@pytest.mark.postgres
def test_a_date_that_lost_its_database_keeps_its_own_error_once_the_database_is_back(postgresql_url, pg, write_job,
                                                                                     caplog):
    """The server goes away while the second date builds, and is back once that date failed (its record's end
    unwritten, the server down): the backfill writes that end, with the date's error, when the database is back,
    rather than leave the record running for the next run to call abandoned (killed, ...)."""
    url = make_url(postgresql_url)
    outage = Outage(url.host, url.port or 5432)
    engine = make_engine(url.set(port=outage.port).render_as_string(hide_password=False))

    class Outages(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said = record.getMessage()
            if said.startswith("scores: building version 2 "):
                outage.cut()
                end_the_run_lock(pg)
            elif said.startswith("could not record the end of run"):
                outage.down = False

    handler = Outages()
    caplog.set_level(logging.INFO, logger="pipeline")  # "building version 2"
    logging.getLogger("pipeline").addHandler(handler)
    try:
        write_table(engine, "customers", customers_frame(50))
        result = backfill(load_job(write_job(DATED)), engine, D1, D3)
    finally:
        logging.getLogger("pipeline").removeHandler(handler)
        outage.close()
        engine.dispose()
    reap(pg, "scores")  # what the next run, pipeline status or gc does first
    failed = {r.logical_date: r for r in catalog.runs(pg, "scores")}[D2]
    assert failed.status == "failed" and failed.error.split(": ")[-1] in result.failed[D2], failed.error
    assert "abandoned" not in failed.error


def test_a_backfill_longer_than_keep_says_that_retention_retires_its_first_dates(engine, job_path, write_job, caplog):
    job = load_job(write_job(DATED + "keep = 2\n"))
    backfill(job, engine, D1, D3)
    assert "3 dates are more than [output] keep = 2" in caplog.text
    assert dated_versions(engine)[D1] == ["retired"]  # what it warned of: running it again redoes 2026-01-01
    caplog.clear()
    backfill(job, engine, D2, D3)
    assert "keep" not in caplog.text


def test_a_date_that_cannot_record_its_start_after_its_retries_is_journaled(sqlite_url, write_job, monkeypatch,
                                                                             caplog):
    """Another process holds the SQLite write lock from the second date on: each later date is tried again, then
    recorded in the journal, which the next run folds into pipeline_runs, as a single run's record is."""
    import sqlite3

    from pipeline.database.dialects import sqlite as sqlite_dialect
    from pipeline.database.engines import make_engine

    monkeypatch.setattr(sqlite_dialect, "BUSY_TIMEOUT_MS", 200)
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(20))
    job = load_job(write_job("retries = 1\n" + DATED + "publish_timeout = 1\n"))
    blocker = sqlite3.connect(engine.url.database, isolation_level=None)

    def block(day: dt.date, *_: object) -> None:
        if day == D1:
            blocker.execute("BEGIN IMMEDIATE")

    try:
        result = backfill(job, engine, D1, D3, on_date=block, activate="none")
    finally:
        blocker.close()
    assert list(result.done) == [D1] and all("recorded in" in result.failed[d] for d in (D2, D3)), result.failed
    assert caplog.text.count("try 1 of 2 failed on a passing fault") == 2
    run_job(job, engine, logical_date=D1)  # folds the journal
    runs = {r.logical_date: r for r in catalog.runs(engine, "scores") if r.trigger == "backfill"}
    assert {d: r.status for d, r in runs.items()} == {D1: "succeeded", D2: "failed", D3: "failed"}
    engine.dispose()
