"""The input contract: one dtype per source column type, the same for every chunk and every database."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sqlalchemy import text

from pipeline.contract import DTYPES, Contract, arrow_kind, convert, sqlite_kind, type_changes, value_kind
from pipeline.database.dialects import reader_for
from pipeline.errors import SourceError
from pipeline.jobspec import DomainSpec, Factor
from pipeline.run.domain import Domain

# -- kinds from declared types, Arrow types and values ------------------------------

@pytest.mark.parametrize("declared, kind", [
    ("INTEGER", "integer"), ("BIGINT", "integer"), ("int8", "integer"),
    ("REAL", "float"), ("DOUBLE PRECISION", "float"), ("FLOAT", "float"),
    ("NUMERIC(10, 2)", "numeric"), ("DECIMAL", "numeric"),
    ("BOOLEAN", "boolean"), ("TEXT", "text"), ("VARCHAR(20)", "text"), ("CHARACTER(3)", "text"),
    ("DATE", "date"), ("DATETIME", "timestamp"), ("TIMESTAMP", "timestamp"),
    ("TIMESTAMP WITH TIME ZONE", "timestamptz"), ("", None), (None, None), ("BLOB", None),
])
def test_sqlite_declared_types(declared, kind):
    assert sqlite_kind(declared) == kind


@pytest.mark.parametrize("arrow_type, kind", [
    (pa.int32(), "integer"), (pa.int64(), "integer"), (pa.float32(), "float"), (pa.float64(), "float"),
    (pa.decimal128(10, 2), "numeric"), (pa.bool_(), "boolean"), (pa.string(), "text"),
    (pa.large_string(), "text"), (pa.date32(), "date"), (pa.timestamp("us"), "timestamp"),
    (pa.timestamp("us", tz="UTC"), "timestamptz"), (pa.null(), None), (pa.binary(), "other"),
])
def test_arrow_types(arrow_type, kind):
    assert arrow_kind(arrow_type) == kind


@pytest.mark.parametrize("values, kind", [
    ([None, 3], "integer"), ([None, 2.5], "float"), ([None, decimal.Decimal("1.5")], "numeric"),
    ([None, True], "boolean"), ([None, "a"], "text"), ([None, dt.date(2026, 1, 1)], "date"),
    ([None, dt.datetime(2026, 1, 1)], "timestamp"), ([None, None], None), ([None, b"x"], "other"),
])
def test_kinds_from_values(values, kind):
    assert value_kind(pd.Series(values, dtype=object)) == kind


def test_a_value_that_does_not_fit_its_declared_type_names_the_column():
    with pytest.raises(SourceError, match=r"domain column 'age' is integer but holds 'unknown'"):
        convert(pd.Series([1, "unknown", None], dtype=object), "integer", "age")


def test_fractional_values_in_an_integer_column_are_refused():
    with pytest.raises(SourceError, match=r"'n' is integer but holds 1.5"):
        convert(pd.Series([1.0, 1.5]), "integer", "n")


def test_a_time_of_day_in_a_date_column_is_refused_not_dropped():
    """SQLite stores whatever text a DATE column is given: '2026-01-02 10:30:00' reached the model as
    2026-01-02, its time silently gone. Midnight loses nothing, and is read as the date."""
    with pytest.raises(SourceError, match=r"'day' is date but holds '2026-01-02 10:30:00'"):
        convert(pd.Series(["2026-01-01", "2026-01-02 10:30:00", None], dtype=object), "date", "day")
    midnight = convert(pd.Series(["2026-01-01 00:00:00", "2026-01-02", None], dtype=object), "date", "day")
    assert midnight.tolist() == [dt.date(2026, 1, 1), dt.date(2026, 1, 2), None]


def test_nested_arrow_columns_fail_naming_the_column():
    """A Parquet list column, a PostgreSQL array: pandas would hold numpy arrays, which the domain's fingerprint
    cannot hash (a bare ``unhashable type: 'numpy.ndarray'``) and no model takes."""
    with pytest.raises(SourceError, match=r"domain column 'tags' holds arrays"):
        Contract().arrow(pa.table({"id": [1, 2], "tags": [[1, 2], None]}))


def test_type_changes_name_each_feature():
    before = [["age", "Int64", None], ["city", "str", None], ["gone", "str", None]]
    after = [["age", "float64", None], ["city", "str", None], ["new", "Int64", None]]
    assert type_changes(before, after) == ["age: Int64 -> float64"]


def test_an_undeclared_column_is_decided_by_its_first_value_and_kept():
    contract = Contract()
    contract.declare(["x"], [None])
    first = contract.records([(None,), (None,)], ["x"])
    assert first["x"].dtype == np.float64 and first["x"].isna().all()
    second = contract.records([("a",), (None,)], ["x"])
    third = contract.records([(None,), (None,)], ["x"])
    assert contract.kinds == {"x": "text"}
    assert second["x"].dtype == third["x"].dtype == "str"


# -- every database gives the same dtypes, whatever the chunk ----------------------------

TYPED_TABLE = {
    "sqlite": ("CREATE TABLE typed (id INTEGER, n INTEGER, f REAL, d DOUBLE, amount NUMERIC(10, 2), flag BOOLEAN, "
               "label TEXT, day DATE, at DATETIME)"),
    "postgresql": ("CREATE TABLE typed (id integer, n bigint, f real, d double precision, amount numeric(10, 2), "
                   "flag boolean, label text, day date, at timestamp)"),
    "mysql": ("CREATE TABLE typed (id INT, n BIGINT, f FLOAT, d DOUBLE, amount DECIMAL(10, 2), flag BOOLEAN, "
              "label TEXT, day DATE, at DATETIME)"),
}
#: Rows 1-2 have every value NULL, so with chunks of two rows the first chunk is all NULL.
TYPED_ROWS = [
    (1, None, None, None, None, None, None, None, None),
    (2, None, None, None, None, None, None, None, None),
    (3, 7, 0.5, 1.25, "12.34", True, "a", "2026-01-02", "2026-01-02 03:04:05"),
    (4, -1, 1.5, 2.5, "-0.5", False, "b", "2026-02-03", "2026-02-03 04:05:06"),
    (5, None, None, None, None, None, None, None, None),
]
EXPECTED_DTYPES = {"id": "Int64", "n": "Int64", "f": "float64", "d": "float64", "amount": "float64",
                   "flag": "boolean", "label": "str", "day": "object", "at": "datetime64[us]"}


def write_typed(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text(TYPED_TABLE[engine.dialect.name]))
        marks = ", ".join(f":c{i}" for i in range(9))
        for row in TYPED_ROWS:
            params = {f"c{i}": v for i, v in enumerate(row)}
            if engine.dialect.name in ("postgresql", "mysql"):
                params["c4"] = None if row[4] is None else decimal.Decimal(row[4])
                params["c7"] = None if row[7] is None else dt.date.fromisoformat(row[7])
                params["c8"] = None if row[8] is None else dt.datetime.fromisoformat(row[8])
            conn.execute(text(f"INSERT INTO typed VALUES ({marks})"), params)


def read_typed(engine, chunk_size: int) -> list[pd.DataFrame]:
    return list(reader_for(engine).read_query(engine, "SELECT * FROM typed ORDER BY id", None, chunk_size))


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 100])
def test_every_chunk_has_the_declared_dtypes(engine, chunk_size):
    write_typed(engine)
    chunks = read_typed(engine, chunk_size)
    for chunk in chunks:
        assert {c: str(t) for c, t in chunk.dtypes.items()} == EXPECTED_DTYPES
    whole = pd.concat(chunks, ignore_index=True)
    assert whole["n"].tolist()[2:4] == [7, -1] and whole["n"].isna().tolist() == [True, True, False, False, True]
    assert whole["amount"].tolist()[2:4] == [12.34, -0.5]
    assert whole["flag"].tolist()[2:4] == [True, False] and whole["flag"].isna().sum() == 3
    assert whole["label"].tolist()[2:4] == ["a", "b"] and whole["label"].isna().sum() == 3
    assert whole["day"].tolist() == [None, None, dt.date(2026, 1, 2), dt.date(2026, 2, 3), None]
    assert whole["at"].iloc[2] == pd.Timestamp("2026-01-02 03:04:05") and whole["at"].isna().sum() == 3
    # one missing value per kind: NaN for text (as pandas.read_sql gives it), never None beside NaN
    assert all(v is np.nan or isinstance(v, str) for v in whole["label"].tolist())


def test_sqlite_and_postgresql_give_the_same_frame(sqlite_url, postgresql_url):
    from pipeline.database.engines import make_engine

    frames = []
    for url in (sqlite_url, postgresql_url):
        engine = make_engine(url)
        try:
            write_typed(engine)
            frames.append(pd.concat(read_typed(engine, 2), ignore_index=True))
        finally:
            engine.dispose()
    sqlite_frame, pg_frame = frames
    pg_frame["f"] = pg_frame["f"].astype(np.float32).astype(np.float64)  # REAL is float4 on PostgreSQL
    pd.testing.assert_frame_equal(sqlite_frame, pg_frame)


def test_an_expression_without_declared_type_keeps_the_kind_of_its_first_values(sqlite_url):
    from pipeline.database.engines import make_engine

    engine = make_engine(sqlite_url)
    try:
        write_typed(engine)
        query = "SELECT id, CASE WHEN id > 2 THEN label || '!' END AS shout FROM typed ORDER BY id"
        chunks = list(reader_for(engine).read_query(engine, query, None, 2))
    finally:
        engine.dispose()
    assert [str(c["shout"].dtype) for c in chunks] == ["float64", "str", "str"]  # unknown until a value shows
    assert chunks[1]["shout"].tolist() == ["a!", "b!"]


def test_a_domain_reads_each_factor_with_one_contract_for_the_whole_run(engine):
    write_typed(engine)
    spec = DomainSpec(("id",), (Factor(query="SELECT id, label FROM typed ORDER BY id"),), chunk_size=2)
    domain = Domain(spec, engine)
    first = list(domain.chunks())
    again = list(domain.chunks())
    assert [str(c["label"].dtype) for c in first + again] == ["str"] * 6
    assert domain.contracts[0].kinds == {"id": "integer", "label": "text"}


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_file_domains_keep_their_dtypes_across_chunks(tmp_path, sqlite_url, suffix):
    from pipeline.database.engines import make_engine

    frame = pd.DataFrame({"id": [1, 2, 3, 4, 5], "n": [None, None, 3, 4, None], "label": [None, None, "a", "b", None]})
    path = tmp_path / f"domain.{suffix}"
    if suffix == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.astype({"n": "Int64", "label": "str"}).to_parquet(path, index=False)
    engine = make_engine(sqlite_url)
    try:
        domain = Domain(DomainSpec(("id",), (Factor(file=path),), chunk_size=2), engine)
        chunks = list(domain.chunks())
    finally:
        engine.dispose()
    labels = [str(c["label"].dtype) for c in chunks]
    assert labels[1:] == ["str", "str"]
    whole = pd.concat(chunks, ignore_index=True)
    assert whole["label"].tolist()[2:4] == ["a", "b"] and whole["label"].isna().sum() == 3
    if suffix == "parquet":  # a Parquet file declares its types, so even the all-NULL first chunk has them
        assert labels[0] == "str" and all(str(c["n"].dtype) == "Int64" for c in chunks)


def test_every_kind_has_a_documented_dtype():
    assert set(DTYPES) == {"integer", "float", "numeric", "boolean", "text", "date", "timestamp", "timestamptz"}


# -- across runs: the active version's input types are kept, or the change is allowed and recorded ----------

TYPED_JOB = """
    [domain]
    keys = ["customer_id"]
    query = "SELECT customer_id, x1, x2, x3 FROM customers"
    {allow}
    [model]
    path = "models/{model}"
    method = "predict_proba"
    [output]
    table = "scores"
