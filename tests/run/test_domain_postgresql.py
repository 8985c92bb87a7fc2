"""PostgreSQL source types whose Arrow form (ADBC's) is not their value: each reaches the model as the value a
psycopg cursor gives, or fails the run in one line naming the column and the cast to make."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline.cli import main
from pipeline.errors import SourceError
from pipeline.jobspec import DomainSpec, Factor
from pipeline.run.domain import Domain

from helpers import CUSTOMERS_JOB, view_rows

pytestmark = pytest.mark.postgres


def one_column(engine, ddl: str, values: list[str]) -> None:
    """Table ``typed (id, v <ddl>)``: rows 1 and 2 NULL, then ``values`` (SQL literals), so that with small chunks
    the first chunk holds no value."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE typed (id integer PRIMARY KEY, v {ddl})")
        for i, value in enumerate(["NULL", "NULL", *values], start=1):
            conn.exec_driver_sql(f"INSERT INTO typed VALUES ({i}, {value})")


def read(engine, chunk_size: int, query: str = "SELECT id, v FROM typed ORDER BY id") -> list[pd.DataFrame]:
    return list(Domain(DomainSpec(("id",), (Factor(query=query),), chunk_size=chunk_size), engine).chunks())


@pytest.mark.parametrize("ddl, values, message", [
    # ADBC gives money as an int64 of cents: 12.34 would reach the model as 1234
    ("money", ["12.34"], r"column 'v' is PostgreSQL money, .*cast it in the query \(v::numeric\)"),
    # and oid as an int32: 4294967295 would reach it as -1
    ("oid", ["4294967295"], r"column 'v' is PostgreSQL oid, .*\(v::bigint\)"),
    # and interval as pandas DateOffsets, where read_sql gives timedeltas: an encoder fitted on those never saw them
    ("interval", ["'1 day 02:00'", "'1 mon'"], r"column 'v' is PostgreSQL interval, .*\(extract\(epoch from v\)\)"),
    # types ADBC has no Arrow type for arrive as the bytes of PostgreSQL's binary wire format
    ("timetz", ["'12:34:56+02'"], r"column 'v' is PostgreSQL timetz, .*\(v::text\)"),
    ("inet", ["'10.0.0.1'"], r"column 'v' is PostgreSQL inet, .*\(v::text\)"),
    ("int4range", ["'[1,5)'"], r"column 'v' is PostgreSQL type oid 3904, .*\(v::text\)"),
    ("bit(3)", ["B'101'"], r"column 'v' is PostgreSQL bit, .*\(v::text\)"),
])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_types_adbc_gives_in_another_form_fail_naming_the_column_and_the_cast(pg, ddl, values, message, chunk_size):
    one_column(pg, ddl, values)
    with pytest.raises(SourceError, match=message):
        read(pg, chunk_size)


@pytest.mark.parametrize("ddl, values, message", [
    # ADBC shifts 'infinity' to its own epoch and wraps: it would reach the model as a date in year -290278
    ("timestamp", ["'2026-01-01'", "'infinity'"], r"column 'v' holds infinity or -infinity, .*isfinite\(v\)"),
    ("timestamptz", ["'-infinity'"], r"column 'v' holds infinity or -infinity"),
    ("date", ["'infinity'"], r"column 'v' holds infinity or -infinity"),
    # pandas takes no arrays as features, and the domain's fingerprint cannot hash them
    ("integer[]", ["'{1,2}'"], r"column 'v' holds arrays"),
    # a time of 24:00:00, which Python's datetime.time cannot hold
    ("time", ["'12:00'", "'24:00:00'"], r"column 'v' .*hour must be in 0\.\.23"),
])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_values_pandas_cannot_hold_fail_naming_the_column(pg, ddl, values, message, chunk_size):
    one_column(pg, ddl, values)
    with pytest.raises(SourceError, match=message):
        read(pg, chunk_size)


@pytest.mark.parametrize("query", ["SELECT id, ROW(id, v) AS v FROM typed ORDER BY id",
                                   "SELECT id, ARRAY[ROW(v, 'a')] AS v FROM typed ORDER BY id"])
@pytest.mark.parametrize("chunk_size", [1, 3])
def test_records_fail_naming_the_column(pg, query, chunk_size):
    """ADBC cannot read an anonymous ROW(...): it failed the run with an ArrowInvalid naming no column."""
    one_column(pg, "integer", ["7"])
    with pytest.raises(SourceError, match=r"column 'v' holds arrays or other nested values"):
        read(pg, chunk_size, query)


def test_finite_timestamps_at_postgresql_s_limits_are_read_as_they_are(pg):
    one_column(pg, "timestamp", ["'4713-01-01 00:00:00 BC'", "'9999-12-31 23:59:59.999999'"])
    whole = pd.concat(read(pg, 2), ignore_index=True)
    assert whole["v"].iloc[3] == pd.Timestamp("9999-12-31 23:59:59.999999")
    assert whole["v"].iloc[2].year == -4712  # 4713 BC, in ISO years


#: Row i's value of each type the run tests below read.
VALUES = {"integer": "i", "float8": "i / 3.0", "money": "i * 1.25", "interval": "make_interval(hours => i)",
          "uuid": "md5(i::text)::uuid"}


