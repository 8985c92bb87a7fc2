"""``pipeline validate`` and ``pipeline jobs``: every job checked as a run would before it scores, and listed."""

from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.errors import AuditError, ModelError
from pipeline.tools.validate import check_job

from helpers import CUSTOMERS_JOB, customers_frame, scheduled, write_table


def tables(engine) -> set[str]:
    with engine.connect() as conn:
        return set(engine.dialect.get_table_names(conn)) | set(engine.dialect.get_view_names(conn))


def test_check_job_reads_and_scores_the_first_chunk_only(engine, write_job):
    write_table(engine, "customers", customers_frame(250))
    small_chunks = CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 40')
    job = load_job(write_job(small_chunks))
    checked = check_job(job, engine, dt.date(2026, 1, 2))
    assert len(checked.chunk) == 40 and list(checked.rows.columns)[:3] == ["customer_id", "proba_false", "proba_true"]
    assert "features x1, x2, x3; outputs proba_false, proba_true; 40 domain rows read and scored" in checked.summary()
    assert tables(engine) == {"customers"}


def test_check_job_refuses_what_a_run_would_refuse_before_scoring(engine, write_job):
    write_table(engine, "customers", customers_frame(20))
    bounds = load_job(write_job(CUSTOMERS_JOB + '\n[audits]\nbounds = { score = { max = 1 } }\n'))
    with pytest.raises(AuditError, match=r"\[audits\] names column\(s\) the model does not output: bounds score"):
        check_job(bounds, engine, dt.date(2026, 1, 2))
    drift = load_job(write_job(CUSTOMERS_JOB + '\n[[audits.drift]]\ncolumn = "nope"\nmax_psi = 0.2\n', name="drift"))
    with pytest.raises(AuditError, match="drift nope"):
        check_job(drift, engine, dt.date(2026, 1, 2))
    lacking = load_job(write_job(CUSTOMERS_JOB.replace("x2, x3", "x2"), name="lacking"))
    with pytest.raises(ModelError, match="lacks: x3"):
        check_job(lacking, engine, dt.date(2026, 1, 2))
    assert tables(engine) == {"customers"}


def test_an_empty_domain_is_refused_as_a_run_refuses_it_unless_allowed(engine, write_job):
    """validate said `ok: ... the domain is empty` of a job whose run fails on it."""
    write_table(engine, "customers", customers_frame(20))
    empty = CUSTOMERS_JOB.replace("FROM customers", "FROM customers WHERE customer_id < 0")
    with pytest.raises(AuditError, match="the domain is empty: .* allow_empty = true"):
        check_job(load_job(write_job(empty)), engine, dt.date(2026, 1, 2))
    allowed = load_job(write_job(empty + "\n[audits]\nallow_empty = true\n", name="allowed"))
    assert "the domain is empty" in check_job(allowed, engine, dt.date(2026, 1, 2)).summary()


def test_validate_command_one_line_per_job(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(30))
    write_job(CUSTOMERS_JOB)
    write_job(CUSTOMERS_JOB + '\n[audits]\nbounds = { score = { max = 1 } }\n', name="bounded")
    (tmp_path / "jobs" / "broken.toml").write_text("[domain\n")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["validate", "--db", db_url])
    lines = out.output.splitlines()
    assert out.exit_code == 1 and lines[-1] == "Error: 2 of 3 job file(s) failed"
    assert lines[0].startswith("jobs/bounded.toml: FAILED: [audits] names column(s) the model does not output")
    assert lines[1].startswith("jobs/broken.toml: FAILED: ") and "TOML" in lines[1]
    assert lines[2].startswith("jobs/scores.toml: ok: model sklearn.linear_model._logistic.LogisticRegression "
                               "predict_proba")
    assert CliRunner().invoke(main, ["validate", "scores", "--db", db_url]).exit_code == 0
    assert tables(engine) == {"customers"}


def test_validate_and_plan_a_first_run_whose_sqlite_file_a_run_would_create(write_job, tmp_path, monkeypatch):
    """A job reading a CSV file, its target a SQLite file not made yet: validate said FAILED (no database) and plan
    exited 1, of a job whose run succeeds and creates the file. Neither makes it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    customers_frame(25).to_csv(tmp_path / "customers.csv", index=False)
    write_job(f'target = "sqlite:///{tmp_path}/new.db"\n' + CUSTOMERS_JOB.replace(
        'query = "SELECT customer_id, x1, x2, x3 FROM customers"', f'file = "{tmp_path}/customers.csv"'))
    out = CliRunner().invoke(main, ["validate"])
    said = f"25 domain rows read and scored; sqlite:///{tmp_path}/new.db does not exist yet (a run creates it)"
    assert out.exit_code == 0 and out.output.rstrip().endswith(said), out.output
    out = CliRunner().invoke(main, ["plan", "scores"])
    assert out.exit_code == 0 and f"scores -> scores on sqlite:///{tmp_path}/new.db does not exist yet" in out.output
    assert not (tmp_path / "new.db").exists()
    assert CliRunner().invoke(main, ["run", "scores"]).exit_code == 0 and (tmp_path / "new.db").exists()


def test_jobs_lists_schedules_and_last_runs(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(30))
    path = write_job(scheduled(CUSTOMERS_JOB, "0 3 * * *"))
    write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "other"'), name="other")
    run_job(load_job(path), engine, logical_date=dt.date(2026, 1, 2))
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["jobs", "--db", db_url])
    rows = {line.split()[0]: line.split() for line in out.output.splitlines()[1:]}
    assert out.exit_code == 0 and set(rows) == {"scores", "other"}
    assert rows["scores"][1:7] == ["scores", "0", "3", "*", "*", "*"] and "succeeded 2026-01-02" in out.output
    assert rows["other"][1:3] == ["other", "-"]
    (tmp_path / "jobs" / "broken.toml").write_text("[domain\n")
    broken = CliRunner().invoke(main, ["jobs", "--db", db_url])
    assert broken.exit_code == 1 and "broken.toml" in broken.stderr and "scores" in broken.stdout
