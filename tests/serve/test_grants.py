"""``[output] grant_select``: every view the pipeline makes for a table is readable by the job's roles after every
flip, with no grant on a version table or a bookkeeping table. PostgreSQL, with real roles: the pipeline runs as a
writer that owns only its schema, and the reader has USAGE on that schema and SELECT through the grant alone."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from pipeline import activate, load_job, rollback, run_job
from pipeline.cli import main
from pipeline.database.engines import make_engine
from pipeline.errors import JobFileError
from pipeline.serve.split import set_split

from helpers import CUSTOMERS_JOB, customers_frame, write_table

VIEWS = ("scores", "scores__challenger", "scores__ab", "scores__default")


def granted_job(roles: str, default: str = "default = { proba_true = 0.1 }") -> str:
    return CUSTOMERS_JOB.replace('table = "scores"', f'table = "scores"\n{default}\ngrant_select = [{roles}]')


class Roles:
    """A writer that owns the test's fresh schema and nothing else, and a reader with USAGE on it; both LOGIN
    roles, named for the test since roles belong to the whole server."""

    def __init__(self, url: str, admin: Engine) -> None:
        tag = uuid.uuid4().hex[:10]
        self.base, self.admin, self.writer, self.reader = url, admin, f"w_{tag}", f"r_{tag}"
        with admin.begin() as conn:
            schema, database = conn.execute(text("SELECT current_schema(), current_database()")).one()
            for role in (self.writer, self.reader):
                conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
                conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"'))
            conn.execute(text(f'ALTER SCHEMA "{schema}" OWNER TO "{self.writer}"'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{self.reader}"'))

    def url(self, role: str) -> str:
        """The test's URL (its search_path included) as ``role``."""
        return make_url(self.base).set(username=role).render_as_string(hide_password=False)

    def drop(self) -> None:
        """Give what the roles own back to the test's own user (who drops the schema), then drop them."""
        with self.admin.begin() as conn:
            for role in (self.writer, self.reader):
                conn.execute(text(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER'))
                conn.execute(text(f'DROP OWNED BY "{role}"'))
                conn.execute(text(f'DROP ROLE "{role}"'))


@pytest.fixture
def roles(postgresql_url: str) -> Iterator[Roles]:
    admin = make_engine(postgresql_url)
    made = Roles(postgresql_url, admin)
    try:
        yield made
    finally:
        made.drop()
        admin.dispose()


@pytest.fixture
def writer(roles: Roles) -> Iterator[Engine]:
    engine = make_engine(roles.url(roles.writer))
    yield engine
    engine.dispose()


@pytest.fixture
def reader(roles: Roles) -> Iterator[Engine]:
    engine = make_engine(roles.url(roles.reader))
    yield engine
    engine.dispose()


def readable(writer: Engine, reader: Engine) -> dict[str, set[int]]:
    """The versions the reader sees through each view the table has now (None: the default row)."""
    with writer.connect() as conn:
        views = [v for v in VIEWS if conn.execute(text("SELECT to_regclass(:v)"), {"v": v}).scalar() is not None]
    found = {}
    with reader.connect() as conn:
        for view in views:
            column = "CAST(proba_true AS float)" if view.endswith("__default") else "model_version"
            found[view] = set(conn.execute(text(f"SELECT DISTINCT {column} FROM {view}")).scalars())
    return found


def refused(reader: Engine, relation: str) -> bool:
    with reader.connect() as conn:
        try:
            conn.execute(text(f"SELECT 1 FROM {relation} LIMIT 1")).all()
        except Exception as exc:  # noqa: BLE001 - the message is what is checked
            return "permission denied" in str(exc)
    return False


@pytest.mark.postgres
def test_the_reader_reads_every_view_through_the_grant_alone_after_every_flip(roles, writer, reader, write_job,
                                                                             tmp_path, monkeypatch):
    write_table(writer, "customers", customers_frame(100))
    proba = write_job(granted_job(f'"{roles.reader}"'))
    labels = write_job(granted_job(f'"{roles.reader}"', default="").replace('method = "predict_proba"',
                                                                          'method = "predict"'), name="labels")
    for _ in range(3):
        run_job(load_job(proba), writer, force=True)
    assert readable(writer, reader) == {"scores": {3}, "scores__default": {0.1}}
    rollback(writer, "scores")
    activate(writer, "scores", 1, alias="challenger")  # a view made for the first time, by no run
    set_split(writer, "scores", alias="challenger", percent=20)
    assert readable(writer, reader) == {"scores": {2}, "scores__challenger": {1}, "scores__ab": {1, 2},
                                        "scores__default": {0.1}}
    activate(writer, "scores", 3)
    set_split(writer, "scores", alias="challenger", percent=60)  # the split view made again
    assert readable(writer, reader)["scores__ab"] == {1, 3}

    run_job(load_job(labels), writer, force=True)  # other columns: the view is made anew, the split left out
    with reader.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM scores WHERE prediction IS NOT NULL")).scalar_one() == 100
    activate(writer, "scores", 3)  # back across the column change: made anew again
    set_split(writer, "scores", alias="challenger", percent=50)
    assert readable(writer, reader) == {"scores": {3}, "scores__challenger": {1}, "scores__ab": {1, 3},
                                        "scores__default": {0.1}}

    # the roles are recorded: a flip by a command with no job at hand (only --db) grants them again
    with writer.begin() as conn:
        conn.execute(text(f'REVOKE SELECT ON scores, scores__challenger FROM "{roles.reader}"'))
    monkeypatch.chdir(tmp_path / "jobs" / "models")  # no jobs/ here
    for args in (["rollback", "scores"], ["activate", "scores", "2", "--alias", "challenger"]):
        result = CliRunner().invoke(main, ["--db", roles.url(roles.writer), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert readable(writer, reader)["scores"] == {2} and readable(writer, reader)["scores__challenger"] == {2}

    with writer.connect() as conn:
        tables = list(conn.execute(text("SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
                                        "AND relnamespace = current_schema()::regnamespace ORDER BY 1")).scalars())
    assert "scores__v1" in tables and "pipeline_versions" in tables and "scores__gate" in tables
    for table in tables:
        assert refused(reader, table), f"the reader can read {table}"


@pytest.mark.postgres
def test_a_role_that_does_not_exist_fails_the_run_before_it_scores(roles, writer, write_job):
    write_table(writer, "customers", customers_frame(20))
    path = write_job(granted_job(f'"{roles.reader}", "no_such_role_{roles.reader}"'))
    with pytest.raises(JobFileError, match=rf"output\.grant_select: no role no_such_role_{roles.reader} in "):
        run_job(load_job(path), writer, force=True)
    with writer.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM pipeline_versions")).scalar_one() == 0


def test_sqlite_accepts_grant_select_and_ignores_it(sqlite_url, write_job):
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(20))
    run_job(load_job(write_job(granted_job('"app_reader"'))), engine, force=True)
    activate(engine, "scores", 1, alias="challenger")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM scores__challenger")).scalar_one() == 20
        assert list(conn.execute(text("SELECT role FROM pipeline_grants")).scalars()) == ["app_reader"]
    engine.dispose()
