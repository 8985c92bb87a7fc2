"""Write-audit-publish: a version that fails an audit is refused and the old one keeps serving."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import audit_version, load_job, run_job
from pipeline.cli import main
from pipeline.errors import AuditError
from pipeline.run.audits import planned_audits
from pipeline.serve import catalog

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, view_rows, write_table


@pytest.fixture
def customers(engine) -> pd.DataFrame:
    frame = customers_frame(400)
    write_table(engine, "customers", frame)
    return frame


def with_audits(audits: str) -> str:
    return SCRIPTED_JOB + "\n[audits]\n" + audits


def stored(engine, version: int) -> dict[str, bool]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, passed FROM pipeline_audits WHERE version = :v"), {"v": version})
        return {name: bool(passed) for name, passed in rows}


def refused(engine, job, match: str) -> None:
    """The run fails its audits, the version is failed with the reason, and the view serves what it served."""
    before, active = view_rows(engine), catalog.status(engine)[0].active_version
    with pytest.raises(AuditError, match=match):
        run_job(job, engine, force=True)
    pd.testing.assert_frame_equal(view_rows(engine), before)
    last = catalog.versions(engine, "scores")[-1].version
    assert last.status == "failed" and "audit failed" in last.error
    assert catalog.status(engine)[0].active_version == active


def test_a_good_run_stores_passing_audits(engine, customers, write_job):
    job = load_job(write_job(with_audits("bounds = { prediction = { min = -10, max = 10 } }"), model=Scripted()))
    result = run_job(job, engine, force=True)
    names = {r.name for r in result.audits}
    assert {"row_count", "keys_not_null", "keys_unique", "outputs_finite", "bounds:prediction"} <= names
    assert all(stored(engine, 1).values()) and len(stored(engine, 1)) == len(names)
    assert [r.name for r in result.audits] == planned_audits(job.audits)  # what `pipeline plan` lists


def test_nan_predictions_are_refused(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    refused(engine, load_job(write_job(SCRIPTED_JOB, model=Scripted(nan_every=7))),
            r"outputs_finite: NULL, NaN or infinite predictions in prediction: 58 row\(s\)")
    assert stored(engine, 2)["outputs_finite"] is False


def test_infinite_predictions_are_refused(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    refused(engine, load_job(write_job(SCRIPTED_JOB, model=Scripted(scale=np.inf))), "outputs_finite")


def test_bounds(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    job = load_job(write_job(with_audits("bounds = { prediction = { min = 0 } }"), model=Scripted(shift=-100)))
    refused(engine, job, r"bounds:prediction: outside \[0, \]: min -10\d\.\d+ < 0")


def test_drift_by_psi_is_refused_past_the_threshold(engine, customers, write_job):
    drift = 'drift = { column = "prediction", max_psi = 0.2 }'
    run_job(load_job(write_job(with_audits(drift), model=Scripted())), engine)
    assert run_job(load_job(write_job(with_audits(drift), model=Scripted(shift=0.01))), engine).version == 2
    refused(engine, load_job(write_job(with_audits(drift), model=Scripted(shift=2.0))),
            r"drift:prediction: PSI \d+\.\d+ \(max 0.2\)")


def test_drift_by_share_of_moved_keys(engine, customers, write_job):
    drift = 'drift = { column = "prediction", max_moved_share = 0.1, moved_by = 0.5 }'
    run_job(load_job(write_job(with_audits(drift), model=Scripted())), engine)
    refused(engine, load_job(write_job(with_audits(drift), model=Scripted(scale=3.0))),
            r"drift:prediction: \d+\.\d+% of 400 shared keys moved by more than 0.5 \(max 10.00%\)")


def test_drift_of_the_active_version_does_not_say_no_version_is_active(engine, customers, write_job):
    """``pipeline audit churn_scores 1`` on the active version 1 answered ``drift:proba_true pass no active version
    to compare with``, while version 1 was active: it is the version audited, so no other one is."""
    drift = 'drift = { column = "prediction", max_psi = 0.2 }'
    job = load_job(write_job(with_audits(drift), model=Scripted()))
    first = {r.name: r.detail for r in run_job(job, engine).audits}
    again = {r.name: r.detail for r in audit_version(engine, "scores", 1, job.audits)}
    assert first["drift:prediction"] == again["drift:prediction"] == "no other version is active to compare with"


def test_sql_audits_must_return_no_rows(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    audits = """
        [[audits.sql]]
        name = "small_ids_are_positive"
        query = "SELECT * FROM {table} WHERE customer_id < 10 AND prediction < -100"
        [[audits.sql]]
        name = "nobody_above_1"
        query = "SELECT customer_id, prediction FROM {table} WHERE prediction > 1 ORDER BY customer_id"
    """
    refused(engine, load_job(write_job(with_audits(audits), model=Scripted())),
            r"sql:nobody_above_1: returned rows, e.g. \(\d+, [\d.]+\)")
    assert stored(engine, 2) == {**stored(engine, 2), "sql:small_ids_are_positive": True, "sql:nobody_above_1": False}


def test_a_broken_sql_audit_fails_the_audit_not_the_process(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    audits = '[[audits.sql]]\nname = "typo"\nquery = "SELEC * FROM {table}"'
    refused(engine, load_job(write_job(with_audits(audits), model=Scripted())), "sql:typo: query failed")


def test_empty_domain_is_refused_unless_allowed(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    empty = SCRIPTED_JOB.replace("FROM customers", "FROM customers WHERE customer_id < 0")
    with pytest.raises(AuditError, match="refusing to publish an empty version"):
        run_job(load_job(write_job(empty, model=Scripted())), engine, force=True)
    assert len(view_rows(engine)) == 400
    result = run_job(load_job(write_job(empty + "\n[audits]\nallow_empty = true\n", model=Scripted())), engine, force=True)
    assert result.rows == 0 and len(view_rows(engine)) == 0


def test_audit_command_reruns_and_stores(engine, db_url, customers, write_job, tmp_path, monkeypatch):
    bounds = "bounds = { prediction = { max = 1.0 } }"
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    write_job(with_audits(bounds), model=Scripted())  # the job file tightened after the run
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["audit", "scores", "1", "--db", db_url])
    assert result.exit_code == 1
    verdicts = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:-1]}
    assert verdicts["bounds:prediction"] == "FAIL" and verdicts["keys_unique"] == "pass"
    assert result.output.splitlines()[-1].startswith("Error: scores version 1: audit failed: bounds:prediction")
    assert stored(engine, 1)["bounds:prediction"] is False
    assert catalog.status(engine)[0].active_version == 1  # re-auditing reports; it does not unpublish
    assert all(r.passed for r in audit_version(engine, "scores", 1))


def test_audit_command_on_a_version_that_failed_its_audits_runs_them_all_again(engine, db_url, customers, write_job,
                                                                                 tmp_path, monkeypatch):
    """A failed version had no recorded columns: `pipeline audit` of it said `no output column 'prediction'
    (outputs: )` and left out row_count and outputs_finite."""
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine, force=True)
    refused(engine, load_job(write_job(with_audits("bounds = { prediction = { min = 0 } }"),
                                       model=Scripted(shift=-100))), "bounds:prediction")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["audit", "scores", "2", "--db", db_url])
    verdicts = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:-1]}
    assert result.exit_code == 1 and verdicts == {
        "row_count": "pass", "keys_not_null": "pass", "keys_unique": "pass", "outputs_finite": "pass",
        "bounds:prediction": "FAIL"}, result.output
    assert result.output.splitlines()[-1].startswith("Error: scores version 2: audit failed: bounds:prediction: "
                                                     "outside [0, ]: min -10")
