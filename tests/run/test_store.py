"""The version writer: column types told from the first chunk, chunks appended as they are, the key built last
and its problems named; fill scores a stream of chunks into it, keeping each group's best rows for top_k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import MetaData, Table, inspect, select, text
from sqlalchemy import types as sqltypes

from pipeline import load_job
from pipeline.database.dialects import dialect_for
from pipeline.database.transactions import transaction
from pipeline.errors import AuditError, DatabaseError, SourceError
from pipeline.run.domain import Domain
from pipeline.run.model import load_model
from pipeline.run.scoring import Scorer
from pipeline.run.store import VersionWriter, columns_of, fill, infer_type

from helpers import CUSTOMERS_JOB, PRODUCT_JOB, customers_frame, write_table, write_users_items

JOB = CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 90')


def frame(ids, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ids = list(ids)
    return pd.DataFrame({"customer_id": np.array(ids, dtype="int64"),
                         "score": rng.random(len(ids)),
                         "segment": [f"s{i % 3}" for i in ids],
                         "flag": [i % 2 == 0 for i in ids]})


def read_back(engine, name: str) -> list[tuple]:
    """The table's rows in key order, through its reflected column types (SQLite's booleans as bool; MariaDB's
    DOUBLE as float, as a reader gets it)."""
    with engine.connect() as conn:
        table = Table(name, MetaData(), autoload_with=conn)
        for column in table.columns:
            if isinstance(column.type, sqltypes.Float):
                column.type.asdecimal = False
        return [tuple(r) for r in conn.execute(select(table).order_by(table.c.customer_id))]


def python_types(engine, name: str) -> dict[str, type]:
    """What a reader gets for each column (MariaDB's DOUBLE reflects as a decimal type, though it reads floats)."""
    with engine.connect() as conn:
        found = {c["name"]: c["type"] for c in inspect(conn).get_columns(name)}
    return {name: float if isinstance(kind, sqltypes.Float) else kind.python_type for name, kind in found.items()}


#: What a boolean reads back as: MariaDB's BOOL is TINYINT(1), so 0 and 1 (equal to False and True).
def boolean(engine) -> type:
    return int if engine.dialect.name in ("mysql", "mariadb") else bool


def has_table(engine, name: str) -> bool:
    with engine.connect() as conn:
        return engine.dialect.has_table(conn, name)


def test_chunks_are_read_back_exactly_with_the_inferred_types(engine):
    chunks = [frame(range(1, 41), seed=1), frame(range(41, 101), seed=2)]
    with transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"])
        for chunk in chunks:
            writer.write(chunk)
        rows = writer.finish()
    assert rows == 100
    assert writer.columns == [("customer_id", "integer"), ("score", "float"), ("segment", "text"),
                              ("flag", "boolean")]
    assert python_types(engine, "scores__v1") == {"customer_id": int, "score": float, "segment": str,
                                                  "flag": boolean(engine)}
    expected = [tuple(r) for r in pd.concat(chunks).itertuples(index=False)]
    assert read_back(engine, "scores__v1") == expected


def test_finish_builds_the_key_index(engine):
    with transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"])
        writer.write(frame(range(1, 11)))
        assert writer.finish() == 10
    with pytest.raises(DatabaseError), transaction(engine) as conn:
        conn.execute(text("INSERT INTO scores__v1 (customer_id, score, segment, flag) VALUES (3, 0.5, 'x', true)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM scores__v1")).scalar_one() == 10
        found = inspect(conn)
        if engine.dialect.name == "postgresql":
            key = found.get_pk_constraint("scores__v1")
            assert (key["name"], key["constrained_columns"]) == ("scores__v1__key", ["customer_id"])
        elif engine.dialect.name in ("mysql", "mariadb"):  # the primary key, which InnoDB clusters the rows by
            assert found.get_pk_constraint("scores__v1")["constrained_columns"] == ["customer_id"]
        else:
            assert [(i["name"], i["column_names"], bool(i["unique"])) for i in found.get_indexes("scores__v1")] == \
                [("scores__v1__key", ["customer_id"], True)]


def test_a_table_made_elsewhere_sets_the_column_order(engine):
    dialect = dialect_for(engine)
    columns = [("customer_id", "integer"), ("flag", "boolean"), ("segment", "text"), ("score", "float")]
    with transaction(engine) as conn:
        dialect.create_table(conn, "scores__v1", columns)
    chunk = frame(range(1, 6))  # columns in another order than the table's
    with transaction(engine) as conn:
        writer = VersionWriter(dialect, conn, "scores__v1", ["customer_id"], columns=columns, rows=7)
        writer.write(chunk)
        assert writer.finish() == 12  # counts on from the rows written before
    assert read_back(engine, "scores__v1") == [tuple(r) for r in chunk[[c for c, _ in columns]].itertuples(index=False)]


def test_a_duplicated_key_fails_finish_naming_it(engine):
    chunk = frame([1, 2, 3, 4, 3, 5])
    with pytest.raises(AuditError, match=r"^the domain lists some keys more than once, e.g. customer_id=3$"), \
            transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"])
        writer.write(chunk)
        writer.finish()
    # the caller's transaction rolled back the whole load, where DDL is transactional (elsewhere the run drops it)
    assert has_table(engine, "scores__v1") != dialect_for(engine).TRANSACTIONAL_DDL


def test_a_composite_key_is_named_column_by_column(engine):
    chunk = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [10, 11, 10, 10], "score": [0.1, 0.2, 0.3, 0.4]})
    with pytest.raises(AuditError, match=r"e\.g\. user_id=2, item_id=10$"), transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["user_id", "item_id"])
        writer.write(chunk)
        writer.finish()


