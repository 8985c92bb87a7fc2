"""Notifications: [notify] hooks (a command, a webhook to a real local HTTP server) hear each run's outcome, in
every payload format, from the library, the CLI, a backfill and a scheduled run; a failing hook changes nothing."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.errors import DatabaseError, JobFileError, JobLocked, SourceError
from pipeline.jobs import find_job, iter_jobs, job_files
from pipeline.jobspec import Hook, NotifySpec
from pipeline.run.context import RunOptions
from pipeline.run.notify import Outcome, alerts, notified, notify, payload, run_command, slack
from pipeline.serve import catalog

from helpers import CUSTOMERS_JOB, customers_frame, scheduled, write_table

DAY = date(2026, 1, 31)


class Receiver:
    """A webhook endpoint: an HTTP server on a free port that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self.authorizations: list[str | None] = []
        self.status = 200
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers["Content-Length"])
                received.bodies.append(json.loads(self.rfile.read(length)))
                received.authorizations.append(self.headers["Authorization"])
                assert self.headers["Content-Type"] == "application/json"
                self.send_response(received.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def customers(engine) -> None:
    write_table(engine, "customers", customers_frame(50))


def closed_port() -> int:
    """A port nothing listens on: a webhook there gets connection refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_notify(body: str, notify: str) -> str:
    return body + "\n" + notify


BROKEN_JOB = CUSTOMERS_JOB.replace("FROM customers", "FROM no_such_table")


def test_a_failed_run_posts_once_with_job_table_date_and_error(engine, db_url, customers, write_job, receiver):
    job = load_job(write_job(with_notify(BROKEN_JOB, f"""
        [notify.on_failure]
        webhook = "{receiver.url}"
        [notify.on_success]
        webhook = "{receiver.url}"
    """)))
    with pytest.raises(SourceError) as failed:
        run_job(job, engine, logical_date=DAY)
    assert len(receiver.bodies) == 1
    sent = receiver.bodies[0]
    assert (sent["job"], sent["table"], sent["logical_date"], sent["status"], sent["trigger"]) == (
        "scores", "scores", "2026-01-31", "failed", "manual")
    assert sent["error"] == str(failed.value).splitlines()[0] and "no_such_table" in sent["error"]
    assert sent["host"] == socket.gethostname() and sent["version"] is None and sent["seconds"] >= 0
    assert sent["run_id"] == catalog.runs(engine)[0].id  # the failed run's record
    assert sent["message"] == f"scores: run for 2026-01-31 failed: {sent['error']}"
    dumped = json.dumps(sent)
    assert db_url.split("?")[0] not in dumped and "postgres@" not in dumped and "sqlite:" not in dumped


def test_success_and_skip_hooks_get_the_version_rows_and_run(engine, customers, write_job, receiver):
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, f"""
        [notify.on_success]
        webhook = "{receiver.url}"
        [notify.on_skip]
        webhook = "{receiver.url}"
        [notify.on_failure]
        webhook = "{receiver.url}"
    """)))
    first = run_job(job, engine, logical_date=DAY)
    again = run_job(job, engine, logical_date=DAY)
    assert again.skipped
    done, skipped = receiver.bodies
    assert (done["status"], done["version"], done["previous_version"], done["rows"], done["activated"]) == (
        "succeeded", 1, None, 50, True)
    assert done["run_id"] == first.run_id and isinstance(done["run_id"], int) and done["error"] is None
    assert done["message"].startswith("scores: run for 2026-01-31: version 1 of scores, 50 rows in ")
    assert (skipped["status"], skipped["version"], skipped["run_id"]) == ("skipped", 1, again.run_id)
    assert skipped["skip_reason"] == again.skipped and "already holds 2026-01-31" in skipped["skip_reason"]


def test_a_command_gets_the_facts_on_stdin_and_in_its_environment(sqlite_url, write_job):
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(20))
    path = write_job(with_notify(CUSTOMERS_JOB, """
        [notify.on_success]
        command = "cat > facts.json; env | grep ^PIPELINE_ | sort > env.txt"
    """))
    result = run_job(load_job(path), engine, logical_date=DAY)
    engine.dispose()
    facts = json.loads((path.parent / "facts.json").read_text())  # the command runs in the job file's folder
    assert (facts["status"], facts["version"], facts["rows"], facts["run_id"]) == ("succeeded", 1, 20, result.run_id)
    env = dict(line.split("=", 1) for line in (path.parent / "env.txt").read_text().splitlines())
    assert {k: env[k] for k in ("PIPELINE_JOB", "PIPELINE_TABLE", "PIPELINE_LOGICAL_DATE", "PIPELINE_STATUS",
                                "PIPELINE_VERSION", "PIPELINE_ROWS", "PIPELINE_ERROR", "PIPELINE_ACTIVATED",
                                "PIPELINE_RUN_ID")} == {
        "PIPELINE_JOB": "scores", "PIPELINE_TABLE": "scores", "PIPELINE_LOGICAL_DATE": "2026-01-31",
        "PIPELINE_STATUS": "succeeded", "PIPELINE_VERSION": "1", "PIPELINE_ROWS": "20", "PIPELINE_ERROR": "",
        "PIPELINE_ACTIVATED": "true", "PIPELINE_RUN_ID": str(result.run_id)}


def test_failing_hooks_are_warnings_and_never_change_the_outcome(engine, customers, write_job, receiver, caplog):
    receiver.status = 500
    hooks = f"""
        [[notify.on_success]]
        webhook = "http://127.0.0.1:{closed_port()}/down?token=s3cret"
        [[notify.on_success]]
        webhook = "{receiver.url}"
        [[notify.on_success]]
        command = "echo 'no pager here' >&2; exit 3"
        [[notify.on_success]]
        command = "sleep 30"
        timeout = 0.5
        [[notify.on_failure]]
        command = "exit 1"
        webhook = "http://127.0.0.1:{closed_port()}/"
    """
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, hooks)))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        result = run_job(job, engine, logical_date=DAY)
    assert (result.version, result.activated, result.rows) == (1, True, 50)
    assert len(receiver.bodies) == 1  # it answered 500, and was still sent exactly once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4, warnings
    assert all(w.startswith("scores: notify.on_success ") and "failed (the run's outcome stands)" in w
               for w in warnings)
    assert "webhook to http://127.0.0.1" in warnings[0] and "Connection refused" in warnings[0]
    assert "HTTP Error 500" in warnings[1]
    assert "command 'echo'" in warnings[2] and "exit status 3: no pager here" in warnings[2]
    assert "command 'sleep'" in warnings[3] and "timed out after 0.5 s" in warnings[3]
    assert not any("s3cret" in w or "/down" in w for w in warnings)  # a webhook's path may hold its token

    broken = load_job(write_job(with_notify(BROKEN_JOB, hooks), name="broken"))
    caplog.clear()
    with pytest.raises(SourceError, match="no_such_table"):
        run_job(broken, engine, logical_date=DAY)
    assert sum("notify.on_failure" in r.getMessage() for r in caplog.records) == 2


def test_another_run_holding_the_table_notifies_nothing(engine, customers, write_job, receiver):
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, f"""
        [notify.on_failure]
        webhook = "{receiver.url}"
        [notify.on_skip]
        webhook = "{receiver.url}"
    """)))
    with dialect_for(engine).run_lock(engine, "scores"):
        with pytest.raises(JobLocked):
            run_job(job, engine, logical_date=DAY)
    assert receiver.bodies == []


def outcome(status: str, **facts: Any) -> Outcome:
    base = dict(job="churn", table="churn_scores", logical_date="2026-01-31", status=status, trigger="schedule",
                seconds=4.2, host="batch-1")
    return Outcome(**{**base, **facts})


def test_slack_payload_has_text_and_blocks_with_the_facts():
    sent = slack(outcome("failed", error="audit failed: proba_true above 1 <max>"))
    assert sent["text"] == ":x: churn: run for 2026-01-31 failed: audit failed: proba_true above 1 &lt;max&gt;"
    section, facts = sent["blocks"]
    assert section == {"type": "section", "text": {"type": "mrkdwn", "text": sent["text"]}}
    assert {"type": "mrkdwn", "text": "*table*\nchurn_scores"} in facts["fields"]
    assert not any(f["text"].startswith("*version*") for f in facts["fields"])  # unknown facts are left out
    ok = slack(outcome("succeeded", version=3, previous_version=2, activated=True, rows=500))
    assert ok["text"] == (":white_check_mark: churn: run for 2026-01-31: version 3 of churn_scores, 500 rows in "
                          "4.2 s, active (was 2)")


def test_alertmanager_payload_fires_on_failure_and_resolves_on_success():
    (firing,) = alerts(outcome("failed", error="database error: connection refused"))
    assert firing["labels"] == {"alertname": "PipelineRunFailed", "pipeline_job": "churn", "table": "churn_scores"}
    assert firing["annotations"]["summary"] == "churn: run for 2026-01-31 failed: database error: connection refused"
    assert firing["annotations"]["error"] == "database error: connection refused"
    assert all(isinstance(v, str) for v in firing["annotations"].values())
    starts, ends = (datetime.fromisoformat(firing[k]) for k in ("startsAt", "endsAt"))
    assert firing["startsAt"].endswith("Z") and (ends - starts).total_seconds() == 24 * 3600
    (resolved,) = alerts(outcome("succeeded", version=3, rows=10, activated=True, run_id=7))
    assert resolved["labels"] == firing["labels"]  # the same alert, so a success resolves the failure
    assert resolved["startsAt"] == resolved["endsAt"]
    assert (resolved["annotations"]["activated"], resolved["annotations"]["run_id"]) == ("true", "7")
    skipped = payload("json", outcome("skipped", skip_reason="done"))
    assert skipped["message"] == "churn: run for 2026-01-31 skipped: done"


@pytest.mark.parametrize("fmt", ["slack", "alertmanager"])
def test_a_webhook_receives_its_format(engine, customers, write_job, receiver, fmt):
    job = load_job(write_job(with_notify(BROKEN_JOB, f"""
        [notify.on_failure]
        webhook = "{receiver.url}"
        format = "{fmt}"
    """)))
    with pytest.raises(SourceError):
        run_job(job, engine, logical_date=DAY)
    (sent,) = receiver.bodies
    if fmt == "slack":
        assert "no_such_table" in sent["text"] and sent["blocks"]
    else:
        assert sent[0]["labels"]["pipeline_job"] == "scores" and "no_such_table" in sent[0]["annotations"]["error"]


@pytest.mark.parametrize("notify, message", [
    ('notify = "yes"', "notify: must be a table ([notify])"),
    ("[notify]\non_fail = {}", "notify.on_fail: unknown key (expected one of: on_failure, on_skip, on_success)"),
    ("[notify.on_failure]\nformat = 'slack'", "notify.on_failure: needs a command, a webhook or both"),
    ("[notify.on_failure]\nwebhook = 'ftp://example.com/x?token=s3cret'",
     "notify.on_failure.webhook: must be an http:// or https:// URL"),
    ("[notify.on_failure]\nwebhook = 'https://example.com'\nformat = 'teams'",
     "notify.on_failure.format: must be one of json, slack, alertmanager, got 'teams'"),
    ("[notify.on_failure]\ncommand = 'true'\nformat = 'slack'",
     "notify.on_failure.format: goes with webhook (a command always gets the JSON facts)"),
    ("[notify.on_failure]\ncommand = 'true'\ntimeout = 0", "notify.on_failure.timeout: must be more than 0 (seconds)"),
    ("[notify.on_failure]\ncommand = 'true'\nurl = 'x'",
     "notify.on_failure.url: unknown key (expected one of: command, format, timeout, webhook)"),
    ("[[notify.on_skip]]\ncommand = 'true'\n[[notify.on_skip]]\ncommand = 3",
     "notify.on_skip[1].command: must be a string, got int"),
    ("[notify.on_failure]\nwebhook = '${NO_SUCH_HOOK_URL}'",
     "notify.on_failure.webhook: environment variable NO_SUCH_HOOK_URL is not set"),
])
def test_notify_mistakes_name_the_file_and_key(write_job, notify, message):
    top_level = not notify.startswith("[")  # a key before the first table, where TOML puts top-level keys
    path = write_job(notify + "\n" + CUSTOMERS_JOB if top_level else with_notify(CUSTOMERS_JOB, notify))
    with pytest.raises(JobFileError) as error:
        load_job(path, environ={})
    assert str(error.value) == f"{path}: {message}"


def test_notify_reads_one_or_several_hooks_and_expands_the_webhook(write_job):
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, """
        [notify.on_failure]
        webhook = "${SLACK_URL}"
        format = "slack"
        command = "scripts/page.sh"
        timeout = 5
        [[notify.on_success]]
        command = "true"
        [[notify.on_success]]
        webhook = "http://alertmanager:9093/api/v2/alerts"
        format = "alertmanager"
    """)), environ={"SLACK_URL": "https://hooks.slack.com/services/T/B/x"})
    assert job.notify == NotifySpec(
        on_failure=(Hook(command="scripts/page.sh", webhook="https://hooks.slack.com/services/T/B/x", format="slack",
                         timeout=5.0),),
        on_success=(Hook(command="true"), Hook(webhook="http://alertmanager:9093/api/v2/alerts",
                                               format="alertmanager")))


def test_defaults_apply_to_every_job_without_its_own_notify(engine, customers, write_job, receiver):
    own = write_job(with_notify(CUSTOMERS_JOB, "[notify]"), name="quiet")  # an empty [notify]: no hooks at all
    path = write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "others"'))
    defaults = path.parent / "defaults.toml"
    defaults.write_text(f'[notify.on_success]\nwebhook = "{receiver.url}"\n', encoding="utf-8")
    job = load_job(path)
    assert job.notify.on_success == (Hook(webhook=receiver.url),)
    assert load_job(own).notify == NotifySpec()
    run_job(job, engine, logical_date=DAY)
    run_job(load_job(own), engine, logical_date=DAY)
    assert [b["table"] for b in receiver.bodies] == ["others"]

    # defaults.toml is never taken for a job
    assert sorted(j.name for j in iter_jobs(path.parent)) == ["quiet", "scores"]
    assert [p.name for p in job_files(path.parent)] == ["quiet.toml", "scores.toml"]  # what validate checks
    with pytest.raises(JobFileError, match="no job file 'defaults'"):
        find_job("defaults", path.parent)
    with pytest.raises(JobFileError, match="defaults.toml: not a job: it holds the \\[notify\\] defaults"):
        load_job(defaults)
    defaults.write_text("schedule = '* * * * *'\n", encoding="utf-8")
    with pytest.raises(JobFileError) as error:
        load_job(path)
    assert str(error.value) == f"{defaults}: schedule: unknown key (expected one of: notify)"


def test_cli_run_backfill_and_scheduled_runs_notify(engine, db_url, customers, write_job, receiver, tmp_path,
                                                    monkeypatch):
    # a yearly tick, still due for a year: a second --scheduled invocation stands for the same tick
    write_job(with_notify(scheduled(CUSTOMERS_JOB, "0 0 1 1 *", misfire_grace_seconds=400 * 86400), f"""
        [notify.on_success]
        webhook = "{receiver.url}"
        [notify.on_skip]
        webhook = "{receiver.url}"
    """))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    ran = runner.invoke(main, ["run", "scores", "--date", "2026-01-31", "--db", db_url])
    assert ran.exit_code == 0, ran.output
    filled = runner.invoke(main, ["--quiet", "backfill", "scores", "--start", "2026-01-01", "--end", "2026-01-02",
                                  "--db", db_url])
    assert filled.exit_code == 0, filled.output
    for _ in range(2):  # the second finds the tick recorded already: it reports nothing of its own
        ticked = runner.invoke(main, ["run", "scores", "--scheduled", "--db", db_url])
        assert ticked.exit_code == 0, ticked.output
    assert [(b["trigger"], b["logical_date"], b["status"], b["version"]) for b in receiver.bodies] == [
        ("manual", "2026-01-31", "succeeded", 1), ("backfill", "2026-01-01", "succeeded", 2),
        ("backfill", "2026-01-02", "succeeded", 3), ("cron", receiver.bodies[3]["logical_date"], "succeeded", 4)]
    assert receiver.bodies[3]["scheduled_for"].endswith("+00:00")


def test_cli_failed_run_exits_1_and_posts_once(engine, db_url, customers, write_job, receiver, tmp_path):
    write_job(with_notify(BROKEN_JOB, f"""
        [notify.on_failure]
        webhook = "{receiver.url}"
    """))
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", db_url])
    assert out.exit_code == 1 and "no_such_table" in out.output
    (sent,) = receiver.bodies
    assert (sent["status"], sent["job"], sent["table"]) == ("failed", "scores", "scores")
    assert "no_such_table" in sent["error"]


def test_an_error_quoting_a_url_reaches_hooks_without_its_password(write_job, receiver):
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, f"""
        [notify.on_failure]
        webhook = "{receiver.url}"
    """)))

    def run() -> None:
        raise DatabaseError("could not connect to postgresql://app:s3cret@db/app\nDETAIL: more")

    with pytest.raises(DatabaseError):
        notified(job, DAY, RunOptions(trigger="schedule"), run)
    (sent,) = receiver.bodies
    assert sent["error"] == "could not connect to postgresql://app:***@db/app" and "s3cret" not in json.dumps(sent)


def test_hooks_run_in_the_job_files_folder(tmp_path: Path):
    (tmp_path / "page.sh").write_text("#!/bin/sh\ncat > paged.json\n", encoding="utf-8")
    (tmp_path / "page.sh").chmod(0o755)
    run_command(Hook(command="./page.sh"), outcome("failed", error="boom"), tmp_path)
    assert json.loads((tmp_path / "paged.json").read_text())["error"] == "boom"


def test_a_webhook_with_an_impossible_port_is_a_warning_and_the_next_hook_still_runs(write_job, receiver, caplog):
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, f"""
        [[notify.on_success]]
        webhook = "http://user:s3cret@127.0.0.1:99999/hook?token=abc"
        [[notify.on_success]]
        webhook = "{receiver.url}"
    """)))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        notify(job, outcome("succeeded", version=1, rows=50, activated=True))
    assert len(receiver.bodies) == 1
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.startswith("scores: notify.on_success webhook to http://127.0.0.1:99999 failed (the run's outcome "
                              "stands): ")
    assert "s3cret" not in warning and "token" not in warning



def test_a_webhook_that_trickles_its_answer_is_given_up_at_its_timeout(write_job, receiver, caplog):
    """A server that answers a byte every 0.2 s never let a socket read time out: the run (and a scheduler's
    later ticks) waited for ever. The hook now fails at its timeout, and the next hook runs."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"x")

    threading.Thread(target=trickle, daemon=True).start()
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, f"""
        [[notify.on_success]]
        webhook = "http://127.0.0.1:{listener.getsockname()[1]}/hook"
        timeout = 1
        [[notify.on_success]]
        webhook = "{receiver.url}"
    """)))
    done = threading.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline"):
            threading.Thread(target=lambda: (notify(job, outcome("succeeded", version=1, rows=50, activated=True)),
                                             done.set()), daemon=True).start()
            assert done.wait(20), "the trickling webhook still holds the run"
    finally:
        stop.set()
        listener.close()
    (warning,) = [r.getMessage() for r in caplog.records]
    assert warning.endswith("failed (the run's outcome stands): TimeoutError: no whole answer within 1 s"), warning
    assert len(receiver.bodies) == 1


