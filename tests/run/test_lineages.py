"""Lineages (PostgreSQL, jobs with ``[domain] changed``): a top-up writes only what changed into the table its full
run began, each version is the range of rows that holds its number, and every version still reads as exactly the
rows a full run would give it, through rollbacks, failed top-ups, dead runs and retention."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline.cli import main
from pipeline.database import state
from pipeline.database.dialects import dialect_for

from helpers import CHANGES_JOB, change, customers_frame, delete, insert, version_rows, view_rows, write_source

KEYS = 1000
#: A job whose SQL audit fails while table ``audit_fail`` lists a key of the version.
AUDITED_JOB = CHANGES_JOB + """
    [[audits.sql]]
    name = "no_listed_key"
    query = "SELECT customer_id FROM {table} WHERE customer_id IN (SELECT customer_id FROM audit_fail)"
"""


def relations(engine: Engine) -> dict[str, str]:
    """The pipeline's relations of ``scores`` in the schema: name -> kind (r table, v view, p partitioned)."""
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT relname, relkind FROM pg_class WHERE relnamespace = "
                                      "current_schema()::regnamespace AND relname LIKE 'scores%' "
                                      "AND relkind IN ('r', 'v', 'p')")).all())


def first_run(engine: Engine, db_url: str, tmp_path, write_job, body: str = CHANGES_JOB, keys: int = KEYS) -> None:
    """A source of ``keys`` customers, the job ``body`` and its first run (lineage 1), ready for top-ups."""
    write_source(engine, customers_frame(keys))
    write_job(body)
    invoke(db_url, tmp_path, "run", "scores")
    top_up_ready(engine)


def top_up_ready(engine: Engine) -> None:
    """Set the source's stamps back an hour: the next top-up lists only what changes after now."""
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET updated_at = now() - interval '1 hour'"))


def top_up(db_url: str, tmp_path, engine: Engine) -> str:
    """A top-up, then :func:`top_up_ready` (``:since`` is the watermark to the second: rows changed in its second
    would be listed again by the next)."""
    out = invoke(db_url, tmp_path, "run", "scores", "--incremental")
    top_up_ready(engine)
    return out


def count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def invoke(db_url: str, tmp_path, *args: str, code: int = 0) -> str:
    out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), *args, "--db", db_url])
    assert out.exit_code == code, out.output
    return out.output


def test_top_ups_write_only_their_changes_and_every_version_reads_as_a_full_run_would(pg, postgresql_url,
                                                                                    write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job)
    full_one = version_rows(engine, 1)
    change(engine, "customer_id <= 10")
    new = customers_frame(20, seed=9)
    new["customer_id"] += KEYS
    insert(engine, new)
    delete(engine, "customer_id IN (3, 500)")
    assert "1018 rows: 29 scored, 989 kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    change(engine, "customer_id BETWEEN 5 AND 14")
    assert "1018 rows: 10 scored, 1008 kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    # one table holds the three versions: the first run's rows and what each top-up changed, not three copies
    found = relations(engine)
    assert [kind for name, kind in found.items() if name.startswith("scores__p")] == ["p"]
    assert {name: kind for name, kind in found.items() if not name.startswith("scores__p")} == {
        "scores": "v", "scores__gate": "r", "scores__l1": "r", "scores__l1__log": "r", "scores__v1": "v",
        "scores__v2": "v", "scores__v3": "v"}
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == 1000 + 29 + 10
    with engine.connect() as conn:
        assert {v.version: v.lineage for v in state.list_versions(conn, "scores")} == {1: 1, 2: 1, 3: 1}
    pd.testing.assert_frame_equal(version_rows(engine, 1), full_one, check_exact=True)  # older versions keep theirs
    topped_two, topped_three = version_rows(engine, 2), version_rows(engine, 3)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped_three, version_rows(engine, 4), check_exact=True)  # bit for bit
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"),
                                  version_rows(engine, 4).drop(columns="model_version", errors="ignore"),
                                  check_exact=True)
    assert "scores__l4" in relations(engine)  # a full run begins a lineage of its own
    invoke(postgresql_url, tmp_path, "activate", "scores", "2")  # back to the first lineage: it is attached again
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"),
                                  topped_two.drop(columns="model_version", errors="ignore"), check_exact=True)
    assert count(engine, "SELECT COUNT(DISTINCT model_version) FROM scores") == 1