def test_null_keys_are_counted_before_duplicates_are_named(engine):
    """SQLite's unique index accepts NULLs, so there the duplicate is what fails the index; the message still
    counts the NULL keys first."""
    chunk = frame(range(1, 7))
    chunk["customer_id"] = pd.array([1, None, 2, None, 2, 3], dtype="Int64")
    with pytest.raises(AuditError, match=r"^2 domain row\(s\) have a NULL key \(customer_id\)$"), \
            transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"])
        writer.write(chunk)
        assert writer.columns[0] == ("customer_id", "integer")
        writer.finish()


@pytest.mark.postgres
def test_a_null_key_alone_fails_finish_on_postgresql(postgresql_url):
    """The primary key refuses NULLs itself (SQLite's unique index does not; its audits count them)."""
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    try:
        chunk = frame(range(1, 6))
        chunk["customer_id"] = pd.array([1, 2, None, 4, 5], dtype="Int64")
        with pytest.raises(AuditError, match=r"^1 domain row\(s\) have a NULL key \(customer_id\)$"), \
                transaction(engine) as conn:
            writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"])
            writer.write(chunk)
            writer.finish()
    finally:
        engine.dispose()


def test_a_first_chunk_with_a_column_of_only_nulls_is_refused(engine):
    chunk = frame(range(1, 4))
    chunk["note"] = pd.Series([None, None, None], dtype=object)
    with pytest.raises(SourceError, match=r"^column 'note' holds only NULLs in the first chunk"), \
            transaction(engine) as conn:
        VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"]).write(chunk)
    assert not has_table(engine, "scores__v1")


def test_an_all_nan_float_column_is_still_float_and_stored_as_null(engine):
    chunk = frame(range(1, 4))
    chunk["score"] = np.nan
    assert infer_type("score", chunk["score"]) == "float"
    with transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["customer_id"])
        writer.write(chunk)
        writer.write(frame(range(4, 6)))  # later chunks bring values
        writer.finish()
    assert writer.columns[1] == ("score", "float")
    assert python_types(engine, "scores__v1")["score"] is float
    with engine.connect() as conn:
        nulls = conn.execute(text("SELECT customer_id FROM scores__v1 WHERE score IS NULL ORDER BY 1")).scalars()
        assert list(nulls) == [1, 2, 3]


def test_column_types_are_told_from_values():
    chunk = pd.DataFrame({
        "i": pd.array([1, None], dtype="Int64"), "f": [0.5, np.nan], "b": [True, False], "t": ["a", None],
        "ts": pd.to_datetime(["2026-01-01", "2026-01-02"]),
        "tz": pd.to_datetime(["2026-01-01", "2026-01-02"]).tz_localize("UTC"),
        "d": [pd.Timestamp("2026-01-01").date(), None],
    })
    assert columns_of(chunk) == [("i", "integer"), ("f", "float"), ("b", "boolean"), ("t", "text"),
                                 ("ts", "timestamp"), ("tz", "timestamptz"), ("d", "date")]
    with pytest.raises(SourceError, match=r"^column 'meta' holds dict values, which cannot be stored$"):
        infer_type("meta", pd.Series([None, {"a": 1}], dtype=object))


def fill_version(engine, job) -> tuple[int, VersionWriter, list[int]]:
    """``fill`` the job's whole domain into scores__v1 and key it: what it returned, the writer, the progress."""
    model = load_model(job.model)
    seen: list[int] = []
    domain = Domain(job.domain, engine)
    with transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", job.domain.keys)
        expected = fill(writer, domain.chunks(), Scorer(model, job.domain.keys), job, seen.append)
        writer.finish()
    domain.close()
    return expected, writer, seen


