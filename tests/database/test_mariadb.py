"""MariaDB as a target: one serving table per column set behind a gate, each version stored once."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from pipeline import activate, load_job, rollback, run_job
from pipeline.database.engines import make_engine
from pipeline.serve.retention import gc

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, version_rows, view_rows, write_table

pytestmark = pytest.mark.mysql
ROWS = 300
JOB = SCRIPTED_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 100')


@pytest.fixture
def engine(mysql_url):
    engine = make_engine(mysql_url)
    write_table(engine, "customers", customers_frame(ROWS))
    yield engine
    engine.dispose()


def kinds(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                                      "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'scores%'")).all())


def test_a_served_version_is_stored_once_and_read_the_same(engine, write_job):
    for scale in (1.0, 2.0, 3.0):
        path = write_job(JOB, model=Scripted(scale=scale))
        run_job(load_job(path), engine, force=True)
    found = kinds(engine)
    serving = next(name for name in found if name.startswith("scores__p"))
    assert {found[f"scores__v{v}"] for v in (1, 2, 3)} == {"VIEW"} and found[serving] == "BASE TABLE"
    with engine.connect() as conn:
        counts = dict(conn.execute(text(f"SELECT model_version, COUNT(*) FROM {serving} GROUP BY 1")).all())
        plan = conn.execute(text("EXPLAIN SELECT prediction FROM scores WHERE customer_id = 42")).all()
    assert counts == {1: ROWS, 2: ROWS, 3: ROWS}
    assert [(row[2], row[3]) for row in plan] == [("g", "const"), ("s", "const")]  # two primary-key probes
    one = version_rows(engine, 1)
    rollback(engine, "scores", to=1)  # any retained version: one gate UPDATE
    served = view_rows(engine)
    assert set(served.model_version) == {1}
    assert served.drop(columns="model_version").equals(one)
    activate(engine, "scores", 2)
    activate(engine, "scores", 3)  # served: 3, its rollback target and the version before, 2
    assert gc(engine, "scores", keep=1).retired == [1]
    found = kinds(engine)
    assert "scores__v1" not in found and {found["scores__v2"], found["scores__v3"]} == {"VIEW"}
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT COUNT(*) FROM {serving} WHERE model_version = 1")).scalar_one() == 0


def test_a_staging_table_an_old_transaction_may_read_stays_until_it_ends(engine, write_job):
    """A transaction open since before the publish (a dump that listed the tables) keeps the new version's
    staging table a table; the next publish or gc makes it a view once the transaction is gone."""
    path = write_job(JOB, model=Scripted())
    run_job(load_job(path), engine)
    holder = engine.connect().execution_options(isolation_level="REPEATABLE READ")  # as mariadb-dump's
    try:
        holder.execute(text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
        holder.execute(text("SELECT COUNT(*) FROM scores")).scalar_one()
        time.sleep(2.5)  # older than OLD_TRANSACTION, counted in whole seconds
        run_job(load_job(path), engine, force=True)
        assert kinds(engine)["scores__v2"] == "BASE TABLE"
        assert set(view_rows(engine).model_version) == {2}  # published all the same
    finally:
        holder.rollback()
        holder.close()
    time.sleep(0.2)  # information_schema.INNODB_TRX is a cache InnoDB refreshes at most every 100 ms
    gc(engine, "scores", keep=100)
    assert kinds(engine)["scores__v2"] == "VIEW"
    assert len(version_rows(engine, 2)) == ROWS


def test_a_text_key_too_long_for_the_key_fails_the_run_instead_of_being_cut(engine, mysql_url, write_job, tmp_path):
    """LOAD DATA LOCAL takes strict mode's errors as warnings: a key longer than its VARCHAR was stored cut short,
    under another key. The run fails naming it, and nothing is published."""
    from click.testing import CliRunner

    from pipeline.cli import main

    write_job(JOB, model=Scripted())
    run_job(load_job(tmp_path / "jobs" / "scores.toml"), engine)
    frame = customers_frame(20).assign(customer_id=[f"k{i}" for i in range(19)] + ["k" * 800])
    write_table(engine, "customers", frame)
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "run", "scores", "--db", mysql_url])
    assert out.exit_code == 1
    assert ("Error: MariaDB would not store a value of scores__v2 as given (Data truncated for column "
            "'customer_id' at row 20, counting rows within a chunk): a text key of more than 767 characters") \
        in out.output, out.output
    assert "Traceback" not in out.output
    assert set(view_rows(engine).customer_id) == set(range(1, ROWS + 1))  # version 1 still serves, whole


def test_a_url_written_for_another_driver_runs_with_its_charset(engine, mysql_url, write_job, tmp_path):
    """``mysql+pymysql://...?charset=utf8mb4`` is SQLAlchemy's advice for PyMySQL and mysqlclient; the pipeline reads
    every MySQL URL with MariaDB Connector/Python, which always speaks utf8mb4 and has no ``charset`` argument: the
    run failed with ``unexpected TypeError: 'charset' is an invalid keyword argument for connect()``. A parameter
    the connector does not take at all fails in one line that names it."""
    from click.testing import CliRunner

    from pipeline.cli import main

    rest = mysql_url.split("://", 1)[1]
    other = make_engine(f"mysql+pymysql://{rest}{'&' if '?' in rest else '?'}charset=utf8mb4&use_unicode=1")
    try:
        write_table(other, "customers", customers_frame(20).assign(customer_id=[f"ü{i}" for i in range(20)]))
        result = run_job(load_job(write_job(JOB, model=Scripted())), other)
        assert (result.version, result.rows) == (1, 20)
        assert sorted(view_rows(other).customer_id) == sorted(f"ü{i}" for i in range(20))
    finally:
        other.dispose()
    refused = f"{mysql_url}?ssl_disabled=1"  # PyMySQL's
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "status", "--db", refused])
    assert out.exit_code == 1 and "Traceback" not in out.output, out.output
    assert out.output.startswith("Error: cannot connect to mysql+mariadbconnector://"), out.output
    assert out.output.count("\n") == 1, out.output
    assert "'ssl_disabled' is an invalid keyword argument" in out.output and "unexpected" not in out.output


def test_a_url_without_a_database_is_refused_as_a_target_and_read_as_a_source(engine, mysql_url, write_job,
                                                                                tmp_path):
    """``mariadb://user@host:3306`` names a server, not a database: every command on it failed with ``unexpected
    AssertionError`` (SQLAlchemy's table lookup needs a database). As a target it is refused in one line; as a
    ``source`` it is fine, for queries that name their tables' database."""
    from click.testing import CliRunner
    from sqlalchemy.engine import make_url

    from pipeline.cli import main

    database = make_url(mysql_url).database
    server = mysql_url.split("?")[0].rsplit("/", 1)[0]
    for command in (["status"], ["run", "scores"], ["versions", "scores"], ["runs"], ["jobs"]):
        write_job(JOB, model=Scripted())
        out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), *command, "--db", server])
        assert out.exit_code == 1 and out.output.count("\n") == 1 and "Traceback" not in out.output, out.output
        assert out.output.startswith(f"Error: {server.replace('://', '+mariadbconnector://')} names no database"), \
            out.output
    body = JOB.replace("FROM customers", f"FROM {database}.customers").replace(
        "[domain]", f'[domain]\nsource = "{server}"')
    job = load_job(write_job(body, model=Scripted()))
    target = make_engine(f"sqlite:///{tmp_path / 'predictions.db'}")
    try:
        assert run_job(job, target).rows == ROWS
        assert len(view_rows(target)) == ROWS
    finally:
        target.dispose()
