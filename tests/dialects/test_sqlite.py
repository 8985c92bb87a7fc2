"""SQLite specifics: WAL, transactional DDL, and index use through the stable view."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import text

from conftest import CUSTOMERS_JOB, customers_frame, write_table
from pipeline import load_job, run_job
from pipeline.db import make_engine
from pipeline.dialects import dialect_for
from pipeline.transactions import transaction


@pytest.fixture
def sqlite_engine(sqlite_url):
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_connections_use_wal(sqlite_engine):
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_ddl_rolls_back_with_the_transaction(sqlite_engine):
    dialect = dialect_for(sqlite_engine)
    with pytest.raises(RuntimeError), transaction(sqlite_engine) as conn:
        dialect.create_table(conn, "t__v1", [("k", "integer"), ("p", "float")])
        dialect.load(conn, "t__v1", [("k", "integer"), ("p", "float")], pd.DataFrame({"k": [1], "p": [0.5]}))
        raise RuntimeError("crash mid-load")
    with sqlite_engine.connect() as conn:
        assert not sqlite_engine.dialect.has_table(conn, "t__v1")


def test_point_lookup_through_the_view_uses_the_key_index(sqlite_engine, write_job):
    write_table(sqlite_engine, "customers", customers_frame(100))
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), sqlite_engine, force=True)
    run_job(load_job(path), sqlite_engine, force=True)
    with sqlite_engine.connect() as conn:
        # a real statement first: EXPLAIN alone does not notice a schema changed by another connection
        row = conn.execute(text("SELECT customer_id, model_version FROM scores WHERE customer_id = 42")).one()
        assert tuple(row) == (42, 2)
        plan = " | ".join(r[-1] for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT * FROM scores WHERE customer_id = 42"))
        assert "USING INDEX scores__v2__key (customer_id=?)" in plan
        assert "USING INDEX scores__v1__key (customer_id=?)" in plan
        assert "SCAN" not in plan