def test_a_top_up_after_a_rollback_in_the_lineage_is_a_full_run_that_says_why(pg, postgresql_url, write_job,
                                                                              tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job)
    change(engine, "customer_id <= 10")
    top_up(postgresql_url, tmp_path, engine)
    two = version_rows(engine, 2)
    assert "rolled back from version 2 to 1" in invoke(postgresql_url, tmp_path, "rollback", "scores")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"),
                                  version_rows(engine, 1).drop(columns="model_version", errors="ignore"))
    change(engine, "customer_id BETWEEN 20 AND 29")
    out = top_up(postgresql_url, tmp_path, engine)
    assert ("a full run, not a top-up: version 2, newer than the active version 1 in its lineage, is ready (a "
            "rollback, or a run that did not activate it, left it)") in out
    assert "version 3 is active (1000 rows," in out and "scored" not in out
    pd.testing.assert_frame_equal(version_rows(engine, 2), two, check_exact=True)  # the version rolled back from
    change(engine, "customer_id BETWEEN 30 AND 39")
    assert "10 scored, 990 kept in lineage 3" in top_up(postgresql_url, tmp_path, engine)
    with engine.connect() as conn:
        assert [(v.version, v.lineage) for v in state.list_versions(conn, "scores")] == [(1, 1), (2, 1), (3, 3), (4, 3)]


def test_a_top_up_after_one_that_did_not_activate_its_version_is_a_full_run(pg, postgresql_url, write_job,
                                                                            tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job)
    change(engine, "customer_id <= 10")
    assert "version 2 is ready" in invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", "--no-activate")
    change(engine, "customer_id BETWEEN 20 AND 29")
    out = top_up(postgresql_url, tmp_path, engine)
    assert ("a full run, not a top-up: version 2, newer than the active version 1 in its lineage, is ready (a "
            "rollback, or a run that did not activate it, left it)") in out
    assert "version 3 is active (1000 rows," in out


def test_a_top_up_that_failed_its_audits_is_undone_by_the_next(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    write_source(engine, customers_frame(KEYS))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE audit_fail (customer_id bigint)"))
    write_job(AUDITED_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    change(engine, "customer_id <= 10")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_fail VALUES (4)"))
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
    assert "no_listed_key" in out
    with engine.connect() as conn:
        assert [(v.version, v.status) for v in state.list_versions(conn, "scores")] == [(1, "ready"), (2, "failed")]
    # the failed version's rows sit in the lineage, past the active version's range: the view never sees them
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS + 10
    assert count(engine, "SELECT COUNT(*) FROM scores WHERE model_version = 1") == KEYS
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_fail"))
    change(engine, "customer_id BETWEEN 8 AND 12")  # 8-10 changed by both, 11-12 only now
    assert "1000 rows: 12 scored, 988 kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS + 12  # the failed top-up's rows are gone
    assert "scores__v2" not in relations(engine)
    topped = version_rows(engine, 3)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 4), check_exact=True)
    assert "cleaned failed none" in invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "5")


