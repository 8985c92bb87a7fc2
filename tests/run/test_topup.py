"""Incremental top-ups: only new and changed keys are scored; the result equals a full run."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.errors import PipelineError

from helpers import CUSTOMERS_JOB, PRODUCT_JOB, customers_frame, train_model, version_rows, write_table

KEYS = 1000


def changed_domain(frame: pd.DataFrame) -> pd.DataFrame:
    """100 new keys, 10 changed rows, 5 keys gone."""
    new = customers_frame(100, seed=9)
    new["customer_id"] += KEYS
    changed = frame.copy()
    changed.loc[changed.customer_id <= 10, "x1"] += 1.0
    return pd.concat([changed[changed.customer_id > 5], new], ignore_index=True)


def test_an_incremental_run_gives_the_table_a_full_run_gives(engine, db_url, write_job, tmp_path):
    frame = customers_frame(KEYS)
    write_table(engine, "customers", frame)
    write_job(CUSTOMERS_JOB)
    cli = CliRunner()
    base = ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", db_url]
    assert cli.invoke(main, base).exit_code == 0
    write_table(engine, "customers", changed_domain(frame))
    out = cli.invoke(main, base + ["--incremental"])
    assert out.exit_code == 0, out.output
    assert "version 2 is active (1095 rows: 105 scored, 990 copied" in out.output  # 5 new-changed, 100 new
    full = cli.invoke(main, base + ["--force"])
    assert full.exit_code == 0 and "version 3 is active (1095 rows," in full.output
    pd.testing.assert_frame_equal(version_rows(engine, 2), version_rows(engine, 3))
    one, two = version_rows(engine, 1).set_index("customer_id"), version_rows(engine, 2).set_index("customer_id")
    assert (one.loc[6:10, "proba_true"] != two.loc[6:10, "proba_true"]).all()  # changed rows were scored again
    assert (one.loc[11:, "proba_true"] == two.loc[11:KEYS, "proba_true"]).all()
    with engine.connect() as conn:
        tables = set(engine.dialect.get_table_names(conn))
    assert not any(t.endswith("__gone") for t in tables)  # the helper table is dropped


def test_nothing_changed_copies_every_row(engine, write_job):
    write_table(engine, "customers", customers_frame(200))
    job = load_job(write_job(CUSTOMERS_JOB))
    run_job(job, engine)
    again = run_job(job, engine, force=True, incremental=True)
    assert (again.rows, again.copied) == (200, 200)
    pd.testing.assert_frame_equal(version_rows(engine, 2), version_rows(engine, 1))


def test_incremental_is_refused_for_another_model_or_without_an_active_version(engine, write_job):
    write_table(engine, "customers", customers_frame(50))
    path = write_job(CUSTOMERS_JOB)
    with pytest.raises(PipelineError, match="no active version to top up"):
        run_job(load_job(path), engine, incremental=True)
    run_job(load_job(path), engine)
    train_model(path.parent / "models" / "scores.joblib", seed=5)
    with pytest.raises(PipelineError, match="scored by model sha256 .* run without --incremental"):
        run_job(load_job(path), engine, incremental=True, force=True)
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT COUNT(*) FROM pipeline_versions")).scalar()
    assert versions == 1  # refused before a version was made


def test_a_composite_key_tops_up_only_the_changed_rows(engine, write_job):
    write_table(engine, "users", pd.DataFrame({"user_id": range(20), "x1": [float(i) for i in range(20)]}))
    write_table(engine, "items", pd.DataFrame({"item_id": range(10), "x2": [0.5] * 10, "x3": [0.1] * 10}))
    job = load_job(write_job(PRODUCT_JOB))
    run_job(job, engine)
    write_table(engine, "users", pd.DataFrame({"user_id": range(20), "x1": [float(i) for i in range(19)] + [0.0]}))
    top_up = run_job(job, engine, incremental=True)
    assert (top_up.rows, top_up.copied) == (200, 190)  # user 19's ten rows were scored again
    full = run_job(job, engine, force=True)
    a, b = (version_rows(engine, v, order="user_id, item_id") for v in (top_up.version, full.version))
    pd.testing.assert_frame_equal(a, b)


def test_incremental_is_refused_for_top_k(engine, write_job):
    import dataclasses

    write_table(engine, "customers", customers_frame(50))
    job = load_job(write_job(CUSTOMERS_JOB))
    run_job(job, engine)
    ranked = dataclasses.replace(job, output=dataclasses.replace(job.output, top_k=3, group_by=("x",),
                                                                 rank_by="proba_true"))
    with pytest.raises(PipelineError, match="--incremental cannot keep top_k rankings"):
        run_job(ranked, engine, incremental=True, force=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM pipeline_versions")).scalar() == 1


@pytest.mark.postgres
def test_incremental_is_refused_on_the_dask_executor(postgresql_url, write_job):
    import dataclasses

    from pipeline.database.engines import make_engine
    from pipeline.jobspec import ExecutorSpec
    engine = make_engine(postgresql_url)
    write_table(engine, "customers", customers_frame(50))
    job = load_job(write_job(CUSTOMERS_JOB))
    run_job(job, engine)
    with pytest.raises(PipelineError, match="--incremental runs on the local executor"):
        run_job(dataclasses.replace(job, executor=ExecutorSpec("dask")), engine, incremental=True, force=True)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM pipeline_versions")).scalar() == 1
    engine.dispose()
