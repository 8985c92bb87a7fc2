"""[output] include: domain columns stored beside the outputs in every version and the view."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.errors import JobFileError, ModelError
from pipeline.jobspec import ExecutorSpec
from pipeline.serve import catalog

from helpers import CUSTOMERS_JOB, FEATURES, customers_frame, quoted, write_table

ROWS = 40
INCLUDE = ["segment", "signup", "spend", "active"]
JOB = CUSTOMERS_JOB.replace('"SELECT customer_id, x1, x2, x3 FROM customers"',
                            '"SELECT customer_id, x1, x2, x3, segment, signup, spend, active FROM customers"') + \
    f"    include = {json.dumps(INCLUDE)}\n"


def customers(rows: int = ROWS, seed: int = 0) -> pd.DataFrame:
    """Customers with messy descriptive columns: the first rows hold only NULLs in them (a whole first chunk
    at chunk_size 8), text has '' beside NULL, a nullable boolean, dates and a decimal-like amount."""
    frame = customers_frame(rows, seed)
    rng = np.random.default_rng(seed)
    frame["segment"] = pd.Series(rng.choice(["retail", "", "smb", None], size=rows), dtype=object)
    frame["signup"] = [dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 1500, rows)]
    frame["spend"] = np.round(rng.normal(100, 30, rows), 2)
    frame["active"] = pd.array(rng.choice([True, False, None], size=rows), dtype="boolean")
    frame.loc[:7, ["segment", "spend", "active"]] = None
    frame["signup"] = frame["signup"].astype(object)
    frame.loc[:7, "signup"] = None
    return frame


def with_chunks(body: str, size: int) -> str:
    return body.replace('keys = ["customer_id"]', f'keys = ["customer_id"]\n    chunk_size = {size}')


def served(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(f"SELECT customer_id, {', '.join(INCLUDE)}, proba_false, proba_true FROM scores "
                                "ORDER BY customer_id"), conn)


def expected(job, frame: pd.DataFrame) -> pd.DataFrame:
    model = joblib.load(job.model.path)
    proba = model.predict_proba(frame[FEATURES])
    return frame[["customer_id", *INCLUDE]].assign(proba_false=proba[:, 0], proba_true=proba[:, 1])


def same_values(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Value for value, NULL for NULL, '' for '' (the databases hand back their own Python types)."""
    assert list(got.customer_id) == list(want.customer_id)
    for column in ("segment", "active"):
        assert [None if pd.isna(v) else v for v in got[column]] == \
               [None if pd.isna(v) else v for v in want[column]], column
    # SQLite hands a DATE back as its ISO text
    assert [None if pd.isna(v) else str(v) for v in got.signup] == [None if pd.isna(v) else str(v) for v in want.signup]
    assert [None if pd.isna(v) else round(float(v), 2) for v in got.spend] == \
           [None if pd.isna(v) else v for v in want.spend]
    np.testing.assert_allclose(got.proba_true.to_numpy(float), want.proba_true.to_numpy(float), rtol=1e-12)


@pytest.mark.parametrize("chunk_size", [8, 15, 1000])
def test_included_columns_are_served_beside_the_outputs(engine, write_job, chunk_size):
    frame = customers()
    write_table(engine, "customers", frame)
    job = load_job(write_job(with_chunks(JOB, chunk_size)))
    run_job(job, engine)
    same_values(served(engine), expected(job, frame))
    version = catalog.versions(engine, "scores")[0].version
    assert version.passthrough == tuple(INCLUDE)
    assert [c for c, _ in version.outputs] == ["proba_false", "proba_true"]  # not audited as outputs
    types = dict(version.columns)
    assert (types["segment"], types["signup"], types["active"]) == ("text", "date", "boolean")


def test_a_top_up_copies_a_row_only_when_what_it_stores_is_unchanged(engine, write_job):
    """A change to an included column alone (no feature moved) still reaches the new version."""
    frame = customers()
    write_table(engine, "customers", frame)
    path = write_job(JOB)
    run_job(load_job(path), engine)
    changed = frame.copy()
    changed.loc[20, "segment"] = "enterprise"
    changed.loc[21, "active"] = not bool(changed.loc[21, "active"]) if pd.notna(changed.loc[21, "active"]) else True
    write_table(engine, "customers", changed)
    result = run_job(load_job(path), engine, incremental=True)
    assert result.copied == ROWS - 2
    same_values(served(engine), expected(load_job(path), changed))