def test_retention_frees_the_rows_only_retired_versions_saw_and_drops_a_lineage_with_its_last(
        pg, postgresql_url, write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job)
    for low in (1, 101, 201):
        change(engine, f"customer_id BETWEEN {low} AND {low + 99}")
        top_up(postgresql_url, tmp_path, engine)
    kept = {v: version_rows(engine, v) for v in (3, 4)}
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS + 300
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "2")
    assert "retired 1, 2" in out
    # version 1's rows closed by 2, and 2's closed by 3, are seen by no version kept: 200 rows freed
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS + 100
    for v, rows in kept.items():
        pd.testing.assert_frame_equal(version_rows(engine, v), rows, check_exact=True)
    assert not {"scores__v1", "scores__v2"} & set(relations(engine))
    assert "rolled back from version 4 to 3" in invoke(postgresql_url, tmp_path, "rollback", "scores")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"),
                                  kept[3].drop(columns="model_version", errors="ignore"), check_exact=True)
    invoke(postgresql_url, tmp_path, "activate", "scores", "4")
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    change(engine, "customer_id <= 5")
    top_up(postgresql_url, tmp_path, engine)
    assert "retired 3, 4" in invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    assert not {"scores__l1", "scores__l1__log"} & set(relations(engine))  # its last version retired
    assert count(engine, "SELECT COUNT(*) FROM scores WHERE model_version = 6") == KEYS


def test_a_key_listed_twice_by_changed_fails_the_top_up_in_one_line_and_changes_nothing(pg, postgresql_url,
                                                                                        write_job, tmp_path):
    engine = pg
    write_source(engine, customers_frame(KEYS))
    write_job(CHANGES_JOB.replace("WHERE updated_at >= :since", "WHERE updated_at >= :since UNION ALL "
                                  "SELECT customer_id, x1, x2, x3 FROM customers WHERE customer_id = 7 "
                                  "AND updated_at >= :since"))
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    before = view_rows(engine)
    change(engine, "customer_id <= 10")
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
    assert "more than once" in out and "customer_id=7" in out.replace(" ", ""), out
    assert "Traceback" not in out
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS
    pd.testing.assert_frame_equal(view_rows(engine), before, check_exact=True)


def test_a_dask_full_run_begins_a_lineage_that_local_top_ups_add_to(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    write_source(engine, customers_frame(KEYS))
    write_job(CHANGES_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores", "--executor", "dask", "--workers", "1")
    top_up_ready(engine)
    change(engine, "customer_id <= 10")
    assert "10 scored, 990 kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, 2)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 3), check_exact=True)
    with engine.connect() as conn:
        assert [(v.version, v.lineage) for v in state.list_versions(conn, "scores")] == [(1, 1), (2, 1), (3, 3)]


@pytest.mark.parametrize("column", ["valid_from", "changed_in"])
def test_a_domain_column_named_like_a_lineage_column_is_refused_before_anything_is_built(
        pg, postgresql_url, write_job, tmp_path, column):
    engine = pg
    frame = customers_frame(KEYS)
    frame[column] = 1
    write_source(engine, frame)
    write_job(CHANGES_JOB.replace("x3 FROM customers", f"x3, {column} FROM customers")
              .replace('table = "scores"', f'table = "scores"\ninclude = ["{column}"]'))
    out = invoke(postgresql_url, tmp_path, "run", "scores", code=1)
    assert out.startswith(f"Error: scores: domain column(s) {column} have the name of a column the versions' "
                          "lineage keeps"), out
    with engine.connect() as conn:
        assert state.list_versions(conn, "scores") == []


def test_gc_keeps_a_version_that_a_running_top_up_builds_on(pg, postgresql_url, write_job, tmp_path):
    """gc in another process while a top-up of the same lineage runs: the ready versions below it stay (the top-up
    may open the rows they closed again), and a top-up whose base was retired as it began fails in one line."""
    from pipeline.serve.retention import gc

    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job)
    for low in (1, 11):
        change(engine, f"customer_id BETWEEN {low} AND {low + 9}")
        top_up(postgresql_url, tmp_path, engine)
    with engine.begin() as conn:  # as a top-up's run records its version while it scores
        state.insert_version(conn, table="scores", version=4, job="scores", logical_date=None, keys=["customer_id"],
                             model_path="m", model_sha256="0" * 64, model_class="m", started_at=state.utcnow(),
                             lineage=1)
    with dialect_for(engine).run_lock(engine, "scores"):  # the run is alive: gc does not reap it
        done = gc(engine, "scores", keep=1)
    assert done.retired == [] and set(done.kept) == {1}, done
    assert "a top-up in its lineage is running" in done.kept[1]
    assert "scores__v1" in relations(engine)
