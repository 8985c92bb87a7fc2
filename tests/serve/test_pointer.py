"""The pointer and the serving set: a lookup reaches a small fixed set of versions, however many are kept."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import inspect, text

from pipeline import activate, load_job, rollback, run_job
from pipeline.errors import TableError

from fakemodels import Scripted
from helpers import SCRIPTED_JOB, customers_frame, quoted, view_rows, write_table


def served(engine) -> set[int]:
    """The versions a lookup through the view can reach: the partitions attached to the table's parent on
    PostgreSQL, the version tables the view's SQL names on SQLite, the versions in the serving table on MariaDB."""
    with engine.connect() as conn:
        if engine.dialect.name in ("mysql", "mariadb"):
            serving = conn.execute(text("SELECT DISTINCT serving FROM scores__served")).scalar_one()
            return set(conn.execute(text(f"SELECT DISTINCT model_version FROM {serving}")).scalars())
        if engine.dialect.name == "postgresql":
            rows = conn.execute(text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname LIKE 'scores\\_\\_p%' "
                "AND p.relnamespace = current_schema()::regnamespace AND NOT i.inhdetachpending")).scalars()
            return {int(name.rsplit("__v", 1)[1]) for name in rows}
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE name = 'scores'")).scalar_one()
        return {int(v) for v in re.findall(r'"scores__v(\d+)"', sql)}


def test_the_view_serves_the_active_version_its_rollback_target_and_the_one_before(engine, write_job):
    write_table(engine, "customers", customers_frame(30))
    path = write_job(SCRIPTED_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 100'), model=Scripted())
    for _ in range(8):
        run_job(load_job(path), engine, force=True)
    # MariaDB's serving table holds every retained version: its lookups are primary-key probes however many
    every = set(range(1, 9)) if engine.dialect.name in ("mysql", "mariadb") else None
    assert served(engine) == (every or {8, 7})  # active, and both its rollback target and the version before
    rollback(engine, "scores")
    assert served(engine) == (every or {7, 6, 8}) and set(view_rows(engine).model_version) == {7}
    activate(engine, "scores", 2)  # far back: attached again, in O(1)
    assert served(engine) == (every or {2, 1, 7}) and set(view_rows(engine).model_version) == {2}
    assert len(view_rows(engine)) == 30
    activate(engine, "scores", 8)
    assert served(engine) == (every or {8, 7, 2}) and set(view_rows(engine).model_version) == {8}


def test_aliases_share_the_serving_set_each_through_its_own_pointer(engine, write_job):
    write_table(engine, "customers", customers_frame(30))
    path = write_job(SCRIPTED_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 100'), model=Scripted())
    for _ in range(6):
        run_job(load_job(path), engine, force=True)
    activate(engine, "scores", 3, alias="challenger")
    assert set(view_rows(engine, "scores__challenger").model_version) == {3}
    assert set(view_rows(engine).model_version) == {6}
    if engine.dialect.name == "postgresql":  # one parent holds what both aliases serve
        assert served(engine) == {6, 5, 3, 2}
    rollback(engine, "scores", alias="challenger")
    assert set(view_rows(engine, "scores__challenger").model_version) == {2}
    assert set(view_rows(engine).model_version) == {6}


def test_an_alias_cannot_take_the_name_of_a_table_of_the_pipeline(engine, write_job):
    write_table(engine, "customers", customers_frame(30))
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted())), engine)
    for alias in ("v1", "v12", "p3f8ed2", "gate", "ab", "default"):
        with pytest.raises(TableError, match=f"alias '{alias}'"):
            activate(engine, "scores", 1, alias=alias)
    assert set(view_rows(engine).model_version) == {1}


def test_a_version_table_dropped_by_hand_is_never_served(engine, write_job):
    """A DBA dropped scores__v2 while version 3 was active. On SQLite `pipeline activate scores 2` said "version 2
    is active" and every read of the view failed (no such table: main.scores__v2); on PostgreSQL activating 3,
    whose rollback target 2 was, failed with "relation scores__v2 does not exist"; `pipeline rollback` went for 2."""
    write_table(engine, "customers", customers_frame(30))
    path = write_job(SCRIPTED_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 100'), model=Scripted())
    for _ in range(3):
        run_job(load_job(path), engine, force=True)
    with engine.begin() as conn:  # on MariaDB a served version's table is a view of its rows in the serving table
        kind = "VIEW" if "scores__v2" in inspect(conn).get_view_names() else "TABLE"
        conn.execute(text(f"DROP {kind} {quoted(engine, 'scores__v2')}"))
    still_served = engine.dialect.name in ("mysql", "mariadb")  # the serving table holds version 2's rows
    rollback(engine, "scores", 1)
    if not still_served:
        with pytest.raises(TableError, match="scores__v2 is gone"):
            activate(engine, "scores", 2)
        assert set(view_rows(engine).model_version) == {1}
    activate(engine, "scores", 3)
    assert set(view_rows(engine).model_version) == {3}
    assert rollback(engine, "scores").to_version == (2 if still_served else 1)


def test_activating_the_active_version_again_moves_nothing_and_records_no_flip(engine, write_job):
    """`pipeline activate scores 2` with 2 active logged "pointer moved from version 2 to 2", recorded a 2 -> 2 flip
    in the history and made the pointer as new as a real flip; it now only writes the version's views again (what
    mends a view dropped by hand) and says the version was active already."""
    from pipeline.database import state
    from pipeline.serve import catalog

    write_table(engine, "customers", customers_frame(30))
    path = write_job(SCRIPTED_JOB, model=Scripted())
    for _ in range(2):
        run_job(load_job(path), engine, force=True)
    with engine.connect() as conn:
        before = state.get_pointer(conn, "scores", "champion")
    flips = catalog.history(engine, "scores")
    again = activate(engine, "scores", 2)
    assert (again.from_version, again.to_version) == (2, 2)
    assert catalog.history(engine, "scores") == flips
    with engine.connect() as conn:
        assert state.get_pointer(conn, "scores", "champion") == before
    assert set(view_rows(engine).model_version) == {2} and len(view_rows(engine)) == 30
