"""MySQL/MariaDB as a domain source (issue 17): the same rows, in the same dtypes, as PostgreSQL and SQLite give.

Each table is made with explicit DDL per database, since readers take column kinds from declared types."""

from __future__ import annotations

import datetime as dt
import decimal
import re
import resource
import textwrap
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline.cli import main
from pipeline.database.engines import make_engine, normalize_url, redact
from pipeline.errors import DatabaseError, SourceError
from pipeline.jobspec import DomainSpec, Factor
from pipeline.run.domain import Domain

from helpers import FEATURES, customers_frame, train_model

pytestmark = pytest.mark.mysql

#: column -> (MariaDB, PostgreSQL, SQLite) type; ``note`` and ``late`` are NULL in the whole first chunk of 37.
COLUMNS = {
    "id": ("INT", "integer", "INTEGER"),
    "code": ("VARCHAR(20)", "varchar(20)", "VARCHAR(20)"),
    "clinic": ("VARCHAR(10)", "text", "TEXT"),
    "day": ("DATE", "date", "DATE"),
    "note": ("TEXT", "text", "TEXT"),
    "amount": ("DECIMAL(10, 2)", "numeric(10, 2)", "NUMERIC(10, 2)"),
    "score": ("DOUBLE", "double precision", "DOUBLE PRECISION"),
    "late": ("DOUBLE", "double precision", "DOUBLE PRECISION"),
    "visits": ("BIGINT", "bigint", "INTEGER"),
    "active": ("BOOLEAN", "boolean", "BOOLEAN"),
    "flag": ("TINYINT(1)", "boolean", "BOOLEAN"),
}
QUERIES = {  # int key, text key, composite key
    "int": (("id",), "SELECT * FROM mixed ORDER BY id"),
    "text": (("code",), "SELECT code, note, amount, score, late, visits, active, flag FROM mixed ORDER BY code"),
    "composite": (("clinic", "day"), "SELECT clinic, day, note, amount, visits FROM mixed ORDER BY clinic, day"),
}


