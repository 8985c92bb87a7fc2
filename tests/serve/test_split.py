"""The A/B split view: each key once, from the challenger when its stable bucket is below the percent."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import activate, load_job, run_job
from pipeline.cli import main
from pipeline.database.engines import make_engine
from pipeline.errors import TableError
from pipeline.run.scoring import key_buckets
from pipeline.serve import catalog
from pipeline.serve.split import set_split
from pipeline.tools.plan import plan_job

from helpers import CUSTOMERS_JOB, customers_frame, reference_query, train_model, write_table

KEYS = 2000


def ab_rows(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text("SELECT * FROM scores__ab ORDER BY customer_id"), conn)


@pytest.fixture
def two_versions(engine, write_job):
    """Version 1 is the champion, version 2 the challenger."""
    write_table(engine, "customers", customers_frame(KEYS))
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), engine)
    train_model(path.parent / "models" / "scores.joblib", seed=2)
    run_job(load_job(path), engine, activate=False, force=True)
    activate(engine, "scores", 2, alias="challenger")
    return path


def test_a_20_percent_split_serves_every_key_once(engine, db_url, two_versions, tmp_path):
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "split", "scores", "--alias", "challenger",
                                    "--percent", "20", "--db", db_url])
    assert out.exit_code == 0, out.output
    assert out.output == "scores__ab: 20% of keys from challenger (scores__challenger), the rest from scores\n"
    rows = ab_rows(engine)
    assert len(rows) == KEYS and rows.customer_id.is_unique
    share = (rows.variant == "challenger").mean()
    assert 0.15 < share < 0.25
    assert set(rows.loc[rows.variant == "challenger", "model_version"]) == {2}
    assert set(rows.loc[rows.variant == "champion", "model_version"]) == {1}
    assert (rows.ab_bucket < 20).eq(rows.variant == "challenger").all()
    with engine.connect() as conn:
        one = conn.execute(text(reference_query(7)), {"customer_id": 7}).one()
    assert (one.customer_id, one.variant) == (7, rows.variant[6])
    with engine.connect() as conn:
        v1 = pd.read_sql(text("SELECT customer_id, proba_true FROM scores__v1 ORDER BY customer_id"), conn)
        v2 = pd.read_sql(text("SELECT customer_id, proba_true FROM scores__v2 ORDER BY customer_id"), conn)
    want = v2.proba_true.where(rows.variant.eq("challenger").to_numpy(), v1.proba_true)
    assert rows.proba_true.tolist() == pytest.approx(want.tolist())

    # The champion flips to a new version: the same keys stay in the challenger's arm.
    run_job(load_job(two_versions), engine, force=True)
    again = ab_rows(engine)
    assert again.variant.tolist() == rows.variant.tolist()
    assert set(again.loc[again.variant == "champion", "model_version"]) == {3}
    status = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "status", "--json", "--db", db_url])
    assert '"split": "20% challenger"' in status.output and '"challenger",\n        2' in status.output

    assert set_split(engine, "scores", "challenger", 0) is None
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "scores__ab") and "scores__ab" not in \
            engine.dialect.get_view_names(conn)


def test_splits_are_refused_without_an_active_alias_or_with_a_bad_percent(engine, write_job):
    write_table(engine, "customers", customers_frame(20))
    run_job(load_job(write_job(CUSTOMERS_JOB)), engine)
    with pytest.raises(TableError, match="no version active for shadow"):
        set_split(engine, "scores", "shadow", 10)
    with pytest.raises(TableError, match="between 0 and 100"):
        set_split(engine, "scores", "shadow", 101)
    with pytest.raises(TableError, match="name the alias"):
        set_split(engine, "scores", "champion", 10)
    with engine.connect() as conn:
        assert "scores__ab" not in engine.dialect.get_view_names(conn)


def test_buckets_are_a_fixed_function_of_the_key():
    """The same keys get the same buckets on every machine and release: pinned values."""
    assert key_buckets(pd.DataFrame({"k": [1, 2, 3, 123456789]})).tolist() == [57, 52, 46, 74]
    assert key_buckets(pd.DataFrame({"k": ["a", "b"]})).tolist() == [45, 56]
    assert key_buckets(pd.DataFrame({"u": [1, 1], "i": [1, 2]})).tolist() == [12, 24]
    spread = pd.Series(key_buckets(pd.DataFrame({"k": range(100_000)}))).value_counts()
    assert len(spread) == 100 and spread.min() > 850


@pytest.mark.postgres
def test_buckets_are_identical_on_sqlite_and_postgresql(sqlite_url, postgresql_url, write_job):
    path = write_job(CUSTOMERS_JOB)
    found = []
    for url in (sqlite_url, postgresql_url):
        engine = make_engine(url)
        write_table(engine, "customers", customers_frame(300))
        run_job(load_job(path), engine)
        with engine.connect() as conn:
            found.append(pd.read_sql(text("SELECT customer_id, ab_bucket FROM scores ORDER BY customer_id"), conn))
        engine.dispose()
    pd.testing.assert_frame_equal(found[0], found[1], check_dtype=False)


def test_status_and_plan_say_when_a_flip_left_the_split_unserved(engine, db_url, two_versions):
    """A champion run with other columns (``include``) drops ``scores__ab``, which then waits for the challenger to
    serve the same ones; ``pipeline status`` still said ``ab 20% challenger`` and ``pipeline plan`` ``A/B split: 20%
    of keys from challenger in scores__ab``, while applications got ``relation "scores__ab" does not exist``."""
    set_split(engine, "scores", "challenger", 20)
    wider = two_versions.parent / "wider.toml"
    wider.write_text(two_versions.read_text().replace('table = "scores"', 'table = "scores"\ninclude = ["x1"]'))
    run_job(load_job(wider), engine, force=True)
    said = "20% challenger (not served: scores: challenger and champion serve different columns"
    assert catalog.status(engine)[0].split.startswith(said)
    assert any(line.startswith("A/B split: 20% of keys from challenger in scores__ab (not served: ")
               for line in plan_job(load_job(wider), engine, date(2026, 1, 31)).serving)
    activate(engine, "scores", 3, alias="challenger")  # the same columns again: the split is served
    assert catalog.status(engine)[0].split == "20% challenger"
    assert len(ab_rows(engine)) == KEYS


def test_removing_a_split_that_is_not_there_is_refused(engine, two_versions):
    """`pipeline split scores --alias shadow --percent 0` dropped challenger's scores__ab and said "removed"; with
    no split at all it said "removed" too."""
    with pytest.raises(TableError, match="no A/B split to remove"):
        set_split(engine, "scores", "challenger", 0)
    set_split(engine, "scores", "challenger", 20)
    before = ab_rows(engine)
    with pytest.raises(TableError, match="splits challenger, not shadow"):
        set_split(engine, "scores", "shadow", 0)
    pd.testing.assert_frame_equal(ab_rows(engine), before)