"""


def test_a_feature_type_change_is_refused_naming_the_column(engine, write_job):
    from click.testing import CliRunner

    from pipeline import load_job, run_job
    from pipeline.cli import main
    from pipeline.errors import PipelineError

    from helpers import customers_frame, view_rows, write_table

    frame = customers_frame(50)
    frame["x3"] = (frame["x3"] * 10).round().astype("int64")  # an integer column the model reads as a number
    write_table(engine, "customers", frame)
    path = write_job(TYPED_JOB.replace("{allow}", ""))
    run_job(load_job(path), engine)
    first = view_rows(engine)
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT input_schema FROM pipeline_versions WHERE version = 1")).scalar_one()
    assert '["x3", "Int64", null]' in schema

    frame["x3"] = frame["x3"] + 0.5  # the source now holds floats in that column
    write_table(engine, "customers", frame)
    with pytest.raises(PipelineError, match=r"differ from active version 1's: x3: Int64 -> float64 .*"
                                            r"allow_type_changes"):
        run_job(load_job(path), engine, force=True)
    pd.testing.assert_frame_equal(view_rows(engine), first)  # nothing readers see changed

    allowed = write_job(TYPED_JOB.replace("{allow}", "allow_type_changes = true"))
    result = run_job(load_job(allowed), engine, force=True)
    assert result.version == 3 and result.activated
    with engine.connect() as conn:
        changes = conn.execute(text("SELECT type_changes FROM pipeline_versions WHERE version = 3")).scalar_one()
    assert changes == "x3: Int64 -> float64"
    out = CliRunner().invoke(main, ["versions", "scores", "--db", engine.url.render_as_string(hide_password=False)])
    assert out.exit_code == 0 and "x3: Int64 -> float64" in out.output
    assert "proba_false=False, proba_true=True" in out.output


# -- keys: stored as read, so a key's value must survive its dtype -------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 2])
def test_a_numeric_key_a_float_cannot_hold_exactly_fails_naming_the_column(engine, chunk_size):
    """NUMERIC becomes float64 (as ``read_sql`` gives it), which a model takes alike; a key, though, is stored as read,
    and 9007199254740993 (2**53 + 1) was stored as 9007199254740992: a prediction under another customer's id."""
    numeric = "NUMERIC(20, 0)" if engine.dialect.name != "mysql" else "DECIMAL(20, 0)"
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE accounts (account_id {numeric} PRIMARY KEY, x DOUBLE PRECISION)"
                          .replace("DOUBLE PRECISION", "DOUBLE" if engine.dialect.name == "mysql" else "FLOAT")))
        conn.execute(text("INSERT INTO accounts VALUES (1, 0.5), (2, 1.5), (9007199254740993, 2.5)"))

    def read(query: str) -> pd.DataFrame:
        spec = DomainSpec(("account_id",), (Factor(query=query),), chunk_size=chunk_size)
        return pd.concat(list(Domain(spec, engine).chunks()), ignore_index=True)

    with pytest.raises(SourceError, match=r"key column 'account_id' is numeric and holds 9007199254740993, "
                                          r"which float64 cannot hold exactly"):
        read("SELECT account_id, x FROM accounts ORDER BY account_id")
    fine = read("SELECT account_id, x FROM accounts WHERE account_id < 3 ORDER BY account_id")
    assert fine["account_id"].tolist() == [1.0, 2.0]
    features = read("SELECT x AS account_id, account_id AS x FROM accounts ORDER BY x")  # not a key: as read_sql
    assert features["x"].tolist() == [1.0, 2.0, 9007199254740992.0]
