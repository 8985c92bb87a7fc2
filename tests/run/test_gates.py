"""Upstream gates: nothing is scored, and nothing changes for readers, unless the inputs are there and look like
the active version's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.errors import GateError, JobFileError
from pipeline.jobspec import GateSpec
from pipeline.run.gates import Profile, compare, duration
from pipeline.serve import catalog

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, view_rows, write_table


def gated(gates: str) -> str:
    return SCRIPTED_JOB + "\n[gates]\n" + gates


@pytest.fixture
def customers(engine) -> pd.DataFrame:
    frame = customers_frame(1000)
    write_table(engine, "customers", frame)
    return frame


def refused(engine, job, match: str) -> str:
    """The run fails on a gate before any version exists; the view serves what it served. Returns the error."""
    before = view_rows(engine)
    versions = len(catalog.versions(engine, "scores"))
    with pytest.raises(GateError, match=match) as raised:
        run_job(job, engine, force=True)
    assert len(catalog.versions(engine, "scores")) == versions  # nothing was built
    pd.testing.assert_frame_equal(view_rows(engine), before)
    last = catalog.runs(engine)[0]
    assert last.status == "failed" and str(raised.value) == last.error
    return str(raised.value)


def test_a_wait_for_gate_that_turns_true_while_polled_lets_the_run_go_on(engine, customers, write_job):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE etl_done (day DATE)"))
    job = load_job(write_job(gated("""
        poll_interval = 1
        wait_timeout = 60
        [[gates.wait_for]]
        name = "customers_loaded"
        query = "SELECT COUNT(*) > 0 FROM etl_done WHERE day = :run_date"
    """), model=Scripted()))

    def finish_etl() -> None:
        time.sleep(2.5)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO etl_done VALUES (:d)"), {"d": pd.Timestamp("2026-03-01").date()})

    etl = threading.Thread(target=finish_etl)
    started = time.monotonic()
    etl.start()
    result = run_job(job, engine, logical_date=pd.Timestamp("2026-03-01").date())
    etl.join()
    assert time.monotonic() - started >= 2.5 and result.version == 1 and result.activated
    gates = catalog.runs(engine)[0].gates
    assert [g[:2] for g in gates] == [["wait_for:customers_loaded", True]] and "true after" in gates[0][2]


def test_a_wait_for_gate_that_stays_false_fails_the_run_by_name_and_publishes_nothing(engine, customers, write_job):
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine)
    job = load_job(write_job(gated("""
        poll_interval = 1
        wait_timeout = 2
        [[gates.wait_for]]
        name = "orders_loaded"
        query = "SELECT COUNT(*) > 5000 FROM customers"
    """), model=Scripted(shift=1.0)))
    started = time.monotonic()
    error = refused(engine, job, "gate 'orders_loaded' still false after 2s")
    assert error == "gate 'orders_loaded' still false after 2s" and time.monotonic() - started < 30


def test_a_gate_query_that_fails_is_not_polled(engine, customers, write_job):
    job = load_job(write_job(gated("""
        wait_timeout = 3600
        [[gates.wait_for]]
        name = "typo"
        query = "SELECT COUNT(*) FROM no_such_table"
    """), model=Scripted()))
    started = time.monotonic()
    with pytest.raises(GateError, match="gate 'typo': query failed"):
        run_job(job, engine)
    assert time.monotonic() - started < 30
    assert [s.latest_version for s in catalog.status(engine)] == [None]  # a failed run, no version
    assert catalog.runs(engine)[0].status == "failed"


def test_a_domain_that_lost_rows_is_refused_before_scoring_with_figures(engine, customers, write_job):
    job = load_job(write_job(gated("max_rows_change = 0.2"), model=Scripted()))
    run_job(job, engine)
    write_table(engine, "customers", customers.iloc[:600])  # 40% of the rows are gone upstream
    error = refused(engine, job, "gate 'rows'")
    assert "600 rows against 1,000 for version 1 (-40.0%, max 20%)" in error
    write_table(engine, "customers", customers.iloc[:900])  # -10%: within the gate
    assert run_job(job, engine, force=True).version == 2  # the refused run made no version


def test_a_feature_gone_partly_null_is_refused_with_its_share(engine, customers, write_job):
    job = load_job(write_job(gated("max_null_change = 0.1\nmax_psi = 0.25"), model=Scripted()))
    run_job(job, engine)
    profile = catalog.versions(engine, "scores")[0].version.input_profile
    assert profile["rows"] == 1000 and profile["features"]["x2"]["nulls"] == 0.0
    assert len(profile["features"]["x2"]["edges"]) == 9
    broken = customers.copy()
    broken.loc[broken.index[:300], "x2"] = np.nan  # an upstream join lost 30% of a feature
    write_table(engine, "customers", broken)
    error = refused(engine, job, "gate 'nulls:x2'")
    assert "x2 is 30.0% NULL against 0.0% for version 1 (max change 10.0%)" in error
    assert "x1" not in error and "x3" not in error


def test_a_shifted_numeric_feature_is_refused_by_psi(engine, customers, write_job):
    job = load_job(write_job(gated("max_psi = 0.25"), model=Scripted()))
    run_job(job, engine)
    shifted = customers.assign(x3=customers["x3"] + 2.0)  # a unit change upstream
    write_table(engine, "customers", shifted)
    error = refused(engine, job, r"gate 'psi:x3': x3 has PSI [0-9.]+ against version 1's inputs \(max 0.25\)")
    assert "psi:x1" not in error


def test_the_same_inputs_pass_and_results_are_kept_with_the_run(engine, customers, write_job, db_url):
    job = load_job(write_job(gated("max_rows_change = 0.2\nmax_null_change = 0.1\nmax_psi = 0.25"),
                             model=Scripted()))
    first = run_job(job, engine)
    assert catalog.runs(engine)[0].gates == [["rows", True, "no active version to compare with"],
                                             ["inputs", True, "no active version to compare with"]]
    write_table(engine, "customers", customers_frame(1000, seed=1))  # new draws, the same distributions
    assert run_job(job, engine, force=True).version == first.version + 1
    gates = {name: passed for name, passed, _ in catalog.runs(engine)[0].gates}
    assert gates == {"rows": True, **{f"{kind}:{f}": True for f in ("x1", "x2", "x3") for kind in ("nulls", "psi")}}
    out = CliRunner().invoke(main, ["runs", "--db", db_url])
    assert out.exit_code == 0 and "7 passed" in out.output


def test_the_profile_sample_is_bounded_and_deterministic():
    frames = [pd.DataFrame({"x": np.arange(i * 40_000, (i + 1) * 40_000, dtype=float)}) for i in range(3)]
    one, two = Profile(["x"]), Profile(["x"])
    for frame in frames:
        one.update(frame)
        two.update(frame)
    assert one.summary() == two.summary() and one.rows == 120_000
    edges = one.summary()["features"]["x"]["edges"]
    assert len(one._samples["x"][1]) == 10_000
    assert all(abs(e - q) < 3_000 for e, q in zip(edges, np.quantile(np.arange(120_000), np.arange(1, 10) / 10)))


def test_without_an_active_version_gates_compare_nothing():
    profile = Profile(["x"])
    profile.update(pd.DataFrame({"x": [1.0, None]}))
    spec = GateSpec(max_rows_change=0.1, max_null_change=0.0)
    assert [r.passed for r in compare(spec, profile, None)] == [True, True]


def test_duration_reads_as_an_operator_writes_it():
    assert [duration(s) for s in (7200, 90, 5, 0, 3661)] == ["2h", "1m30s", "5s", "0s", "1h1m1s"]


@pytest.mark.parametrize("gates, message", [
    ("max_psi = -1", "gates.max_psi: must be at least 0"),
    ("wait_timeout = 0", "gates.wait_timeout: must be at least 1"),
    ("[[gates.wait_for]]\nname = \"x\"", "gates.wait_for[0].query: "),
    ("[[gates.wait_for]]\nname = \"x\"\nquery = \"SELECT 1\"\n[[gates.wait_for]]\nname = \"x\"\nquery = \"SELECT 1\"",
     "two gates have the same name"),
    ("max_rows = 0.1", "max_rows"),
])
def test_bad_gates_are_named(write_job, gates, message):
    with pytest.raises(JobFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_job(write_job(gated(gates), model=Scripted()))


def test_status_and_the_report_show_the_gates(engine, customers, write_job, db_url, tmp_path):
    job = load_job(write_job(gated("max_rows_change = 0.2"), model=Scripted()))
    run_job(job, engine)
    write_table(engine, "customers", customers.iloc[:600])
    with pytest.raises(GateError):
        run_job(job, engine, force=True)
    out = CliRunner().invoke(main, ["status", "--db", db_url])
    assert out.exit_code == 0 and "failed" in out.output and "(gates failed: rows)" in out.output
    page = tmp_path / "report.html"
    out = CliRunner().invoke(main, ["report", "scores", "--db", db_url, "--out", str(page)])
    assert out.exit_code == 0, out.output
    assert "Upstream gates of recent runs" in page.read_text() and "-40.0%, max 20%" in page.read_text()


def test_a_backfill_checks_the_gates_for_each_date(engine, customers, write_job):
    from pipeline.scheduling.backfill import backfill

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE etl_done (day DATE)"))
        conn.execute(text("INSERT INTO etl_done VALUES (:d)"), {"d": pd.Timestamp("2026-03-01").date()})
    job = load_job(write_job(gated("""
        wait_timeout = 1
        [[gates.wait_for]]
        name = "day_loaded"
        query = "SELECT COUNT(*) > 0 FROM etl_done WHERE day = :run_date"
    """), model=Scripted()))
    result = backfill(job, engine, pd.Timestamp("2026-03-01").date(), pd.Timestamp("2026-03-02").date())
    assert [d.isoformat() for d in result.done] == ["2026-03-01"]
    assert {d.isoformat(): e for d, e in result.failed.items()} == {
        "2026-03-02": "gate 'day_loaded' still false after 1s"}
