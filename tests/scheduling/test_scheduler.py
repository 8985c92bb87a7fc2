"""The scheduler, cron entries and missed ticks: every tick runs once, however many processes try."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job
from pipeline.cli import main
from pipeline.cron import cron_trigger
from pipeline.database import schema, state
from pipeline.database.engines import make_engine
from pipeline.database.transactions import transaction
from pipeline.errors import PipelineError
from pipeline.scheduling import scheduler as scheduler_module
from pipeline.scheduling.crontab import crontab
from pipeline.scheduling.scheduler import Scheduler, due_tick, missed_ticks
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
        ticks = conn.execute(text("SELECT scheduled_for, COUNT(*), MIN(status), MAX(version), MIN(error) "
                                  "FROM pipeline_runs GROUP BY scheduled_for ORDER BY 1")).all()
        versions = conn.execute(text("SELECT COUNT(*) FROM pipeline_versions WHERE status = 'ready'")).scalar()
    engine.dispose()
    ran = [t for t in ticks if t[2] == "succeeded"]
    assert len(ran) >= 3 and all(count == 1 for _, count, _, _, _ in ticks), ticks  # each tick once
    # a tick that fired while the previous run still went on (a loaded machine) is recorded as missed, not lost
    assert all(t[2] == "succeeded" or (t[4] or "").startswith("missed") for t in ticks), ticks
    assert versions == len(ran) and [t[3] for t in ran] == list(range(1, len(ran) + 1))
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
    missed = missed_ticks(job, db_url, now).ticks
    assert len(missed) in (3, 4) and missed[0] == last + timedelta(hours=1)
    caplog.set_level("INFO", logger="pipeline")
    Scheduler(path.parent, db_url).catch_up([job])
    assert f"scores: {len(missed)} tick(s) missed while no scheduler ran" in caplog.text
    due = now.minute * 60 + now.second < 300  # this hour's tick, inside the grace time, runs at start-up too
    assert len(catalog.versions(engine, "scores")) == len(missed) + due
    assert not missed_ticks(job, db_url, now)


def record_tick(engine, tick):
    with transaction(engine) as conn:  # what a scheduler recorded before it went down
        schema.ensure_schema(conn)
        run_id = state.start_run(conn, job="scores", table="scores", logical_date=tick.date(), trigger="schedule",
                                 scheduled_for=tick, now=tick, host="old", pid=1)
        state.finish_run(conn, run_id, "succeeded", tick)


def test_missed_ticks_without_catchup_are_recorded_and_shown(engine, db_url, write_job, tmp_path, monkeypatch,
                                                            caplog):
    write_table(engine, "customers", customers_frame(30))
    path = write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=1))
    now = state.utcnow()
    last = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    record_tick(engine, last)
    missed = missed_ticks(load_job(path), db_url, now).ticks
    caplog.set_level("INFO", logger="pipeline")
    Scheduler(path.parent, db_url).catch_up([load_job(path)])
    runs = [r for r in catalog.runs(engine, "scores") if r.host != "old"]
    recorded = sorted(r.scheduled_for for r in runs if r.status == "failed")
    assert recorded == missed and len(missed) >= 2
    assert all(r.error == "missed: no scheduler was running" and r.version is None for r in runs
               if r.status == "failed")
    assert f"{missed[0].isoformat()}" in caplog.text and "recorded as failed runs" in caplog.text
    assert not missed_ticks(load_job(path), db_url, now)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["status", "--db", db_url]).output
    failing = sum(1 for r in runs if r.status == "failed")
    assert f"{failing} ({len(missed)} missed)" in out


def test_the_tick_inside_the_grace_time_runs_at_start_up(engine, db_url, write_job):
    """Stopped just before a tick and started just after it, a scheduler runs that tick (APScheduler alone would
    start from now and leave it)."""
    write_table(engine, "customers", customers_frame(30))
    path = write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=3600))
    due = state.utcnow().replace(minute=0, second=0, microsecond=0)
    record_tick(engine, due - timedelta(hours=1))
    Scheduler(path.parent, db_url).catch_up([load_job(path)])
    run = catalog.runs(engine, "scores")[0]
    assert (run.scheduled_for, run.status, run.version) == (due, "succeeded", 1)


@pytest.mark.postgres
def test_schedulers_stopped_and_restarted_across_ticks_never_lose_or_double_one(postgresql_url, write_job, tmp_path):
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    write_table(engine, "customers", customers_frame(100))
    write_job(scheduled(CUSTOMERS_JOB, "*/2 * * * * *", misfire_grace_seconds=1))
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_DATABASE_URL"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pipeline", "schedule", "--db", postgresql_url], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    a = start()
    time.sleep(6)
    a.kill()  # a crash: no clean shutdown
    a.wait(20)
    time.sleep(5)  # ticks pass with no scheduler
    b = start()
    time.sleep(5)
    c = start()  # a second scheduler beside the first
    time.sleep(5)
    b.send_signal(signal.SIGTERM)
    assert b.wait(20) == 0
    time.sleep(5)
    c.send_signal(signal.SIGTERM)
    assert c.wait(20) == 0, c.stderr.read()[-2000:]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT scheduled_for, COUNT(*), MIN(status), MIN(error) FROM pipeline_runs "
                                 "GROUP BY scheduled_for ORDER BY 1")).all()
    engine.dispose()
    ticks = [r[0] for r in rows]
    assert all(count == 1 for _, count, _, _ in rows), rows  # no tick twice
    assert all((b - a) == timedelta(seconds=2) for a, b in zip(ticks, ticks[1:])), ticks  # none lost
    missed = [r for r in rows if r[2] == "failed" and (r[3] or "").startswith("missed")]
    assert missed and len(rows) - len(missed) >= 4, rows  # the downtime's ticks are recorded as missed


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


def test_cron_runs_read_the_variables_the_job_files_name_as_pipeline_cron_did(tmp_path, monkeypatch, write_job):
    """cron starts each line with the crontab's environment only: a job's ``target = "${SCORES_DB}"`` failed there
    ("environment variable SCORES_DB is not set"), and a ``${VAR:-default}`` would have read its default."""
    target = tmp_path / "scores.db"
    write_table(make_engine(f"sqlite:///{target}"), "customers", customers_frame(50))
    write_job(scheduled(CUSTOMERS_JOB, "* * * * *", target='"${SCORES_DB:-sqlite:///elsewhere.db}"'))
    (tmp_path / "jobs" / "defaults.toml").write_text('[notify.on_success]\ncommand = "echo ${RUN_NOTE} >> note.txt"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    monkeypatch.setenv("SCORES_DB", f"sqlite:///{target}")
    monkeypatch.setenv("RUN_NOTE", "from cron")
    lines = crontab("jobs", "logs")
    assert f"SCORES_DB=sqlite:///{target}" in lines and "RUN_NOTE=from cron" in lines
    environment = dict(line.split("=", 1) for line in lines if re.match(r"[A-Z_]+=", line))
    entry = next(line for line in lines if line.startswith("* * * * * "))
    run = subprocess.run(["sh", "-c", entry.split(" ", 5)[5].replace("\\%", "%")], env=environment, timeout=120)
    assert run.returncode == 0, (tmp_path / "logs" / "scores.log").read_text()
    assert versions_of(target) == [1] and not (tmp_path / "elsewhere.db").exists()
    assert (tmp_path / "jobs" / "note.txt").read_text().strip() == "from cron"  # hooks run in the jobs folder
    monkeypatch.setenv("RUN_NOTE", "two\nlines")
    with pytest.raises(PipelineError, match="RUN_NOTE holds a line break"):
        crontab("jobs", "logs")


def versions_of(path) -> list[int]:
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        found = [v.version for v in state.list_versions(conn, "scores")]
    engine.dispose()
    return found


def test_cron_lines_escape_percent_signs(tmp_path, monkeypatch, write_job):
    """cron turns a bare % into a newline: a URL such as ?options=-csearch_path%3Dx must reach the shell whole."""
    write_job(scheduled(CUSTOMERS_JOB, "15 3 * * *"))
    monkeypatch.chdir(tmp_path)
    url = "postgresql://app@db/x?options=-csearch_path%3Dscores"
    entry = next(line for line in crontab("jobs", "logs", db_url=url) if line.startswith("15 3 "))
    assert re.search(r"(?<!\\)%", entry) is None  # every % is escaped
    words = shlex.split(entry.replace("\\%", "%").split(" ", 5)[5])  # what cron hands the shell, as sh reads it
    assert words[words.index("--db") + 1] == url


def test_a_tick_that_cannot_start_is_logged_with_its_reason(write_job, caplog):
    """A job file broken since the last tick, or a database down at the tick: the scheduler says so then, in one
    line, rather than leaving the tick to be found later as missed."""
    with socket.socket() as sock:  # a port nothing listens on: the database is down
        sock.bind(("127.0.0.1", 0))
        down = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/test"
    path = write_job(scheduled(CUSTOMERS_JOB, "* * * * *", misfire_grace_seconds=120))
    scheduler = Scheduler(path.parent, down)
    scheduler.load()
    caplog.set_level("INFO", logger="pipeline")
    scheduler._tick(path, "scores")
    path.write_text("schedule = [", encoding="utf-8")
    scheduler._tick(path, "scores")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2, errors
    assert errors[0].startswith(f"{path}: tick not run: database error:") and "Connection refused" in errors[0]
    assert errors[1].startswith(f"{path}: tick not run: {path}: not valid TOML")


def test_a_database_down_at_start_up_is_logged_and_the_other_jobs_catch_up(engine, db_url, write_job, caplog,
                                                                          monkeypatch):
    """One job's database down when the scheduler starts must not stop it, nor the catch-up of other jobs."""
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/test"
    write_table(engine, "customers", customers_frame(30))
    lost = load_job(write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=3600, target=f'"{down}"'),
                              name="lost"))
    path = write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=3600, target=f'"{db_url}"'),
                     name="kept")
    due = state.utcnow().replace(minute=0, second=0, microsecond=0)
    caplog.set_level("INFO", logger="pipeline")
    Scheduler(path.parent).catch_up([lost, load_job(path)])
    (error,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error.startswith("lost: ticks since the last recorded one not looked for: database error:"), error
    (run,) = catalog.runs(engine)
    assert (run.job, run.scheduled_for, run.status) == ("kept", due, "succeeded")


def test_a_schedule_edited_while_the_scheduler_runs_takes_effect_without_a_restart(write_job, caplog):
    """03:00 moved to 04:00 in the job file: the tick that still fires at 03:00 finds nothing due, and from then on
    the scheduler fires on the new schedule (before, it kept firing at 03:00, where nothing is ever due)."""
    path = write_job(scheduled(CUSTOMERS_JOB, "0 3 * * *"))
    scheduler = Scheduler(path.parent)
    scheduler.load()
    path.write_text(path.read_text(encoding="utf-8").replace('"0 3 * * *"', '"0 4 * * *"'), encoding="utf-8")
    caplog.set_level("INFO", logger="pipeline")
    fired = scheduler.scheduler.get_job("scores")
    fired.func(*fired.args)  # what APScheduler does at 03:00
    assert str(scheduler.scheduler.get_job("scores").trigger) == str(cron_trigger("0 4 * * *"))
    assert "scores: now scheduled on '0 4 * * *' (UTC)" in caplog.text


def test_a_tick_whose_database_is_down_notifies_its_failure(write_job, tmp_path, monkeypatch):
    """A database down at a tick kept the tick from running, and its on_failure hooks heard nothing of it, under
    the scheduler and under cron alike (a manual run with the database down does notify)."""
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/test"
    path = write_job(scheduled(CUSTOMERS_JOB, "* * * * *", misfire_grace_seconds=120)
                     + '\n[notify.on_failure]\ncommand = "cat >> failed.jsonl; echo >> failed.jsonl"\n')
    scheduler = Scheduler(path.parent, down)
    scheduler.catch_up(scheduler.load())  # at start-up
    scheduler._tick(path, "scores")  # at a tick
    out = CliRunner().invoke(main, ["--jobs", str(path.parent), "run", "scores", "--scheduled", "--db", down])
    assert out.exit_code == 1 and "Connection refused" in out.output
    sent = [json.loads(line) for line in (path.parent / "failed.jsonl").read_text().splitlines()]
    assert [(s["job"], s["status"], s["trigger"]) for s in sent] == [("scores", "failed", "schedule")] * 2 + [
        ("scores", "failed", "cron")]
    assert all(s["error"].startswith("database error:") and "Connection refused" in s["error"] for s in sent)
    assert all(s["scheduled_for"].endswith(":00+00:00") and s["run_id"] is None for s in sent), sent


@pytest.mark.parametrize("limit", [None, 1000])
def test_a_gap_longer_than_the_limit_loses_no_tick(engine, db_url, write_job, monkeypatch, caplog, limit):
    """An every-minute job whose scheduler was down 2499 minutes: 1000 ticks were recorded as missed and the log
    said `1000 tick(s) missed`; the other 1499 were neither recorded nor said, and missed_ticks found none left.
    Now every one is recorded; past the limit (memory for absurd gaps), the rest in one run that says how many."""
    if limit is not None:
        monkeypatch.setattr(scheduler_module, "MISSED_LIMIT", limit)
    job = load_job(write_job(scheduled(CUSTOMERS_JOB, "* * * * *", misfire_grace_seconds=30)))
    now = datetime(2026, 1, 10, 12, 0, 10, tzinfo=timezone.utc)
    record_tick(engine, now.replace(second=0) - timedelta(minutes=2500))
    caplog.set_level("INFO", logger="pipeline")
    assert due_tick(job, db_url, now=lambda: now) == now.replace(second=0)
    missed = [r for r in catalog.runs(engine, "scores", limit=5000) if r.host != "old"]
    assert all(r.status == "failed" and r.error.startswith("missed: ") for r in missed)
    assert "scores: 2499 tick(s) missed" in caplog.text and not missed_ticks(job, db_url, now)
    if limit is None:
        assert len(missed) == 2499 and len({r.scheduled_for for r in missed}) == 2499
    else:
        (rest,) = [r for r in missed if "1499 tick(s)" in r.error]
        assert len(missed) == 1001 and rest.scheduled_for == now.replace(second=0) - timedelta(minutes=1)


#: A statement of each server's that counts the sessions waiting for a lock to insert into pipeline_runs.
LOCK_WAITS = {"postgresql": "SELECT count(*) FROM pg_locks WHERE NOT granted",
              "mysql": "SELECT count(*) FROM information_schema.processlist "
                       "WHERE state = 'Update' AND info LIKE 'INSERT INTO pipeline_runs%'"}


@pytest.mark.parametrize("server", [pytest.param("postgresql", marks=pytest.mark.postgres),
                                    pytest.param("mysql", marks=pytest.mark.mysql)])
def test_two_schedulers_recording_one_gap_record_each_tick_once(request, server, write_job, caplog):
    """Two schedulers catching up the same gap both read that no tick was recorded, then both inserted: the later
    insert met the unique tick index and its whole catch-up failed with a database error in its log. It now reads
    again and records only the ticks the other did not."""
    url = request.getfixturevalue(f"{server}_url")
    engine = make_engine(url)
    job = load_job(write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=30)))
    now = datetime(2026, 1, 10, 12, 0, 10, tzinfo=timezone.utc)
    record_tick(engine, now.replace(second=0) - timedelta(hours=4))
    gap = missed_ticks(job, url, now)
    assert [t.hour for t in gap.ticks] == [9, 10, 11]
    caplog.set_level("INFO", logger="pipeline")
    failed: list[BaseException] = []

    def other_scheduler() -> None:
        try:
            scheduler_module.settle_gaps(job, url, gap, "schedule", "no scheduler was running")
        except BaseException as exc:  # noqa: BLE001 - the assertion below shows it
            failed.append(exc)

    with engine.connect() as first:
        with first.begin():  # the first scheduler has inserted two of the ticks and not yet committed
            state.record_missed(first, job="scores", table="scores", ticks=[(t, t.date()) for t in gap.ticks[:2]],
                                trigger="schedule", error="missed: no scheduler was running", now=now,
                                host="first", pid=1)
            thread = threading.Thread(target=other_scheduler)
            thread.start()
            deadline = time.monotonic() + 10
            with engine.connect() as watch:  # the second read none of them and waits on the first's insert
                while not watch.execute(text(LOCK_WAITS[server])).scalar() and time.monotonic() < deadline:
                    time.sleep(0.02)
        thread.join(30)
    runs = [r for r in catalog.runs(engine, "scores") if r.host != "old"]
    engine.dispose()
    assert not failed, failed
    assert sorted((r.scheduled_for.hour, r.host == "first") for r in runs) == [(9, True), (10, True), (11, False)]
    assert "another process recorded some of the missed ticks meanwhile" in caplog.text


