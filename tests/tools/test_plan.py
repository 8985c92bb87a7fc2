"""``pipeline plan``: what a run would do, and the mistakes it would hit, with nothing written."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from click.testing import CliRunner

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.errors import AuditError, ModelError
from pipeline.tools.plan import plan_job

from helpers import CUSTOMERS_JOB, customers_frame, write_table


def tables(engine) -> set[str]:
    with engine.connect() as conn:
        return set(engine.dialect.get_table_names(conn)) | set(engine.dialect.get_view_names(conn))


def test_plan_counts_and_writes_nothing(engine, write_job):
    write_table(engine, "customers", customers_frame(250))
    job = load_job(write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 2')
                             + '\n[audits]\nbounds = { proba_true = { min = 0, max = 1 } }\n'))
    before = tables(engine)
    found = plan_job(job, engine, dt.date(2026, 1, 2))
    assert tables(engine) == before == {"customers"}
    assert (found.version, found.active_version, found.domain_size) == (1, None, 250)
    assert found.columns == (("customer_id", "integer"), ("proba_false", "float"), ("proba_true", "float"),
                             ("ab_bucket", "integer"), ("input_hash", "integer"))
    assert found.features == ("x1", "x2", "x3") and found.method == "predict_proba"
    assert "bounds:proba_true" in found.audits and "CREATE TABLE" in found.sql[0] and "scores__v1" in found.sql[0]
    run_job(job, engine)
    again = plan_job(job, engine, dt.date(2026, 1, 2))
    assert (again.version, again.active_version) == (2, 1)


def test_plan_fails_where_a_run_would(engine, write_job):
    write_table(engine, "customers", customers_frame(20).drop(columns=["x3"]))
    with pytest.raises(ModelError, match="lacks: x3"):
        plan_job(load_job(write_job(CUSTOMERS_JOB.replace("x2, x3", "x2"))), engine, dt.date(2026, 1, 1))
    with pytest.raises(AuditError, match="the domain is empty"):
        plan_job(load_job(write_job(CUSTOMERS_JOB.replace("x2, x3", "x2").replace(
            "FROM customers", "FROM customers WHERE customer_id < 0"))), engine, dt.date(2026, 1, 1))
    assert tables(engine) == {"customers"}


def test_plan_command(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(30))
    write_job('schedule = "0 3 * * *"\n' + CUSTOMERS_JOB)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["plan", "scores", "--db", db_url])
    assert out.exit_code == 0 and "30 rows; keys customer_id" in out.output and "next tick" in out.output
    out = CliRunner().invoke(main, ["plan", "scores", "--json", "--db", db_url])
    data = json.loads(out.output)
    assert data["domain_size"] == 30 and data["version"] == 1 and data["schedule"] == "0 3 * * *"


def test_plan_shows_how_the_table_is_served_and_what_a_top_up_would_score(engine, write_job):
    from pipeline import activate
    from pipeline.serve.split import set_split

    write_table(engine, "customers", customers_frame(100))
    path = write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "scores"\ndefault = { proba_true = 0.1 }'))
    run_job(load_job(path), engine)
    activate(engine, "scores", 1, alias="challenger")
    set_split(engine, "scores", "challenger", 10)
    frame = customers_frame(100)
    frame.loc[frame.customer_id <= 3, "x1"] += 1
    write_table(engine, "customers", frame[frame.customer_id != 100])
    found = plan_job(load_job(path), engine, dt.date(2026, 1, 2), incremental=True)
    assert found.serving == ("alias challenger on v1 (scores__challenger)",
                             "A/B split: 10% of keys from challenger in scores__ab",
                             "default for unseen keys in scores__default: proba_true = 0.1")
    assert found.incremental == (3, 96, 4)  # 3 changed rows to score, 96 copied, 3 changed and 1 gone


def test_plan_refuses_an_audit_of_a_column_the_model_does_not_output(engine, db_url, write_job, tmp_path,
                                                                    monkeypatch):
    write_table(engine, "customers", customers_frame(30))
    write_job(CUSTOMERS_JOB + '\n[audits]\nbounds = { score = { min = 0, max = 1 } }\n')
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["plan", "scores", "--db", db_url])
    assert out.exit_code == 1
    assert ("[audits] names column(s) the model does not output: bounds score (outputs: proba_false, proba_true)"
            in out.output)
    run = CliRunner().invoke(main, ["run", "scores", "--db", db_url])  # the run refuses it before scoring
    assert run.exit_code == 1 and "bounds score" in run.output
    assert not any(t.startswith("scores") for t in tables(engine))


def test_plan_says_when_the_run_would_be_skipped(engine, write_job):
    write_table(engine, "customers", customers_frame(30))
    job = load_job(write_job(CUSTOMERS_JOB))
    run_job(job, engine, logical_date=dt.date(2026, 1, 2))
    found = plan_job(job, engine, dt.date(2026, 1, 2))
    assert found.skipped == ("version 1 already holds 2026-01-02 with the same model, settings and domain "
                             "(--force runs it anyway)")
    assert plan_job(job, engine, dt.date(2026, 1, 3)).skipped is None
