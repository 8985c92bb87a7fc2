"""Metrics for node_exporter's textfile collector, and JSON logs for log shippers."""

from __future__ import annotations

import json

from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from pipeline.cli import main

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, scheduled, write_table


def parse(path) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            found[(sample.name, sample.labels.get("phase", ""))] = sample.value
            assert sample.labels["job"] == "scores" and sample.labels["table"] == "scores"
    return found


def test_metrics_after_a_good_run_and_after_a_failed_audit(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(120))
    write_job(SCRIPTED_JOB, model=Scripted())
    monkeypatch.chdir(tmp_path)
    prom = tmp_path / "scores.prom"
    out = CliRunner().invoke(main, ["run", "scores", "--db", db_url, "--metrics-file", str(prom)])
    assert out.exit_code == 0
    good = parse(prom)
    assert good[("pipeline_last_run_success", "")] == 1 and good[("pipeline_run_rows", "")] == 120
    assert good[("pipeline_active_version", "")] == 1 and good[("pipeline_audit_failures", "")] == 0
    assert {p for n, p in good if n == "pipeline_phase_seconds"} == {"load", "audit", "publish"}
    assert good[("pipeline_last_success_timestamp_seconds", "")] > 1.7e9

    write_job(SCRIPTED_JOB + "\n[audits]\nbounds = { prediction = { max = -50 } }\n", model=Scripted(shift=1))
    out = CliRunner().invoke(main, ["run", "scores", "--db", db_url, "--metrics-file", str(prom)])
    assert out.exit_code == 1
    bad = parse(prom)
    assert bad[("pipeline_last_run_success", "")] == 0 and bad[("pipeline_audit_failures", "")] == 1
    assert bad[("pipeline_active_version", "")] == 1  # still serving the good version
    assert bad[("pipeline_last_success_timestamp_seconds", "")] == good[("pipeline_last_success_timestamp_seconds", "")]
    assert ("pipeline_run_rows", "") not in bad


def test_json_logs(engine, db_url, write_job, tmp_path):
    import subprocess
    import sys

    from helpers import CUSTOMERS_JOB

    write_table(engine, "customers", customers_frame(10))
    write_job(CUSTOMERS_JOB)
    done = subprocess.run([sys.executable, "-m", "pipeline", "--log-format", "json", "run", "scores", "--db", db_url],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert {e["level"] for e in entries} == {"info"} and all(e["logger"] == "pipeline" for e in entries)
    assert any("version 1 ready" in e["message"] for e in entries)


def test_a_scheduled_run_writes_its_metrics_file(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(40))
    write_job(scheduled(SCRIPTED_JOB, "0 0 1 1 *", misfire_grace_seconds=400 * 86400), model=Scripted())
    monkeypatch.chdir(tmp_path)
    prom = tmp_path / "scores.prom"
    out = CliRunner().invoke(main, ["run", "scores", "--scheduled", "--db", db_url, "--metrics-file", str(prom)])
    assert out.exit_code == 0, out.output
    found = parse(prom)
    assert found[("pipeline_last_run_success", "")] == 1 and found[("pipeline_run_rows", "")] == 40
    assert found[("pipeline_active_version", "")] == 1

    prom.unlink()  # the tick ran already: the second run is skipped, and says so in its metrics too
    again = CliRunner().invoke(main, ["run", "scores", "--scheduled", "--db", db_url, "--metrics-file", str(prom)])
    assert again.exit_code == 0 and "skipped" in again.output
    assert parse(prom)[("pipeline_last_run_success", "")] == 1


def test_a_metrics_file_that_cannot_be_written_neither_fails_a_good_run_nor_hides_a_failure(engine, db_url, write_job,
                                                                                           tmp_path, monkeypatch):
    """A run that published its version exited 1 with `unexpected FileNotFoundError`, and a failed run's own error
    was replaced by the metrics file's."""
    write_table(engine, "customers", customers_frame(30))
    path = write_job(SCRIPTED_JOB, model=Scripted())
    monkeypatch.chdir(tmp_path)
    unwritable = "/proc/scores.prom"  # a folder no file can be made in, even by root
    out = CliRunner().invoke(main, ["run", "scores", "--db", db_url, "--metrics-file", unwritable])
    assert out.exit_code == 0 and "scores: version 1 is active" in out.output, out.output
    assert f"Warning: --metrics-file {unwritable} was not written: " in out.output
    (path.parent / "models" / "scores.joblib").write_bytes(b"not a model")
    out = CliRunner().invoke(main, ["run", "scores", "--db", db_url, "--metrics-file", unwritable])
    last = out.output.rstrip().splitlines()[-1]
    assert out.exit_code == 1 and last.startswith("Error: ") and "scores.joblib: cannot load model file" in last, last


def test_a_run_the_database_failed_still_says_so_in_its_metrics(write_job, tmp_path, monkeypatch):
    """The metrics file was left saying the previous run succeeded: the figures read from the database failed too,
    and nothing was written."""
    monkeypatch.chdir(tmp_path)
    write_job(SCRIPTED_JOB, model=Scripted())
    prom = tmp_path / "scores.prom"
    prom.write_text('pipeline_last_run_success{job="scores",table="scores"} 1.0\n')
    gone = f"sqlite:///{tmp_path / 'no-such-folder' / 'p.db'}"
    out = CliRunner().invoke(main, ["run", "scores", "--db", gone, "--metrics-file", str(prom)])
    assert out.exit_code == 1 and "no-such-folder" in out.output.splitlines()[-1], out.output
    assert parse(prom) == {("pipeline_last_run_success", ""): 0}


def test_a_run_refused_because_another_holds_the_table_writes_no_metrics(engine, db_url, write_job, tmp_path,
                                                                         monkeypatch):
    """It wrote `pipeline_last_run_success 0` over the metrics of the run that holds the table and goes on."""
    from pipeline.database.dialects import dialect_for

    write_table(engine, "customers", customers_frame(30))
    write_job(SCRIPTED_JOB, model=Scripted())
    monkeypatch.chdir(tmp_path)
    prom = tmp_path / "scores.prom"
    with dialect_for(engine).run_lock(engine, "scores"):
        out = CliRunner().invoke(main, ["run", "scores", "--db", db_url, "--metrics-file", str(prom)])
    assert out.exit_code == 75 and not prom.exists(), out.output