def test_a_tick_whose_run_is_still_starting_is_not_recorded_missed_by_the_next(engine, db_url, write_job, caplog):
    """Process A held the table's run lock for tick 11:00 and had not recorded it yet (its model still loading);
    process B, at 12:00, recorded 11:00 as missed and was then refused the lock: A found its tick recorded and
    skipped it, and neither tick ran. The gap is now left alone while a run holds the table."""
    from pipeline.database.dialects import dialect_for

    write_table(engine, "customers", customers_frame(20))
    job = load_job(write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=30)))
    now = datetime(2026, 1, 10, 12, 0, 10, tzinfo=timezone.utc)
    record_tick(engine, now.replace(second=0) - timedelta(hours=2))
    caplog.set_level("INFO", logger="pipeline")
    with dialect_for(engine).run_lock(engine, "scores"):  # A, still starting its run of 11:00
        assert due_tick(job, db_url, now=lambda: now) == now.replace(second=0)
    assert [r.host for r in catalog.runs(engine, "scores")] == ["old"]  # 11:00 is not called missed
    assert "scores: a run of scores is under way; the 1 tick(s) before it are left to a later tick" in caplog.text
    assert missed_ticks(job, db_url, now).ticks == [now.replace(minute=0, second=0) - timedelta(hours=1)]
    due_tick(job, db_url, now=lambda: now)  # with no run under way (A never recorded its tick), it is missed
    (missed,) = [r for r in catalog.runs(engine, "scores") if r.host != "old"]
    assert missed.status == "failed" and missed.error.startswith("missed: ")


