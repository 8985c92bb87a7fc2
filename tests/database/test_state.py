"""The DDL in sql/ is what the code creates."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.mysql import mariadbconnector

from pipeline.database import schema, state

from helpers import quoted

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("name, dialect", [("sqlite", sqlite.dialect()), ("postgresql", postgresql.dialect()),
                                           ("mariadb", mariadbconnector.dialect())])
def test_sql_files_match_the_table_definitions(name, dialect):
    written = (ROOT / "sql" / name / "metadata.sql").read_text()
    assert written.split("\n\n", 1)[1] == schema.ddl(dialect), "run `make sql` and commit the result"


def test_schema_is_created_once_and_found(engine):
    with engine.begin() as conn:
        assert not schema.has_schema(conn)
        schema.ensure_schema(conn)
        schema.ensure_schema(conn)
        assert schema.has_schema(conn)
        assert state.list_tables(conn) == []


def test_a_database_made_before_model_source_gains_the_column_and_keeps_its_rows(engine):
    with engine.begin() as conn:
        schema.ensure_schema(conn)
        conn.execute(text("ALTER TABLE pipeline_versions DROP COLUMN model_source"))  # as an earlier release made it
        keys = quoted(engine, "keys")
        conn.execute(text(f"INSERT INTO pipeline_versions (table_name, version, job, status, {keys}, model_path, "
                          "model_sha256, started_at) VALUES ('scores', 1, 'scores', 'ready', '[\"id\"]', "
                          "'models/m.joblib', :sha, :now)"), dict(sha="0" * 64, now=state.utcnow()))
    with engine.begin() as conn:
        schema.ensure_schema(conn)
        state.insert_version(conn, table="scores", version=2, job="scores", logical_date=None, keys=["id"],
                             model_path="models:/churn/3", model_sha256="1" * 64, model_class="x",
                             started_at=state.utcnow(), model_source='{"name": "churn", "version": 3}')
    with engine.connect() as conn:
        old, new = state.list_versions(conn, "scores")
    assert (old.model_path, old.model_source) == ("models/m.joblib", None)
    assert new.model_source == {"name": "churn", "version": 3}


def test_read_commands_upgrade_a_database_an_older_release_made(engine, db_url):
    from click.testing import CliRunner

    from pipeline.cli import main

    with engine.begin() as conn:
        schema.ensure_schema(conn)
        conn.execute(text("ALTER TABLE pipeline_versions DROP COLUMN model_source"))
        keys = quoted(engine, "keys")
        conn.execute(text(f"INSERT INTO pipeline_versions (table_name, version, job, status, {keys}, model_path, "
                          "model_sha256, started_at) VALUES ('scores', 1, 'scores', 'ready', '[\"id\"]', "
                          "'models/m.joblib', :sha, :now)"), dict(sha="0" * 64, now=state.utcnow()))
    for command in (["versions", "scores"], ["status"]):
        out = CliRunner().invoke(main, [*command, "--db", db_url])
        assert out.exit_code == 0, out.output
    assert " m.joblib " in CliRunner().invoke(main, ["versions", "scores", "--db", db_url]).output


def test_a_read_command_adds_a_table_an_older_release_did_not_make(engine, db_url):
    from click.testing import CliRunner

    from pipeline.cli import main

    with engine.begin() as conn:
        schema.ensure_schema(conn)
        conn.execute(text("DROP TABLE pipeline_splits"))  # made before A/B splits existed
    out = CliRunner().invoke(main, ["status", "--db", db_url])
    assert out.exit_code == 0, out.output
    with engine.connect() as conn:
        assert conn.dialect.has_table(conn, "pipeline_splits")
        assert schema.missing_columns(conn) == []


@pytest.mark.parametrize("version", [0, 2**31, 10**20])
def test_a_version_no_version_column_holds_is_not_found(engine, version):
    """`pipeline diff scores 1 99999999999999999999` said "unexpected OverflowError" on SQLite and "integer out of
    range" on PostgreSQL: no such version, rather."""
    with engine.begin() as conn:
        schema.ensure_schema(conn)
        assert state.get_version(conn, "scores", version) is None