def mixed_frame(n: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(7)

    def nulls(values: list[Any], share: float) -> list[Any]:
        return [None if rng.random() < share else v for v in values]

    frame = pd.DataFrame({
        "id": list(range(1, n + 1)),
        "code": [f"C{i:04d}" for i in range(n, 0, -1)],
        "clinic": [f"c{i % 4}" for i in range(n)],
        "day": [dt.date(2024, 1, 1) + dt.timedelta(days=i // 4) for i in range(n)],
        "note": nulls([str(v) for v in rng.choice(["alpha", "beta", "gamma"], n)], 0.2),
        "amount": nulls([decimal.Decimal(f"{v:.2f}") for v in rng.uniform(-100, 100, n)], 0.1),
        "score": nulls([float(v) for v in rng.normal(size=n)], 0.1),
        "late": nulls([float(v) for v in rng.normal(size=n)], 0.1),
        "visits": nulls([int(v) for v in rng.integers(0, 2**40, n)], 0.1),
        "active": nulls([bool(v) for v in rng.random(n) < 0.5], 0.2),
        "flag": nulls([bool(v) for v in rng.random(n) < 0.5], 0.2),
    }, dtype=object)
    frame.loc[:39, ["note", "late"]] = None  # ordered by id: the first chunk of 37, and 3 rows of the next, NULL
    for order in (["code"], ["clinic", "day"]):  # in the other keys' order too
        frame.loc[frame.sort_values(order).index[:40], "note"] = None
    return frame


def load_mixed(url: str) -> pd.DataFrame:
    engine = make_engine(url)
    which = {"mysql": 0, "mariadb": 0, "postgresql": 1, "sqlite": 2}[engine.dialect.name]
    declared = ", ".join(f"{c} {types[which]}" for c, types in COLUMNS.items())
    frame = mixed_frame()
    rows = frame.to_dict("records")
    if which == 2:
        rows = [{c: v.isoformat() if isinstance(v, dt.date) else float(v) if isinstance(v, decimal.Decimal) else v
                 for c, v in row.items()} for row in rows]
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE mixed ({declared}, PRIMARY KEY (id), UNIQUE (code), UNIQUE (clinic, day))"))
        conn.execute(text(f"INSERT INTO mixed ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"),
                     rows)
    engine.dispose()
    return frame


def chunks(url: str, keys: tuple[str, ...], query: str, chunk_size: int = 37,
           run_date: dt.date | None = None) -> list[pd.DataFrame]:
    engine = make_engine(url)
    try:
        domain = Domain(DomainSpec(keys, (Factor(query=query),), chunk_size=chunk_size), engine, run_date)
        return list(domain.chunks())
    finally:
        engine.dispose()


@pytest.mark.parametrize("key", list(QUERIES))
def test_a_mariadb_domain_is_read_as_postgresql_and_sqlite_read_it(mysql_url, sql_url, key):
    load_mixed(mysql_url)
    load_mixed(sql_url)
    keys, query = QUERIES[key]
    mine, theirs = chunks(mysql_url, keys, query), chunks(sql_url, keys, query)
    assert [len(c) for c in mine] == [37, 37, 37, 9]
    for a, b in zip(mine, theirs, strict=True):  # chunk by chunk: the all-NULL first chunk has its column's dtype
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    whole = pd.concat(mine, ignore_index=True)
    if "note" in whole:
        assert whole["note"].dtype == "str" and whole["note"].head(37).isna().all()
    if "active" in whole:
        assert whole["active"].dtype == "boolean" and whole["flag"].dtype == "boolean"
    if "amount" in whole:
        assert whole["amount"].dtype == "float64"


def test_the_same_predictions_from_mariadb_as_from_postgresql_or_sqlite(mysql_url, sql_url):
    """A model fitted on one database's rows scores the other's chunks to the same bits."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    frame = load_mixed(mysql_url)
    load_mixed(sql_url)
    features = ["amount", "score", "late", "visits", "active", "flag"]
    train = pd.concat(chunks(sql_url, ("id",), QUERIES["int"][1]), ignore_index=True)[features].astype("float64")
    model = HistGradientBoostingRegressor(max_iter=20).fit(train, np.arange(len(frame)) % 7)
    for a, b in zip(chunks(mysql_url, ("id",), QUERIES["int"][1]), chunks(sql_url, ("id",), QUERIES["int"][1])):
        np.testing.assert_array_equal(model.predict(a[features].astype("float64")),
                                      model.predict(b[features].astype("float64")))


def test_run_date_is_bound_as_a_date(mysql_url):
    load_mixed(mysql_url)
    query = "SELECT id, day FROM mixed WHERE day = :run_date OR day = :run_date + INTERVAL 1 DAY ORDER BY id"
    got = pd.concat(chunks(mysql_url, ("id",), query, run_date=dt.date(2024, 1, 3)), ignore_index=True)
    assert got["id"].tolist() == list(range(9, 17))
    assert got["day"].tolist() == [dt.date(2024, 1, 3)] * 4 + [dt.date(2024, 1, 4)] * 4


@pytest.mark.parametrize("query, message", [
    ("SELECT * FROM nowhere", "domain query failed on mysql://root@127.0.0.1:3306/t_.*: "
                              "Table '.*nowhere' doesn't exist"),
    ("SELEC 1", "You have an error in your SQL syntax"),
    ("DO 1", "it returns no rows to score"),
])
def test_a_bad_query_fails_with_one_line(mysql_url, sqlite_url, query, message):
    engine = make_engine(sqlite_url)
    domain = Domain(DomainSpec(("id",), (Factor(query=query, source=mysql_url),)), engine)
    with pytest.raises(SourceError, match=message) as caught:
        list(domain.chunks())
    assert "\n" not in str(caught.value)
    domain.close()
    engine.dispose()


def test_legacy_values_a_lenient_server_keeps_fail_in_one_line_that_says_what_to_do(mysql_url, sqlite_url):
    """Zero and partial dates, which a lenient sql_mode stores and Connector/Python cannot read (CONPY-368: a bare
    SystemError, or a crashed process), and a BIGINT UNSIGNED beyond a signed 64-bit integer (an OverflowError)
    fail in one line naming the column; the expression the message gives reads such dates as NULL, as
    ``pandas.read_sql`` gives them."""
    with make_engine(mysql_url).begin() as conn:
        conn.execute(text("SET SESSION sql_mode = ''"))
        conn.execute(text("CREATE TABLE legacy (id INT PRIMARY KEY, d DATE, t DATETIME, big BIGINT UNSIGNED)"))
        conn.execute(text("INSERT INTO legacy SELECT seq, IF(seq % 3 = 0, '0000-00-00', IF(seq % 3 = 1, '2024-05-00', "
                          "'2024-01-31')), IF(seq % 2 = 0, '0000-00-00 00:00:00', '2024-01-31 10:00:00'), seq "
                          "FROM seq_1_to_5000"))
        conn.execute(text("INSERT INTO legacy VALUES (5001, '2024-00-10', NULL, 9223372036854775808)"))
    engine = make_engine(sqlite_url)

    def read(query: str, chunk_size: int = 1000) -> pd.DataFrame:
        domain = Domain(DomainSpec(("id",), (Factor(query=query, source=mysql_url),), chunk_size=chunk_size),
                        engine, dt.date(2024, 1, 31))
        try:
            return pd.concat(domain.chunks(), ignore_index=True)
        finally:
            domain.close()

    mend = "IF(YEAR({c}) * MONTH({c}) * DAYOFMONTH({c}) = 0, NULL, {c}) AS {c}"
    for query, message in [
        ("SELECT id, t FROM legacy ORDER BY id;\n", "column t holds a zero or partial date"),
        ("SELECT id, big, d FROM legacy WHERE d = :run_date OR t IS NULL ORDER BY id", "column d holds a zero"),
        ("SELECT id, big FROM legacy ORDER BY id",
         "domain column 'big' is integer but holds 9223372036854775808; fix the value or cast the column in the "
         "query$"),
    ]:
        with pytest.raises(SourceError, match="^domain query failed on .*: " + message):
            read(query)
    with pytest.raises(SourceError, match=re.escape(
            "column d holds a zero or partial date ('0000-00-00', '2024-05-00'), which MariaDB Connector/Python "
            f"cannot read (CONPY-368): select it as {mend.format(c='d')} (NULL, as pandas.read_sql gives it), or "
            "mend the rows")):
        read("SELECT * FROM legacy")
    for chunk_size in (7, 5001):
        got = read(f"SELECT id, {mend.format(c='d')}, {mend.format(c='t')} FROM legacy WHERE id <= 5001 - "
                   "DAYOFMONTH(:run_date) + 31 ORDER BY id", chunk_size)
        assert got["d"].tolist() == [dt.date(2024, 1, 31) if i % 3 == 2 else None for i in range(1, 5002)]
        assert got["t"].isna().tolist() == [i % 2 == 0 for i in range(1, 5001)] + [True]
    engine.dispose()


def test_memory_stays_flat_in_the_domain_size(mysql_url):
    """300,000 rows in chunks of 10,000: the reader holds a chunk, never the result set (an unbuffered cursor)."""
    engine = make_engine(mysql_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE big (id INT PRIMARY KEY, x DOUBLE, name VARCHAR(40))")
        conn.exec_driver_sql("INSERT INTO big SELECT seq, seq / 3, CONCAT('name-', seq) FROM seq_1_to_300000")
    domain = Domain(DomainSpec(("id",), (Factor(query="SELECT * FROM big"),), chunk_size=10_000), engine)
    stream = domain.chunks()
    next(stream)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = 10_000 + sum(len(c) for c in stream)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert rows == 300_000 and grown_mb < 20, grown_mb  # the whole result as Python tuples is over 60 MB
    engine.dispose()


def test_urls_are_normalized_to_the_one_driver_and_keep_passwords_masked():
    for url in ("mysql://u:s3cret@h/db", "mysql+pymysql://u:s3cret@h/db", "mysql+mysqldb://u:s3cret@h/db"):
        assert normalize_url(url) == "mysql+mariadbconnector://u:s3cret@h/db"
    assert normalize_url("mariadb://u@h:3307/db") == "mariadb+mariadbconnector://u@h:3307/db"
    assert redact("mariadb://u:s3cret@h/db") == "mariadb://u:***@h/db"


def test_a_missing_driver_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mariadb", None)  # import mariadb raises ImportError
    with pytest.raises(DatabaseError) as caught:
        make_engine("mariadb://u:s3cret@h/db")
    assert str(caught.value) == ("no driver for 'mariadb://u:***@h/db': MySQL and MariaDB are read with MariaDB "
                                 "Connector/Python: pip install 'prediction-pipeline[mysql]'")


def test_pipeline_run_reads_a_mariadb_domain_into_sqlite(mysql_url, tmp_path, monkeypatch):
    """End to end: ``[domain] source`` on MariaDB, the target SQLite; the view equals the model called directly.
    A MariaDB target (``--db`` or ``target``) fails with one line and writes nothing."""
    source = make_engine(mysql_url)
    frame = customers_frame(250)
    with source.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (customer_id BIGINT PRIMARY KEY, x1 DOUBLE, x2 DOUBLE, "
                             "x3 DOUBLE)")
        conn.execute(text("INSERT INTO customers VALUES (:customer_id, :x1, :x2, :x3)"), frame.to_dict("records"))
    source.dispose()
    model = train_model(tmp_path / "jobs" / "models" / "scores.joblib")
    target = f"sqlite:///{tmp_path / 'predictions.db'}"
    (tmp_path / "jobs" / "scores.toml").write_text(textwrap.dedent(f"""
        target = "{target}"
        [domain]
        keys = ["customer_id"]
        query = "SELECT customer_id, x1, x2, x3 FROM customers"
        source = "{mysql_url}"
        chunk_size = 64
        [model]
        path = "models/scores.joblib"
        method = "predict_proba"
        [output]
        table = "scores"
    """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    result = CliRunner().invoke(main, ["--quiet", "run", "scores"])
    assert result.exit_code == 0, result.output
    engine = make_engine(target)
    with engine.connect() as conn:
        view = pd.read_sql(text("SELECT * FROM scores ORDER BY customer_id"), conn)
    engine.dispose()
    expected = joblib.load(model).predict_proba(frame[FEATURES])
    assert view["customer_id"].tolist() == frame["customer_id"].tolist()
    np.testing.assert_allclose(view[["proba_false", "proba_true"]].to_numpy(), expected, rtol=0, atol=1e-12)

    result = CliRunner().invoke(main, ["--quiet", "run", "scores", "--db", mysql_url])  # and into MariaDB itself
    assert result.exit_code == 0, result.output
    engine = make_engine(mysql_url)
    with engine.connect() as conn:
        served = pd.read_sql(text("SELECT * FROM scores ORDER BY customer_id"), conn)
    engine.dispose()
    np.testing.assert_array_equal(served[["proba_false", "proba_true"]].to_numpy(), view[["proba_false", "proba_true"]])
