"""The scheduler, cron entries and missed ticks: every tick runs once, however many processes try."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job
from pipeline.cli import main
from pipeline.database import schema, state
from pipeline.database.transactions import transaction
from pipeline.scheduling.crontab import crontab
from pipeline.scheduling.scheduler import Scheduler, missed_ticks
from pipeline.serve import catalog

from helpers import CUSTOMERS_JOB, customers_frame, scheduled, write_table


@pytest.mark.postgres
def test_two_schedulers_run_each_tick_once_and_stop_on_sigterm(postgresql_url, write_job, tmp_path):
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    write_table(engine, "customers", customers_frame(200))
    write_job(scheduled(CUSTOMERS_JOB, "*/3 * * * * *"))
    env = {**os.environ}
    env.pop("PIPELINE_DATABASE_URL", None)
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "schedule", "--db", postgresql_url], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(11)
    stopped = time.monotonic()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = [proc.wait(20) for proc in procs]
    assert codes == [0, 0], [proc.stderr.read()[-2000:] for proc in procs]
    assert time.monotonic() - stopped < 10
    with engine.connect() as conn:
        ticks = conn.execute(text("SELECT scheduled_for, COUNT(*), MIN(status), MAX(version) FROM pipeline_runs "
                                  "GROUP BY scheduled_for ORDER BY 1")).all()
        versions = conn.execute(text("SELECT COUNT(*) FROM pipeline_versions WHERE status = 'ready'")).scalar()
    engine.dispose()
    assert len(ticks) >= 3
    assert all(count == 1 and status == "succeeded" for _, count, status, _ in ticks), ticks
    assert versions == len(ticks) and [t[3] for t in ticks] == list(range(1, len(ticks) + 1))
    logs = "".join(proc.stderr.read() for proc in procs)
    assert "scheduler stopped" in logs and "tick" in logs


def test_run_scheduled_runs_a_tick_once(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(50))
    # a yearly tick, still due for a year: two invocations always stand for the same tick
    write_job(scheduled(CUSTOMERS_JOB, "0 0 1 1 *", misfire_grace_seconds=400 * 86400))
    monkeypatch.chdir(tmp_path)
    first = CliRunner().invoke(main, ["run", "scores", "--scheduled", "--db", db_url])
    second = CliRunner().invoke(main, ["run", "scores", "--scheduled", "--db", db_url])
    assert first.exit_code == 0 and "version 1 is active" in first.output
    assert second.exit_code == 0 and "was recorded already" in second.output
    run = catalog.runs(engine, "scores")[0]
    assert (run.trigger, run.status, run.scheduled_for.month, run.scheduled_for.day) == ("cron", "succeeded", 1, 1)


def test_missed_ticks_are_reported_and_caught_up(engine, db_url, write_job, tmp_path, caplog):
    write_table(engine, "customers", customers_frame(30))
    path = write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", catchup=True))
    job = load_job(path)
    now = state.utcnow()
    last = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=4)
    with transaction(engine) as conn:  # what a scheduler left before it went down four hours ago
        schema.ensure_schema(conn)
        state.start_run(conn, job="scores", table="scores", logical_date=last.date(), trigger="schedule",
                        scheduled_for=last, now=last, host="old", pid=1)
    missed = missed_ticks(job, db_url, now)
    assert len(missed) in (3, 4) and missed[0] == last + timedelta(hours=1)
    caplog.set_level("INFO", logger="pipeline")
    Scheduler(path.parent, db_url).catch_up([job])
    assert f"scores: {len(missed)} tick(s) missed while no scheduler ran" in caplog.text
    assert len(catalog.versions(engine, "scores")) == len(missed)
    assert missed_ticks(job, db_url, now) == []


def test_scheduler_needs_a_scheduled_job(tmp_path, monkeypatch, write_job):
    write_job(CUSTOMERS_JOB)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["schedule"])
    assert out.exit_code == 1 and out.output.strip() == "Error: no job with a schedule in jobs/"


def test_cron_lines(tmp_path, monkeypatch, write_job):
    write_job(scheduled(CUSTOMERS_JOB, "15 3 * * 1-5"))
    write_job(scheduled(CUSTOMERS_JOB, "*/5 * * * * *"), name="fast")
    monkeypatch.chdir(tmp_path)
    lines = crontab("jobs", "logs")
    entry = next(line for line in lines if line.startswith("15 3 * * 1-5 "))
    assert f"{sys.executable} -m pipeline --jobs {tmp_path / 'jobs'} run scores --scheduled" in entry
    assert f">> {tmp_path / 'logs' / 'scores.log'} 2>&1" in entry and f"cd {tmp_path}" in entry
    assert "# cron has no seconds field; use `pipeline schedule` for fast" in lines
    out = CliRunner().invoke(main, ["cron"])
    assert out.exit_code == 0 and entry in out.output