def test_catch_up_past_the_limit_records_the_rest_as_one_missed_run(sqlite_url, write_job, monkeypatch):
    monkeypatch.setattr(scheduler_module, "MISSED_LIMIT", 2)
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(20))
    job = load_job(write_job(scheduled(CUSTOMERS_JOB, "0 * * * *", misfire_grace_seconds=30, catchup=True)))
    now = datetime(2026, 1, 10, 12, 0, 10, tzinfo=timezone.utc)
    record_tick(engine, now.replace(second=0) - timedelta(hours=5))
    due_tick(job, sqlite_url, now=lambda: now)
    runs = sorted((r for r in catalog.runs(engine, "scores") if r.host != "old"), key=lambda r: r.scheduled_for)
    engine.dispose()
    assert [(r.scheduled_for.hour, r.status) for r in runs] == [(8, "succeeded"), (9, "succeeded"), (11, "failed")]
    assert "stands for all 2 tick(s) after 2026-01-10T09:00:00+00:00 up to this one" in runs[-1].error
    assert not missed_ticks(job, sqlite_url, now)


def test_a_tick_that_fires_during_the_start_up_catch_up_runs_after_it(sqlite_url, write_job, monkeypatch):
    """A catch-up that lasts past a tick: that tick, still inside its grace time, runs once the catch-up is done (as
    coalesce promises), rather than never fire and be recorded at the next tick as missed, for a reason no log said."""
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(20))
    path = write_job(scheduled(CUSTOMERS_JOB, "*/5 * * * * *"))
    caught_up = Scheduler.catch_up
    ticks = []

    def long_catch_up(self: Scheduler, jobs: list) -> None:
        caught_up(self, jobs)
        ticks.append(cron_trigger("*/5 * * * * *").get_next_fire_time(None, state.utcnow()))
        while state.utcnow() <= ticks[0]:  # the catch-up goes on past the tick
            time.sleep(0.01)

    monkeypatch.setattr(Scheduler, "catch_up", long_catch_up)
    scheduler = Scheduler(path.parent, sqlite_url)
    scheduler.start()
    try:
        deadline = time.monotonic() + 60
        while not (found := [r for r in catalog.runs(engine, "scores")
                             if r.scheduled_for == ticks[0] and r.status != "running"]):
            assert time.monotonic() < deadline, "the tick has no finished record"
            time.sleep(0.05)
    finally:
        scheduler.stopping.set()
        scheduler.scheduler.shutdown(wait=True)
        engine.dispose()
    assert [(r.status, r.error) for r in found] == [("succeeded", None)]