def test_fill_scores_every_chunk_and_reports_progress(engine, write_job):
    write_table(engine, "customers", customers_frame(250))
    job = load_job(write_job(JOB))
    expected, writer, seen = fill_version(engine, job)
    assert expected == writer.rows == 250
    assert seen == [90, 180, 250]
    with engine.connect() as conn:
        assert conn.execute(text('SELECT COUNT(DISTINCT customer_id) FROM scores__v1')).scalar_one() == 250


USERS, ITEMS, K = 20, 15, 3
TOP_JOB = PRODUCT_JOB.replace('keys = ["user_id", "item_id"]', 'keys = ["user_id", "item_id"]\n    chunk_size = 70') \
    + f"""\
    top_k = {K}
    group_by = ["user_id"]
    rank_by = "proba_true"
"""


def test_fill_with_top_k_writes_each_groups_best_rows_ranked(engine, write_job):
    write_users_items(engine, USERS, ITEMS, seed=5)
    job = load_job(write_job(TOP_JOB))
    assert job.output.top_k == K and job.output.group_by == ("user_id",)
    expected, writer, seen = fill_version(engine, job)
    assert expected == writer.rows == USERS * K
    assert seen[-1] == USERS * ITEMS  # progress counts the rows scored, not the rows kept

    with engine.connect() as conn:
        users = pd.read_sql(text("SELECT * FROM users"), conn)
        items = pd.read_sql(text("SELECT * FROM items"), conn)
        got = pd.read_sql(text('SELECT user_id, item_id, proba_true, rank FROM scores__v1 '
                               'ORDER BY user_id, rank'), conn)
    pairs = users.merge(items, how="cross")
    pairs["proba_true"] = load_model(job.model).score(pairs[["x1", "x2", "x3"]])["proba_true"].to_numpy()
    best = pairs.sort_values(["user_id", "proba_true", "item_id"], ascending=[True, False, True])
    best = best.groupby("user_id").head(K).copy()
    best["rank"] = best.groupby("user_id").cumcount() + 1
    want = best[["user_id", "item_id", "proba_true", "rank"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


#: Keys a case- or accent-folding, space-padding collation would take for one another, and a 4-byte character.
LOOKALIKE_KEYS = ["a", "A", "a ", "á", "ä", "ss", "ß", "Ǆ", "ǅ", "😀", "😁", ""]


def test_text_keys_and_values_are_kept_byte_for_byte(engine, write_job):
    """A text key is compared as its exact characters, as PostgreSQL and SQLite compare it: on MariaDB, whose
    default collations fold case and accents and pad spaces, 'a', 'A' and 'a ' would be one key (a run failing
    on a duplicate that is none), and a lookup of 'a' would find 'A'. Any character set of the database."""
    chunk = pd.DataFrame({"code": LOOKALIKE_KEYS, "score": np.arange(len(LOOKALIKE_KEYS), dtype=float),
                          "label": [f"{k}|{k.upper()}" for k in LOOKALIKE_KEYS]})
    with transaction(engine) as conn:
        writer = VersionWriter(dialect_for(engine), conn, "scores__v1", ["code"])
        writer.write(chunk)
        assert writer.finish() == len(LOOKALIKE_KEYS)
    with engine.connect() as conn:
        stored = dict(conn.execute(text("SELECT code, label FROM scores__v1")).all())
        assert stored == dict(zip(chunk.code, chunk.label))
        for i, key in enumerate(LOOKALIKE_KEYS):
            found = conn.execute(text("SELECT score FROM scores__v1 WHERE code = :k"), {"k": key}).scalars().all()
            assert found == [float(i)], key


def test_a_nul_character_is_kept_where_text_holds_it_and_named_on_postgresql(engine):
    """SQLite and MariaDB text holds NUL (a SQLite or MariaDB source can hand one over); PostgreSQL's cannot, and the
    load fails in one line naming the column, where it was psycopg's CharacterNotInRepertoire."""
    chunk = pd.DataFrame({"code": ["a", "b\x00c"], "label": ["x", "y\x00"], "score": [0.5, 0.25]})
    dialect = dialect_for(engine)
    if dialect.name != "postgresql":
        with transaction(engine) as conn:
            writer = VersionWriter(dialect, conn, "scores__v1", ["code"])
            writer.write(chunk)
            writer.finish()
        with engine.connect() as conn:
            assert dict(conn.execute(text("SELECT code, label FROM scores__v1")).all()) == {"a": "x", "b\x00c": "y\x00"}
        return
    with pytest.raises(AuditError, match=r"^code holds the NUL character \(\\x00\), which PostgreSQL text cannot "
                                         r"store: remove it in the domain query \(replace\(code, char\(0\), ''\) on "
                                         r"SQLite, REPLACE\(code, CHAR\(0\), ''\) on MariaDB\)$"):
        with transaction(engine) as conn:
            VersionWriter(dialect, conn, "scores__v1", ["code"]).write(chunk)
    assert not has_table(engine, "scores__v1")