def test_a_top_up_refuses_other_included_columns(engine, write_job):
    write_table(engine, "customers", customers())
    run_job(load_job(write_job(JOB)), engine)
    fewer = load_job(write_job(JOB.replace(json.dumps(INCLUDE), '["segment"]')))
    with pytest.raises(Exception, match=r"passes through \(segment, signup, spend, active\) and the job's "
                                        r"\[output\] include is \(segment\); run without --incremental once"):
        run_job(fewer, engine, incremental=True)


def test_included_columns_of_a_product_are_kept_with_top_k(engine, write_job):
    from helpers import PRODUCT_JOB, write_users_items

    write_users_items(engine, 12, 9, seed=2)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE items ADD COLUMN category VARCHAR(20)"))
        conn.execute(text("UPDATE items SET category = CASE WHEN item_id < 4 THEN 'books' ELSE 'games' END"))
    body = PRODUCT_JOB.replace("SELECT item_id, x2, x3 FROM items", "SELECT item_id, x2, x3, category FROM items")
    run_job(load_job(write_job(body + '    include = ["category"]\n    top_k = 2\n    group_by = ["user_id"]\n'
                                      '    rank_by = "proba_true"\n')), engine)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT item_id, category, rank FROM scores ORDER BY user_id, rank")).all()
    assert len(rows) == 24 and {r.rank for r in rows} == {1, 2}
    assert all(r.category == ("books" if r.item_id < 4 else "games") for r in rows)


def test_a_column_the_domain_lacks_fails_in_one_line_and_publishes_nothing(engine, db_url, write_job, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_table(engine, "customers", customers())
    write_job(JOB.replace(json.dumps(INCLUDE), '["segment", "region"]'))
    out = CliRunner().invoke(main, ["run", "scores", "--db", db_url])
    assert out.exit_code == 1
    assert out.output.strip() == ("Error: [output] include names column(s) the domain does not have: region "
                                  "(domain columns: customer_id, x1, x2, x3, segment, signup, spend, active)")
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "scores")


def test_an_included_column_named_like_an_output_is_refused(engine, write_job):
    write_table(engine, "customers", customers().rename(columns={"segment": "proba_true"}))
    body = JOB.replace("segment", "proba_true")
    with pytest.raises(ModelError, match=r"domain column\(s\) proba_true have the name of a model output"):
        run_job(load_job(write_job(body)), engine)


@pytest.mark.parametrize("include, message", [
    ('["customer_id"]', "output.include: customer_id is a key, which every version holds already"),
    ('["segment", "Segment"]', "output.include: lists a column twice"),
    ('"segment"', "output.include"),
    ('["seg-ment"]', "output.include"),
])
def test_bad_include_settings_are_job_file_errors(write_job, include, message):
    with pytest.raises(JobFileError, match=message):
        load_job(write_job(JOB.replace(json.dumps(INCLUDE), include)))


def test_a_run_with_other_included_columns_is_new_work(engine, write_job):
    write_table(engine, "customers", customers())
    first = run_job(load_job(write_job(JOB)), engine)
    again = run_job(load_job(write_job(JOB.replace(json.dumps(INCLUDE), '["segment"]'))), engine)
    assert not again.skipped and again.version == first.version + 1
    with engine.connect() as conn:
        columns = [c.lower() for c in conn.execute(text(f"SELECT * FROM {quoted(engine, 'scores')}")).keys()]
    assert "segment" in columns and "signup" not in columns


@pytest.mark.postgres
def test_dask_partitions_store_the_same_included_columns(postgresql_url, write_job):
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    try:
        frame = customers(200)
        write_table(engine, "customers", frame)
        job = load_job(write_job(with_chunks(JOB, 8)))
        run_job(dataclasses.replace(job, executor=ExecutorSpec("dask", workers=2, partitions=3)), engine)
        same_values(served(engine), expected(job, frame))
    finally:
        engine.dispose()
