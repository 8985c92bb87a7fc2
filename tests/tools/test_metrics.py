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
