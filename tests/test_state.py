"""The DDL in sql/ is what the code creates."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from pipeline import state

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, dialect", [("sqlite", sqlite.dialect()), ("postgresql", postgresql.dialect())])
def test_sql_files_match_the_table_definitions(name, dialect):
    written = (ROOT / "sql" / name / "metadata.sql").read_text()
    assert written.split("\n\n", 1)[1] == state.ddl(dialect), "run `make sql` and commit the result"


def test_schema_is_created_once_and_found(engine):
    with engine.begin() as conn:
        assert not state.has_schema(conn)
        state.ensure_schema(conn)
        state.ensure_schema(conn)
        assert state.has_schema(conn)
        assert state.list_tables(conn) == []