def test_a_command_that_leaves_a_detached_process_behind_is_still_stopped_at_its_timeout(tmp_path: Path):
    """A process the command started in a session of its own escapes the process group the timeout kills, and
    holds the command's stdout open; the hook must not wait for it."""
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    hook = Hook(command=f"setsid sh -c 'cat {fifo} > /dev/null' & exit 0", timeout=0.5)
    finished = threading.Event()

    def call() -> None:
        with pytest.raises(RuntimeError, match="timed out after 0.5 s"):
            run_command(hook, outcome("failed", error="boom"), tmp_path)
        finished.set()

    caller = threading.Thread(target=call)
    caller.start()
    try:
        assert finished.wait(30), "the hook waited for the process its command detached"
    finally:
        with open(fifo, "w", encoding="utf-8"):  # lets the detached process end, whatever happened
            pass
        caller.join()


def test_a_webhook_with_a_user_and_password_posts_with_basic_authentication(write_job, receiver, caplog):
    """``https://user:password@host/...`` (Alertmanager behind a proxy): the credentials go in an Authorization
    header, never into the host name the request is sent to."""
    url = receiver.url.replace("http://", "http://alert%40ops:s3cret@")
    job = load_job(write_job(with_notify(CUSTOMERS_JOB, f"""
        [notify.on_failure]
        webhook = "{url}"
    """)))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        notify(job, outcome("failed", error="boom"))
    assert caplog.records == [] and len(receiver.bodies) == 1
    assert receiver.authorizations == ["Basic " + base64.b64encode(b"alert@ops:s3cret").decode()]
