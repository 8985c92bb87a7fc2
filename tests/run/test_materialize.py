"""A run end to end, the flip, rollback and activation, on SQLite and PostgreSQL."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from pipeline import activate, load_job, rollback, run_job
from pipeline.errors import AuditError, ModelError, PipelineError, SourceError, TableError
from pipeline.serve import catalog

from helpers import (CUSTOMERS_JOB, FEATURES, PRODUCT_JOB, customers_frame, quoted, reference_query, train_model,
                     write_table, write_users_items)


def read_view(engine, table: str = "scores") -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(f"SELECT * FROM {quoted(engine, table)} ORDER BY customer_id"), conn)


def expected(job, frame: pd.DataFrame) -> np.ndarray:
    model = joblib.load(job.model.path)
    return model.predict_proba(frame[FEATURES])


@pytest.fixture
def customers(engine) -> pd.DataFrame:
    frame = customers_frame(500)
    write_table(engine, "customers", frame)
    return frame


def test_run_writes_one_row_per_key_with_the_models_outputs(engine, customers, write_job):
    job = load_job(write_job(CUSTOMERS_JOB))
    result = run_job(job, engine)
    assert (result.version, result.rows, result.activated, result.previous) == (1, 500, True, None)
    view = read_view(engine)
    assert list(view.columns) == ["customer_id", "proba_false", "proba_true", "ab_bucket", "input_hash",
                                  "model_version"]
    assert view.customer_id.tolist() == customers.customer_id.tolist()
    np.testing.assert_allclose(view[["proba_false", "proba_true"]].to_numpy(), expected(job, customers), rtol=1e-12)
    assert set(view.model_version) == {1}
    with engine.connect() as conn:
        assert conn.execute(text('SELECT COUNT(*) FROM scores__v1')).scalar() == 500


def test_retrained_model_makes_version_2_and_rollback_and_activate_move_the_view(engine, customers, write_job,
                                                                                tmp_path):
    path = write_job(CUSTOMERS_JOB)
    first = load_job(path)
    run_job(first, engine)
    v1 = read_view(engine)
    train_model(first.model.path, seed=3)  # retrain in place, as a nightly training job would
    second = load_job(path)
    assert run_job(second, engine).version == 2
    v2 = read_view(engine)
    np.testing.assert_allclose(v2[["proba_false", "proba_true"]].to_numpy(), expected(second, customers))
    assert set(v2.model_version) == {2}
    assert not np.allclose(v1.proba_true, v2.proba_true)

    flip = rollback(engine, "scores")
    assert (flip.from_version, flip.to_version) == (2, 1)
    pd.testing.assert_frame_equal(read_view(engine), v1)

    assert activate(engine, "scores", 2).to_version == 2
    pd.testing.assert_frame_equal(read_view(engine), v2)

    rows = catalog.versions(engine, "scores")
    assert [(r.version.version, r.version.status, r.active) for r in rows] == [(1, "ready", False), (2, "ready", True)]
    assert all(r.version.row_count == 500 and r.version.domain_size == 500 for r in rows)
    assert rows[0].version.model_sha256 != rows[1].version.model_sha256
    flips = catalog.history(engine, "scores")
    assert [(f.from_version, f.to_version, f.reason) for f in flips] == [
        (None, 1, "run of job scores"), (1, 2, "run of job scores"), (2, 1, "rollback"), (1, 2, "activate")]


def test_no_activate_builds_a_ready_version_and_leaves_the_view(engine, customers, write_job):
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), engine, force=True)
    before = read_view(engine)
    result = run_job(load_job(path), engine, activate=False, force=True)
    assert (result.version, result.activated) == (2, False)
    pd.testing.assert_frame_equal(read_view(engine), before)
    activate(engine, "scores", 2)
    assert set(read_view(engine).model_version) == {2}


def test_rollback_to_a_named_version_and_refusals(engine, customers, write_job):
    path = write_job(CUSTOMERS_JOB)
    for _ in range(3):
        run_job(load_job(path), engine, force=True)
    assert rollback(engine, "scores", to=1).to_version == 1
    with pytest.raises(TableError, match="no ready version older than the active version 1"):
        rollback(engine, "scores")
    with pytest.raises(TableError, match="already active"):
        rollback(engine, "scores", to=1)
    with pytest.raises(TableError, match="has no version 9"):
        activate(engine, "scores", 9)
    with pytest.raises(TableError, match="no prediction table 'nope'"):
        activate(engine, "nope", 1)
    assert set(read_view(engine).model_version) == {1}


def test_logical_date_reaches_the_query_and_the_version(engine, write_job):
    frame = customers_frame(40)
    frame["day"] = ["2026-01-01"] * 10 + ["2026-01-02"] * 30
    write_table(engine, "customers", frame)
    job = load_job(write_job(CUSTOMERS_JOB.replace("FROM customers",
                                                   "FROM customers WHERE day = CAST(:run_date AS VARCHAR(10))")))
    import datetime as dt

    result = run_job(job, engine, logical_date=dt.date(2026, 1, 2))
    assert result.rows == 30
    assert catalog.versions(engine, "scores")[0].version.logical_date == dt.date(2026, 1, 2)


def test_product_domain_of_300_by_200_gives_60000_rows_with_the_right_keys(engine, write_job):
    write_users_items(engine, 300, 200, seed=1, first_item=1000)
    job = load_job(write_job(PRODUCT_JOB.replace('keys = ["user_id", "item_id"]',
                                                 'keys = ["user_id", "item_id"]\n    chunk_size = 7000')))
    assert run_job(job, engine).rows == 60_000
    with engine.connect() as conn:
        count, users, items, pairs = conn.execute(text(
            "SELECT COUNT(*), COUNT(DISTINCT user_id), COUNT(DISTINCT item_id), "
            "COUNT(DISTINCT user_id * 10000 + item_id) FROM scores")).one()
        assert (count, users, items, pairs) == (60_000, 300, 200, 60_000)
        lo, hi = conn.execute(text("SELECT MIN(item_id), MAX(item_id) FROM scores")).one()
        assert (lo, hi) == (1000, 1199)


# -- failures leave readers where they were ------------------------------------------

def _failing_run_leaves_view(engine, job, error, match):
    before = read_view(engine)
    pointer_before = catalog.status(engine)[0].active_version
    with pytest.raises(error, match=match):
        run_job(job, engine)
    pd.testing.assert_frame_equal(read_view(engine), before)
    assert catalog.status(engine)[0].active_version == pointer_before


def test_failing_query_marks_the_version_failed_and_keeps_the_view(engine, customers, write_job):
    run_job(load_job(write_job(CUSTOMERS_JOB)), engine)
    bad = load_job(write_job(CUSTOMERS_JOB.replace("FROM customers", "FROM no_such_table")))
    _failing_run_leaves_view(engine, bad, SourceError, "domain query failed")
    last = catalog.versions(engine, "scores")[-1].version
    assert (last.version, last.status) == (2, "failed")
    assert "domain query failed" in last.error
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "scores__v2")  # the load rolled back, table and all


def test_sha256_mismatch_refuses_before_anything_is_written(engine, customers, write_job):
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), engine, force=True)
    pinned = path.read_text().replace('method = "predict_proba"', 'method = "predict_proba"\nsha256 = "' + "0" * 64 + '"')
    path.write_text(pinned)
    _failing_run_leaves_view(engine, load_job(path), ModelError, "sha256 is [0-9a-f]{64}, but the job pins 0000")
    assert len(catalog.versions(engine, "scores")) == 1


def test_duplicate_keys_fail_the_audit(engine, write_job):
    frame = customers_frame(50)
    frame.loc[10, "customer_id"] = 3
    write_table(engine, "customers", frame)
    with pytest.raises(AuditError, match=r"more than once, e.g. customer_id=3"):
        run_job(load_job(write_job(CUSTOMERS_JOB)), engine)
    assert catalog.versions(engine, "scores")[0].version.status == "failed"
    assert catalog.status(engine)[0].active_version is None


def test_empty_domain_is_refused(engine, customers, write_job):
    job = load_job(write_job(CUSTOMERS_JOB.replace("FROM customers", "FROM customers WHERE customer_id < 0")))
    with pytest.raises(AuditError, match="the domain is empty"):
        run_job(job, engine)


def test_model_missing_a_feature_is_refused(engine, write_job):
    write_table(engine, "customers", customers_frame(20).drop(columns=["x3"]))
    job = load_job(write_job(CUSTOMERS_JOB.replace("x2, x3", "x2")))
    with pytest.raises(ModelError, match="model wants feature.* the domain lacks: x3"):
        run_job(job, engine)


def test_regressor_predict_writes_prediction(engine, customers, write_job):
    job = load_job(write_job(CUSTOMERS_JOB.replace("predict_proba", "predict"), kind="linear"))
    run_job(job, engine)
    view = read_view(engine)
    model = joblib.load(job.model.path)
    np.testing.assert_allclose(view.prediction.to_numpy(), model.predict(customers[FEATURES]))


def test_every_failure_is_a_pipeline_error(engine, write_job):
    with pytest.raises(PipelineError):
        run_job(load_job(write_job(CUSTOMERS_JOB)), engine)  # no customers table at all


def test_readers_during_flips_see_one_whole_version(engine, db_url, customers, write_job):
    """A short version of the safe-rollout reader test: every statement sees one complete version."""
    import threading

    from pipeline.database.engines import make_engine

    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), engine, force=True)
    run_job(load_job(path), engine, force=True)
    seen, problems, stop = [], [], threading.Event()

    def read() -> None:
        reader = make_engine(db_url)
        with reader.connect() as conn:
            while not stop.is_set():
                rows = conn.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY model_version")).all()
                conn.commit()
                seen.append(tuple(tuple(r) for r in rows))
                if len(rows) != 1 or rows[0][1] != 500:
                    problems.append(rows)
        reader.dispose()

    threads = [threading.Thread(target=read, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(20):
            activate(engine, "scores", 1 + i % 2)
    finally:
        stop.set()
    for t in threads:
        t.join()
    assert problems == []
    assert {s[0][0] for s in seen} <= {1, 2} and len(seen) > 0


def test_aliases_point_their_own_views_and_gc_keeps_what_they_serve(engine, customers, write_job):
    from pipeline import gc
    path = write_job(CUSTOMERS_JOB)
    for _ in range(4):
        run_job(load_job(path), engine, force=True)
    flip = activate(engine, "scores", 2, alias="challenger")
    assert (flip.alias, flip.from_version, flip.to_version) == ("challenger", None, 2)
    assert set(read_view(engine, "scores__challenger").model_version) == {2}
    assert set(read_view(engine).model_version) == {4}  # the champion view is untouched
    rows = {r.version.version: r.aliases for r in catalog.versions(engine, "scores")}
    assert rows == {1: (), 2: ("challenger",), 3: (), 4: ("champion",)}
    result = gc(engine, "scores", keep=1)
    assert sorted(result.retired) == []  # 4 newest, 2 challenger, 1 its rollback target, 3 champion's
    activate(engine, "scores", 4, alias="challenger")
    # 2 stays: the challenger served it before its last flip, so flipping back costs nothing
    assert sorted(gc(engine, "scores", keep=1).retired) == [1]
    assert set(read_view(engine, "scores__challenger").model_version) == {4}
    assert [f.to_version for f in catalog.history(engine, "scores", "challenger")] == [2, 4]
    assert rollback(engine, "scores", alias="challenger").to_version == 3
    with pytest.raises(TableError, match="alias 'ab' must be"):
        activate(engine, "scores", 4, alias="ab")


def test_a_default_for_keys_outside_the_domain(engine, customers, write_job):
    job = load_job(write_job(CUSTOMERS_JOB.replace('table = "scores"',
                                                   'table = "scores"\ndefault = { proba_true = 0.1, proba_false = 0.9 }')))
    run_job(job, engine)
    extra = customers_frame(505)  # five customers the last run did not know
    write_table(engine, "customers", extra)
    with engine.connect() as conn:
        rows = pd.read_sql(text(reference_query(6)), conn).sort_values("customer_id")
    assert len(rows) == 505 and rows.model_version.isna().sum() == 5
    assert (rows.proba_true.tail(5) == 0.1).all() and (rows.proba_true.head(500) != 0.1).all()
    bad = load_job(write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "scores"\ndefault = { score = 1 }')))
    with pytest.raises(ModelError, match=r"\[output\] names column.* the model does not output: score"):
        run_job(bad, engine, force=True)
    assert len(catalog.versions(engine, "scores")) == 1  # refused before anything was built


def test_a_change_of_method_is_never_skipped(engine, customers, write_job):
    labels = CUSTOMERS_JOB.replace('method = "predict_proba"', 'method = "predict"')
    path = write_job(labels)
    first = run_job(load_job(path), engine, logical_date=pd.Timestamp("2026-12-01").date())
    path.write_text(path.read_text().replace('method = "predict"', 'method = "predict_proba"'))
    second = run_job(load_job(path), engine, logical_date=pd.Timestamp("2026-12-01").date())
    assert second.skipped is None and (first.version, second.version) == (1, 2)
    assert "proba_true" in read_view(engine).columns  # the view serves probabilities now, not labels


def test_a_return_to_an_older_model_says_what_serves_and_how_to_switch(engine, customers, write_job, tmp_path):
    day = pd.Timestamp("2026-12-01").date()
    path = write_job(CUSTOMERS_JOB)
    model = path.parent / "models" / "scores.joblib"
    old = model.read_bytes()
    assert run_job(load_job(path), engine, logical_date=day).version == 1
    train_model(model, seed=3)
    assert run_job(load_job(path), engine, logical_date=day).version == 2
    model.write_bytes(old)  # back to the first model, the same day
    again = run_job(load_job(path), engine, logical_date=day)
    assert again.skipped == ("version 1 already holds 2026-12-01 with the same model, settings and domain, but "
                             "version 2 serves; `pipeline activate scores 1` serves it (--force runs it anyway)")
    assert set(read_view(engine).model_version) == {2}


def test_a_skip_names_the_serving_version_when_a_forced_run_made_its_twin(engine, customers, write_job):
    """Two versions hold the same work (the second forced): a run skipped after names the one that serves, not
    the older twin with an advice to serve it; after a rollback to the older, that one."""
    from pipeline import rollback

    day = pd.Timestamp("2026-12-01").date()
    path = write_job(CUSTOMERS_JOB)
    assert run_job(load_job(path), engine, logical_date=day).version == 1
    assert run_job(load_job(path), engine, logical_date=day, force=True).version == 2
    again = run_job(load_job(path), engine, logical_date=day)
    assert (again.version, again.skipped) == (2, "version 2 already holds 2026-12-01 with the same model, settings "
                                                 "and domain (--force runs it anyway)")
    rollback(engine, "scores")
    assert run_job(load_job(path), engine, logical_date=day).version == 1