@pytest.mark.parametrize("key, x3, message", [
    ("integer", "money", "domain column 'x3' is PostgreSQL money"),
    ("integer", "interval", "domain column 'x3' is PostgreSQL interval, which ADBC reads as pandas DateOffset"),
    ("interval", "float8", "(extract(epoch from customer_id))"),  # was: holds DateOffset values, which cannot be stored
    # a feature reaches the model as uuid.UUID, as read_sql gives it; no column type of a version holds one
    ("uuid", "float8", "'customer_id' holds UUID values, which cannot be stored: cast it to text in the query "
                       "(customer_id::text"),
])
def test_a_run_over_such_a_column_fails_in_one_line_and_publishes_nothing(pg, postgresql_url, write_job, tmp_path,
                                                                          monkeypatch, key, x3, message):
    with pg.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE customers (customer_id {key} PRIMARY KEY, x1 float8, x2 float8, "
                             f"x3 {x3})")
        conn.exec_driver_sql(f"INSERT INTO customers SELECT {VALUES[key]}, i / 10.0, -i / 7.0, {VALUES[x3]} "
                             "FROM generate_series(1, 50) AS i")
    write_job(CUSTOMERS_JOB.replace("[model]", "chunk_size = 20\n[model]"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--quiet", "run", "scores", "--db", postgresql_url])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    with pg.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('scores')")).scalar() is None


@pytest.mark.parametrize("chunk_size", [7, 100])
def test_a_uuid_feature_reaches_the_model_as_the_uuid_a_cursor_gives(pg, write_job, chunk_size):
    """ADBC's UUIDs became their 16 bytes in pandas, which an encoder fitted on ``pandas.read_sql``'s
    ``uuid.UUID`` values takes for categories it never saw: every prediction silently the unknown one's."""
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from pipeline import load_job, run_job

    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (customer_id integer PRIMARY KEY, x1 float8, segment uuid)")
        conn.exec_driver_sql("INSERT INTO customers SELECT i, sin(i), CASE WHEN mod(i, 5) > 0 THEN "
                             "md5(mod(i, 3)::text)::uuid END FROM generate_series(1, 60) AS i")
    with pg.connect() as conn:
        frame = pd.read_sql(text("SELECT * FROM customers ORDER BY customer_id"), conn)
    features = frame[["x1", "segment"]]
    encoder = OneHotEncoder(handle_unknown="ignore")
    model = make_pipeline(make_column_transformer((encoder, ["segment"]), remainder="passthrough"),
                          LogisticRegression()).fit(features, frame["customer_id"] % 3 == 0)
    job = CUSTOMERS_JOB.replace("x1, x2, x3", "x1, segment").replace("[model]", f"chunk_size = {chunk_size}\n[model]")
    path = write_job(job, model=model)
    run_job(load_job(path), pg)
    served = view_rows(pg)
    assert served["customer_id"].tolist() == frame["customer_id"].tolist()
    np.testing.assert_array_equal(served[["proba_false", "proba_true"]].to_numpy(), model.predict_proba(features))


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_citext_is_read_as_the_text_it_holds(pg, chunk_size):
    """citext (emails, user names: keys) has no Arrow type in ADBC, but its wire format is its text's bytes: it
    reads as text, as psycopg gives it, case and trailing spaces kept."""
    with pg.begin() as conn:
        where = conn.exec_driver_sql("SELECT extnamespace::regnamespace::text FROM pg_extension "
                                     "WHERE extname = 'citext'").scalar()
        if where is None:  # an extension is installed once per database: in this test's schema, dropped with it
            conn.exec_driver_sql("CREATE EXTENSION citext SCHEMA " + conn.exec_driver_sql(
                "SELECT quote_ident(current_schema())").scalar())
    one_column(pg, f"{where}.citext" if where else "citext", ["'Ann@Example.org '", "'é'"])
    chunks = read(pg, chunk_size)
    assert {str(c["v"].dtype) for c in chunks} == {"str"}
    assert pd.concat(chunks, ignore_index=True)["v"].tolist()[2:] == ["Ann@Example.org ", "é"]


@pytest.mark.parametrize("chunk_size", [2, 100])
def test_a_character_n_key_is_stored_as_postgresql_casts_it_to_text(pg, write_job, chunk_size):
    """char(n) values arrive padded ('a    '), but PostgreSQL compares them, and casts them to text, without the
    padding: stored padded, no key of the view matched its customer (a join, or sql/queries.sql's lookup with a
    default, answered every key with the default). Features keep the padding, as ``pandas.read_sql`` gives it."""
    from pipeline import load_job, run_job

    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (customer_id char(5) PRIMARY KEY, x1 float8, x2 float8, "
                             "x3 float8)")
        conn.exec_driver_sql("INSERT INTO customers SELECT CASE WHEN i > 3 THEN 'c' || i ELSE repeat('z', i) END, "
                             "sin(i), cos(i), i / 9.0 FROM generate_series(1, 30) AS i")
    path = write_job(CUSTOMERS_JOB.replace("[model]", f"chunk_size = {chunk_size}\n[model]"))
    run_job(load_job(path), pg)
    with pg.connect() as conn:
        frame = pd.read_sql(text("SELECT customer_id::text AS customer_id, x1, x2, x3 FROM customers "
                                 "ORDER BY customer_id"), conn)
        joined = conn.exec_driver_sql("SELECT count(*) FROM customers c JOIN scores s "
                                      "ON s.customer_id = c.customer_id").scalar()
    served = view_rows(pg)
    assert joined == 30
    assert served["customer_id"].tolist() == frame["customer_id"].tolist()  # 'z', 'zz', ..., 'c10', ...
    model = joblib.load(path.parent / "models" / "scores.joblib")
    np.testing.assert_array_equal(served[["proba_false", "proba_true"]].to_numpy(),
                                  model.predict_proba(frame[["x1", "x2", "x3"]]))
