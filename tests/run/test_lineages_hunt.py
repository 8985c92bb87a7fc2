"""Adversarial checks of lineages (PostgreSQL, ``[domain] changed``): composite and text keys, columns passed
through, model changes, retention and crashes; every version must read as the rows a full run of the same data
gives, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from run.test_lineages import count, first_run, invoke, relations, top_up, top_up_ready
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline.cli import main
from pipeline.database import state

from helpers import CHANGES_JOB, change, customers_frame, insert, version_rows, view_rows, write_source

KEYS = 300
REGIONS = ["north", "Süd ost", "o'brien \"q\"", "日本", " trailing "]
#: keys (region, customer_id), region text with spaces, quotes and unicode; customer_id repeats across regions.
REGION_JOB = CHANGES_JOB.replace('keys = ["customer_id"]', 'keys = ["region", "customer_id"]').replace(
    "SELECT customer_id, x1", "SELECT region, customer_id, x1").replace(
    "SELECT customer_id FROM customers_gone", "SELECT region, customer_id FROM customers_gone")
ORDER = "region COLLATE \"C\", customer_id"


def region_frame(n: int = KEYS, seed: int = 0) -> pd.DataFrame:
    frame = customers_frame(n, seed=seed)
    frame.insert(0, "region", [REGIONS[i % len(REGIONS)] for i in range(n)])
    frame["customer_id"] = frame["customer_id"] // 3  # each id in several regions
    return frame


def write_region_source(engine: Engine, frame: pd.DataFrame) -> None:
    write_source(engine, frame)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE customers_gone ADD COLUMN region text"))


def rows(engine: Engine, version: int) -> pd.DataFrame:
    return version_rows(engine, version, order=ORDER)


def served(engine: Engine) -> pd.DataFrame:
    with engine.connect() as conn:
        frame = pd.read_sql(text(f"SELECT * FROM scores ORDER BY {ORDER}"), conn)
    return frame.drop(columns="model_version")


def full_equals(engine: Engine, url: str, tmp_path, version: int) -> None:
    """A full run of the data as it is now gives ``version``'s rows bit for bit (then rolls back to it)."""
    topped = rows(engine, version)
    out = invoke(url, tmp_path, "run", "scores", "--full", "--force", "--no-activate")
    with engine.connect() as conn:
        newest = max(v.version for v in state.list_versions(conn, "scores"))
    assert f"version {newest}" in out, out
    pd.testing.assert_frame_equal(topped, rows(engine, newest), check_exact=True)


def test_composite_text_keys_through_top_ups_rollback_and_gc(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    write_region_source(engine, region_frame())
    write_job(REGION_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    one = rows(engine, 1)
    change(engine, "region IN ('日本', ' trailing ') AND customer_id < 20")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO customers_gone (region, customer_id, deleted_at) "
                          "SELECT region, customer_id, now() FROM customers WHERE region = 'o''brien \"q\"' "
                          "AND customer_id < 10"))
        conn.execute(text("DELETE FROM customers WHERE region = 'o''brien \"q\"' AND customer_id < 10"))
    new = region_frame(6, seed=5)
    new["region"] = ["north", "north", "new  region", "new  region", "Süd ost", "日本"]
    new["customer_id"] = [1000, 1001, 1, 2, 1000, 1000]
    insert(engine, new)
    out = top_up(postgresql_url, tmp_path, engine)
    assert "kept in lineage 1" in out, out
    change(engine, "customer_id IN (1, 2, 1000)")
    out = top_up(postgresql_url, tmp_path, engine)
    assert "kept in lineage 1" in out, out
    pd.testing.assert_frame_equal(rows(engine, 1), one, check_exact=True)
    two, three = rows(engine, 2), rows(engine, 3)
    full_equals(engine, postgresql_url, tmp_path, 3)  # version 4, not activated
    pd.testing.assert_frame_equal(served(engine), three, check_exact=True)
    assert "rolled back from version 3 to 2" in invoke(postgresql_url, tmp_path, "rollback", "scores")
    pd.testing.assert_frame_equal(served(engine), two, check_exact=True)
    invoke(postgresql_url, tmp_path, "activate", "scores", "3")
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    pd.testing.assert_frame_equal(served(engine), three, check_exact=True)
    pd.testing.assert_frame_equal(rows(engine, 3), three, check_exact=True)
    change(engine, "customer_id BETWEEN 30 AND 40")
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    full_equals(engine, postgresql_url, tmp_path, 5)


def test_a_null_key_among_the_changed_rows_fails_in_one_line_and_changes_nothing(pg, postgresql_url,
                                                                                write_job, tmp_path):
    engine = pg
    write_region_source(engine, region_frame())
    write_job(REGION_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    before, lineage = served(engine), count(engine, "SELECT COUNT(*) FROM scores__l1")
    change(engine, "customer_id < 5")
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET region = NULL WHERE customer_id = 3 AND region = 'north'"))
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    assert "NULL" in out, out
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == lineage
    pd.testing.assert_frame_equal(served(engine), before, check_exact=True)
    with engine.connect() as conn:
        assert [v.status for v in state.list_versions(conn, "scores")] == ["ready", "failed"]


INCLUDE = ["segment", "signup", "spend", "active"]
INCLUDE_JOB = CHANGES_JOB.replace("SELECT customer_id, x1, x2, x3 FROM customers",
                                  f"SELECT customer_id, x1, x2, x3, {', '.join(INCLUDE)} FROM customers").replace(
    'table = "scores"', f'table = "scores"\n    include = {INCLUDE!r}'.replace("'", '"'))


def test_columns_passed_through_that_change_in_top_ups_read_as_a_full_run(pg, postgresql_url, write_job,
                                                                          tmp_path):
    from run.test_passthrough import customers

    engine = pg
    write_source(engine, customers(KEYS))
    write_job(INCLUDE_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    with engine.begin() as conn:  # only descriptive columns change; some to NULL, some from NULL, '' to text
        conn.execute(text("UPDATE customers SET segment = NULL, spend = NULL, active = NULL, signup = NULL, "
                          "updated_at = now() WHERE customer_id BETWEEN 20 AND 30"))
        conn.execute(text("UPDATE customers SET segment = 'x''y z', spend = 1e300, active = true, "
                          "signup = '1999-12-31', updated_at = now() WHERE customer_id <= 8"))
        conn.execute(text("UPDATE customers SET segment = '', updated_at = now() WHERE customer_id = 40"))
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    change(engine, "customer_id BETWEEN 5 AND 25")
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    for version in (2, 3):
        topped = version_rows(engine, version)
        if version == 2:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT segment FROM scores__v2 WHERE customer_id = 3")).scalar() == "x'y z"
            continue
        out = invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
        assert "version 4" in out, out
        pd.testing.assert_frame_equal(topped, version_rows(engine, 4), check_exact=True)
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), version_rows(engine, 4),
                                  check_exact=True)


def alias_rows(engine: Engine, view: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(f"SELECT * FROM {view} ORDER BY customer_id"), conn).drop(columns="model_version")


def test_a_model_change_starts_a_lineage_that_rollbacks_aliases_and_splits_cross(pg, postgresql_url,
                                                                                   write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    change(engine, "customer_id <= 10")
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    write_job(CHANGES_JOB, seed=3)  # another model, the same outputs
    change(engine, "customer_id BETWEEN 5 AND 15")
    out = top_up(postgresql_url, tmp_path, engine)
    assert "a full run, not a top-up" in out and "version 3 is active" in out, out
    change(engine, "customer_id BETWEEN 100 AND 110")
    assert "kept in lineage 3" in top_up(postgresql_url, tmp_path, engine)
    saved = {v: version_rows(engine, v) for v in (1, 2, 3, 4)}
    with engine.connect() as conn:
        assert [(v.version, v.lineage) for v in state.list_versions(conn, "scores")] == [(1, 1), (2, 1), (3, 3),
                                                                                        (4, 3)]
    # across lineages and back
    for version in (2, 1, 3, 4):
        invoke(postgresql_url, tmp_path, "activate", "scores", str(version))
        pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[version],
                                      check_exact=True)
        assert count(engine, "SELECT COUNT(DISTINCT model_version) FROM scores") == 1
    assert "rolled back from version 4 to 3" in invoke(postgresql_url, tmp_path, "rollback", "scores")
    invoke(postgresql_url, tmp_path, "activate", "scores", "4")
    # the challenger serves the first lineage while the champion tops up the second
    invoke(postgresql_url, tmp_path, "activate", "scores", "2", "--alias", "challenger")
    invoke(postgresql_url, tmp_path, "split", "scores", "--alias", "challenger", "--percent", "50")
    change(engine, "customer_id BETWEEN 200 AND 220")
    assert "kept in lineage 3" in top_up(postgresql_url, tmp_path, engine)
    saved[5] = version_rows(engine, 5)
    pd.testing.assert_frame_equal(alias_rows(engine, "scores__challenger"), saved[2], check_exact=True)
    pd.testing.assert_frame_equal(alias_rows(engine, "scores"), saved[5], check_exact=True)
    with engine.connect() as conn:
        ab = pd.read_sql(text("SELECT * FROM scores__ab ORDER BY customer_id"), conn)
    assert len(ab) == KEYS and set(ab["variant"]) == {"challenger", "champion"}
    for variant, version in (("challenger", 2), ("champion", 5)):
        arm = ab[ab["variant"] == variant]
        assert set(arm["model_version"]) == {version}
        want = saved[version][saved[version]["customer_id"].isin(arm["customer_id"])]
        pd.testing.assert_frame_equal(arm[want.columns.intersection(arm.columns)].reset_index(drop=True),
                                      want[want.columns.intersection(arm.columns)].reset_index(drop=True),
                                      check_exact=True)
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    for version in (2, 5):
        pd.testing.assert_frame_equal(version_rows(engine, version), saved[version], check_exact=True)
    pd.testing.assert_frame_equal(alias_rows(engine, "scores__challenger"), saved[2], check_exact=True)
    # a model of other outputs: a full run on other columns, then back across them
    write_job(CHANGES_JOB.replace('method = "predict_proba"', 'method = "predict"'), seed=4)
    change(engine, "customer_id BETWEEN 1 AND 3")
    out = top_up(postgresql_url, tmp_path, engine)
    assert "a full run, not a top-up" in out, out
    with engine.connect() as conn:
        found = state.list_versions(conn, "scores")
    newest = found[-1]
    assert newest.lineage == newest.version and newest.columns != found[0].columns
    other = version_rows(engine, newest.version)
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), other, check_exact=True)
    change(engine, "customer_id BETWEEN 50 AND 52")
    assert f"kept in lineage {newest.version}" in top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, newest.version + 1)
    invoke(postgresql_url, tmp_path, "activate", "scores", "5")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[5], check_exact=True)
    invoke(postgresql_url, tmp_path, "activate", "scores", str(newest.version + 1))
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), topped, check_exact=True)
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, newest.version + 2), check_exact=True)
    pd.testing.assert_frame_equal(alias_rows(engine, "scores__challenger"), saved[2], check_exact=True)


def test_many_overlapping_top_ups_with_retention_keep_every_kept_version_and_bound_the_lineage(
        pg, postgresql_url, write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job,
              CHANGES_JOB.replace('table = "scores"', 'table = "scores"\n    keep = 3'), keys=KEYS)
    saved = {1: version_rows(engine, 1)}
    for step in range(12):
        low = (step * 7) % 50 + 1  # windows of 30 keys that overlap the previous ones
        change(engine, f"customer_id BETWEEN {low} AND {low + 29}")
        if step % 4 == 1:
            new = customers_frame(3, seed=step)
            new["customer_id"] += KEYS + 10 * step
            insert(engine, new)
        if step % 4 == 3:
            from helpers import delete
            delete(engine, f"customer_id IN ({low + 1}, {KEYS + 10 * (step - 2) + 1})")
        assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
        saved[step + 2] = version_rows(engine, step + 2)
        with engine.connect() as conn:
            kept = [v.version for v in state.list_versions(conn, "scores") if v.status == "ready"]
        for version in kept:
            pd.testing.assert_frame_equal(version_rows(engine, version), saved[version], check_exact=True)
        # every kept version's rows, plus at most what one top-up closed (30 keys and a few), and no more
        bound = KEYS + 10 + 3 * 33
        assert count(engine, "SELECT COUNT(*) FROM scores__l1") <= bound
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    with engine.connect() as conn:
        kept = [v.version for v in state.list_versions(conn, "scores") if v.status == "ready"]
    assert kept == [12, 13], out
    for version in kept:
        pd.testing.assert_frame_equal(version_rows(engine, version), saved[version], check_exact=True)
    distinct = count(engine, "SELECT COUNT(*) FROM (SELECT DISTINCT * FROM (SELECT * FROM scores__v12 UNION ALL "
                     "SELECT * FROM scores__v13) u) d")
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") <= distinct
    out = invoke(postgresql_url, tmp_path, "diff", "scores", "12", "13")
    assert "Traceback" not in out and "13" in out, out
    invoke(postgresql_url, tmp_path, "report", "scores", "--out", str(tmp_path / "r.html"))
    assert (tmp_path / "r.html").stat().st_size > 1000
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(saved[13], version_rows(engine, 14), check_exact=True)


def test_an_empty_change_and_a_removal_of_every_key(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    one = version_rows(engine, 1)
    out = top_up(postgresql_url, tmp_path, engine)
    assert "Traceback" not in out, out
    with engine.connect() as conn:
        found = [(v.version, v.status) for v in state.list_versions(conn, "scores")]
    if len(found) == 2:  # a top-up of nothing: the same rows
        pd.testing.assert_frame_equal(version_rows(engine, 2), one, check_exact=True)
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), one, check_exact=True)
    before, lineage = view_rows(engine), count(engine, "SELECT COUNT(*) FROM scores__l1")
    from helpers import delete
    delete(engine, "true")
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    pd.testing.assert_frame_equal(view_rows(engine), before, check_exact=True)
    with engine.connect() as conn:
        assert state.list_versions(conn, "scores")[-1].status == "failed"
    # the failed version is undone by gc: the lineage holds what it held
    invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "5")
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == lineage
    pd.testing.assert_frame_equal(view_rows(engine), before, check_exact=True)
    ok = CHANGES_JOB + "    [audits]\n    allow_empty = true\n"
    write_job(ok)
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental")
    assert "0 rows" in out, out
    assert count(engine, "SELECT COUNT(*) FROM scores") == 0


@pytest.mark.parametrize("back_to", [1, 2])
def test_a_top_up_of_an_old_lineage_whose_newer_versions_were_retired_reads_as_a_full_run(
        pg, postgresql_url, write_job, tmp_path, back_to):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    for low in (1, 11, 21):
        change(engine, f"customer_id BETWEEN {low} AND {low + 14}")
        from helpers import delete
        delete(engine, f"customer_id = {low + 100}")
        assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    saved = {v: version_rows(engine, v) for v in (1, 2, 3, 4)}
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")  # version 5, lineage 5
    invoke(postgresql_url, tmp_path, "activate", "scores", str(back_to))
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[back_to], check_exact=True)
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    with engine.connect() as conn:
        ready = [v.version for v in state.list_versions(conn, "scores") if v.status == "ready"]
    assert back_to in ready and 4 not in ready, (out, ready)
    for version in ready:
        if version in saved:
            pd.testing.assert_frame_equal(version_rows(engine, version), saved[version], check_exact=True)
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[back_to], check_exact=True)
    # the source as it is now differs from version back_to's in keys 1-35: a top-up from it lists them
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET updated_at = now() WHERE customer_id <= 40"))
    out = top_up(postgresql_url, tmp_path, engine)
    assert "kept in lineage 1" in out, out
    with engine.connect() as conn:
        newest = state.list_versions(conn, "scores")[-1].version
    topped = version_rows(engine, newest)
    # a full run of the source minus the removed keys the top-up never heard of (removed before its watermark)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    full = version_rows(engine, newest + 1)
    gone = set(saved[back_to].customer_id) - set(full.customer_id)
    pd.testing.assert_frame_equal(topped[~topped.customer_id.isin(gone)].reset_index(drop=True), full,
                                  check_exact=True)
    assert count(engine, f"SELECT COUNT(*) FROM scores__v{newest}") == len(topped)


@pytest.mark.parametrize("phase", ["auditing", "flipping"])
def test_kill_9_of_gc_and_of_a_top_up_in_a_lineage_leave_every_kept_version_whole(
        pg, postgresql_url, write_job, tmp_path, phase):
    from faults.test_crash import kill_at

    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    for low in (1, 11, 21):
        change(engine, f"customer_id BETWEEN {low} AND {low + 14}")
        top_up(postgresql_url, tmp_path, engine)
    saved = {v: version_rows(engine, v) for v in (1, 2, 3, 4)}
    served_before = view_rows(engine)
    kill_at(tmp_path, postgresql_url, "retiring", "gc", "scores", "--keep", "1")
    pd.testing.assert_frame_equal(view_rows(engine), served_before, check_exact=True)
    for version, rows_ in saved.items():
        pd.testing.assert_frame_equal(version_rows(engine, version), rows_, check_exact=True)
    change(engine, "customer_id BETWEEN 5 AND 30")
    kill_at(tmp_path, postgresql_url, phase, "run", "scores", "--incremental")
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    assert "retired 1, 2" in out, out
    pd.testing.assert_frame_equal(view_rows(engine), served_before, check_exact=True)
    for version in (3, 4):
        pd.testing.assert_frame_equal(version_rows(engine, version), saved[version], check_exact=True)
    with engine.connect() as conn:
        assert [v.status for v in state.list_versions(conn, "scores")] == ["retired", "retired", "ready", "ready",
                                                                           "failed"]
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") <= KEYS + 15  # 3's and 4's rows, the dead run's undone
    assert "rolled back from version 4 to 3" in invoke(postgresql_url, tmp_path, "rollback", "scores")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[3], check_exact=True)
    invoke(postgresql_url, tmp_path, "activate", "scores", "4")
    out = top_up(postgresql_url, tmp_path, engine)
    assert "kept in lineage 1" in out, out
    topped = version_rows(engine, 6)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 7), check_exact=True)


def test_a_job_that_drops_and_takes_again_domain_changed_serves_each_version_whole(pg, postgresql_url,
                                                                                   write_job, tmp_path):
    from helpers import CUSTOMERS_JOB

    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    change(engine, "customer_id <= 10")
    top_up(postgresql_url, tmp_path, engine)
    out = invoke(postgresql_url, tmp_path, "plan", "scores", "--incremental")
    assert "kept in lineage 1" in out, out
    write_job(CUSTOMERS_JOB)  # no [domain] changed: a version of its own table
    change(engine, "customer_id BETWEEN 11 AND 20")
    invoke(postgresql_url, tmp_path, "run", "scores", "--force")
    saved = {v: version_rows(engine, v) for v in (1, 2, 3)}
    with engine.connect() as conn:
        assert [v.lineage for v in state.list_versions(conn, "scores")] == [1, 1, None]
    for version in (2, 3, 1, 3):
        invoke(postgresql_url, tmp_path, "activate", "scores", str(version))
        pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[version],
                                      check_exact=True)
    write_job(CHANGES_JOB)
    change(engine, "customer_id BETWEEN 21 AND 30")
    out = top_up(postgresql_url, tmp_path, engine)
    assert "a full run, not a top-up" in out, out
    change(engine, "customer_id BETWEEN 31 AND 40")
    assert "kept in lineage 4" in top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, 5)
    invoke(postgresql_url, tmp_path, "activate", "scores", "3")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[3], check_exact=True)
    invoke(postgresql_url, tmp_path, "activate", "scores", "5")
    invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), topped, check_exact=True)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 6), check_exact=True)


@pytest.mark.parametrize("phase", ["loading", "indexing", "auditing", "attached", "flipping"])
def test_kill_9_of_a_full_run_that_begins_a_lineage_leaves_nothing_behind_after_gc(
        pg, postgresql_url, write_job, tmp_path, phase):
    from faults.test_crash import kill_at

    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    change(engine, "customer_id <= 10")
    top_up(postgresql_url, tmp_path, engine)
    saved = {v: version_rows(engine, v) for v in (1, 2)}
    served_before = view_rows(engine)
    kill_at(tmp_path, postgresql_url, phase, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(view_rows(engine), served_before, check_exact=True)
    invoke(postgresql_url, tmp_path, "status")
    out = invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "5")
    assert not {"scores__l3", "scores__l3__log", "scores__v3"} & set(relations(engine)), (out, relations(engine))
    pd.testing.assert_frame_equal(view_rows(engine), served_before, check_exact=True)
    for version, rows_ in saved.items():
        pd.testing.assert_frame_equal(version_rows(engine, version), rows_, check_exact=True)
    change(engine, "customer_id BETWEEN 5 AND 30")
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, 4)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 5), check_exact=True)
    invoke(postgresql_url, tmp_path, "rollback", "scores")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), topped, check_exact=True)


#: keys ("Order", "day"): a mixed-case reserved word and a date, over a table of its own.
ODD_JOB = CHANGES_JOB.replace('keys = ["customer_id"]', 'keys = ["Order", "day"]').replace(
    "SELECT customer_id, x1, x2, x3 FROM customers", 'SELECT \\"Order\\", day, x1, x2, x3 FROM customers').replace(
    "SELECT customer_id FROM customers_gone", 'SELECT \\"Order\\", day FROM customers_gone')


def test_mixed_case_reserved_and_date_keys_through_top_ups_undo_and_gc(pg, postgresql_url, write_job,
                                                                       tmp_path):
    import datetime as dt

    engine = pg
    frame = customers_frame(KEYS).rename(columns={"customer_id": "Order"})
    frame["Order"] = frame["Order"] % 100
    frame.insert(1, "day", [dt.date(2024, 1, 1) + dt.timedelta(days=i // 100) for i in range(KEYS)])
    write_source(engine, frame)
    with engine.begin() as conn:
        conn.execute(text('ALTER TABLE customers_gone RENAME COLUMN customer_id TO "Order"'))
        conn.execute(text("ALTER TABLE customers_gone ADD COLUMN day date"))
        conn.execute(text('ALTER TABLE customers ALTER COLUMN day TYPE date'))
        conn.execute(text("CREATE TABLE audit_fail (n int)"))
    write_job(ODD_JOB + """
    [[audits.sql]]
    name = "not_failing"
    query = "SELECT 1 FROM {table} WHERE EXISTS (SELECT 1 FROM audit_fail)"
""")
    order = '"Order", day'
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    with engine.begin() as conn:
        conn.execute(text('UPDATE customers SET x1 = x1 + 1, updated_at = now() WHERE "Order" < 10'))
        conn.execute(text('INSERT INTO customers_gone SELECT "Order", now(), day FROM customers WHERE "Order" = 50'))
        conn.execute(text('DELETE FROM customers WHERE "Order" = 50'))
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    with engine.begin() as conn:
        conn.execute(text('UPDATE customers SET x2 = x2 + 1, updated_at = now() WHERE "Order" BETWEEN 5 AND 15'))
        conn.execute(text("INSERT INTO audit_fail VALUES (1)"))
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
    assert "not_failing" in out, out
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_fail"))
    assert "kept in lineage 1" in top_up(postgresql_url, tmp_path, engine)
    saved = {v: version_rows(engine, v, order=order) for v in (1, 2, 4)}
    invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    for version in (2, 4):
        pd.testing.assert_frame_equal(version_rows(engine, version, order=order), saved[version], check_exact=True)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(saved[4], version_rows(engine, 5, order=order), check_exact=True)
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS - 3 + 33  # v2's rows and v4's 33


def test_an_empty_full_run_begins_a_lineage_that_top_ups_fill(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    write_source(engine, customers_frame(KEYS))
    write_job(CHANGES_JOB + "    [audits]\n    allow_empty = true\n")
    invoke(postgresql_url, tmp_path, "run", "scores")
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM customers"))
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    assert count(engine, "SELECT COUNT(*) FROM scores") == 0
    with engine.connect() as conn:
        assert [v.lineage for v in state.list_versions(conn, "scores")] == [1, 2]
    top_up_ready(engine)
    assert "0 rows" in top_up(postgresql_url, tmp_path, engine)
    new = customers_frame(50, seed=3)
    insert(engine, new)
    assert "50 rows: 50 scored, 0 kept in lineage 2" in top_up(postgresql_url, tmp_path, engine)
    change(engine, "customer_id <= 5")
    assert "50 rows: 5 scored, 45 kept in lineage 2" in top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, 5)
    invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 6), check_exact=True)
    assert "scores__l1" not in relations(engine)


def attached(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                                        "WHERE c.relname LIKE 'scores%'")).scalars())


def test_two_lineages_are_attached_only_between_a_full_run_and_its_first_top_up(pg, postgresql_url,
                                                                                write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    change(engine, "customer_id <= 10")
    top_up(postgresql_url, tmp_path, engine)
    assert attached(engine) == ["scores__l1"]
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    assert attached(engine) == ["scores__l1", "scores__l3"]
    change(engine, "customer_id <= 10")
    assert "kept in lineage 3" in top_up(postgresql_url, tmp_path, engine)
    assert attached(engine) == ["scores__l3"]
    invoke(postgresql_url, tmp_path, "activate", "scores", "2")
    assert attached(engine) == ["scores__l1", "scores__l3"]
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), version_rows(engine, 2),
                                  check_exact=True)


def test_a_gate_made_by_an_older_release_takes_the_lineage_column(pg, postgresql_url, write_job, tmp_path):
    from helpers import CUSTOMERS_JOB

    engine = pg
    write_source(engine, customers_frame(KEYS))
    write_job(CUSTOMERS_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores")
    with engine.begin() as conn:  # as an older release made it
        conn.execute(text("ALTER TABLE scores__gate DROP COLUMN lineage"))
    old = version_rows(engine, 1)
    write_job(CHANGES_JOB)
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental")
    assert "a full run, not a top-up" in out, out
    top_up_ready(engine)
    change(engine, "customer_id <= 10")
    assert "kept in lineage 2" in top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, 3)
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), topped, check_exact=True)
    invoke(postgresql_url, tmp_path, "rollback", "scores", "--to", "1")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), old, check_exact=True)
    invoke(postgresql_url, tmp_path, "activate", "scores", "3")
    pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), topped, check_exact=True)


def test_a_null_key_that_removed_lists_matches_none(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    change(engine, "customer_id <= 10")
    from helpers import delete
    delete(engine, "customer_id = 20")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO customers_gone (customer_id, deleted_at) VALUES (NULL, now())"))
    out = top_up(postgresql_url, tmp_path, engine)
    assert "299 rows: 10 scored, 289 kept in lineage 1" in out, out
    topped = version_rows(engine, 2)
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, 3), check_exact=True)


def test_the_reference_queries_read_a_lineage_as_they_read_a_table(pg, postgresql_url, write_job, tmp_path):
    from helpers import reference_query

    engine = pg
    write_source(engine, customers_frame(KEYS))
    write_job(CHANGES_JOB.replace('table = "scores"',
                                  'table = "scores"\n    default = { proba_true = 0.1, proba_false = 0.9 }'))
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    change(engine, "customer_id <= 10")
    from helpers import delete
    delete(engine, "customer_id IN (3, 4)")
    with engine.begin() as conn:  # a customer the versions never saw, and the two removed ones back, unscored
        conn.execute(text("INSERT INTO customers (customer_id, x1, x2, x3, updated_at) "
                          "VALUES (5000, 0, 0, 0, now() - interval '1 hour'), (3, 0, 0, 0, now() - interval '1 hour'),"
                          " (4, 0, 0, 0, now() - interval '1 hour')"))
    top_up(postgresql_url, tmp_path, engine)
    topped = version_rows(engine, 2).set_index("customer_id")
    with engine.connect() as conn:
        rows_ = pd.read_sql(text(reference_query(6)), conn).set_index("customer_id").sort_index()
        one = conn.execute(text(reference_query(1)), {"customer_id": 7}).one()
    assert one == (topped.loc[7, "proba_true"], 2)
    assert len(rows_) == KEYS + 1
    for key in (3, 4, 5000):
        assert (rows_.loc[key, "proba_true"], rows_.loc[key, "model_version"]) == (0.1, None) or (
            rows_.loc[key, "proba_true"] == 0.1 and pd.isna(rows_.loc[key, "model_version"])), rows_.loc[key]
    scored = rows_.drop(index=[3, 4, 5000])
    assert set(scored["model_version"]) == {2}
    assert (scored["proba_true"] == topped.loc[scored.index, "proba_true"]).all()


def test_versions_and_lineages_that_are_gone_are_refused_in_one_line(pg, postgresql_url, write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    for low in (1, 11, 21):
        change(engine, f"customer_id BETWEEN {low} AND {low + 9}")
        top_up(postgresql_url, tmp_path, engine)
    assert "retired 1, 2" in invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    for args in (("activate", "scores", "1"), ("diff", "scores", "2", "4"), ("rollback", "scores", "--to", "2"),
                 ("audit", "scores", "1")):
        out = invoke(postgresql_url, tmp_path, *args, code=1)
        assert out.startswith("Error:") and len(out.strip().splitlines()) == 1 and "retired" in out, (args, out)
    served = view_rows(engine)
    pd.testing.assert_frame_equal(view_rows(engine), served, check_exact=True)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE scores__l1 CASCADE"))  # by hand
    change(engine, "customer_id <= 5")
    out = top_up(postgresql_url, tmp_path, engine)
    assert "a full run, not a top-up" in out and "version 5 is active" in out, out
    assert count(engine, "SELECT COUNT(*) FROM scores") == KEYS
    out = invoke(postgresql_url, tmp_path, "activate", "scores", "4", code=1)
    assert out.startswith("Error:") and len(out.strip().splitlines()) == 1, out
    invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    change(engine, "customer_id <= 5")
    assert "kept in lineage 5" in top_up(postgresql_url, tmp_path, engine)


@pytest.mark.parametrize("seed", [3])  # seeds 1-12 passed too (a few runs of this walk, by hand)
def test_a_random_walk_of_top_ups_failures_flips_full_runs_and_gc_keeps_every_version_whole(
        pg, postgresql_url, write_job, tmp_path, seed):
    """Each ready version reads, after every step, as the rows it had when it was made; the last top-up equals a
    full run. The source keeps its stamps (no :func:`top_up_ready`, which would hide changes from a top-up of an
    older version activated since): a change in a run's second is listed again, and scored again alike."""
    from faults.test_crash import kill_at

    from helpers import delete

    engine = pg
    rng = np.random.default_rng(seed)
    write_source(engine, customers_frame(KEYS))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE audit_fail (customer_id bigint)"))
    write_job(CHANGES_JOB + """
    [[audits.sql]]
    name = "no_listed_key"
    query = "SELECT customer_id FROM {table} WHERE EXISTS (SELECT 1 FROM audit_fail)"
""")
    invoke(postgresql_url, tmp_path, "run", "scores")
    top_up_ready(engine)
    saved = {1: version_rows(engine, 1)}
    next_id = KEYS + 1

    def versions() -> list[state.Version]:
        with engine.connect() as conn:
            return state.list_versions(conn, "scores")

    for step in range(22):
        low = int(rng.integers(1, KEYS - 20))
        change(engine, f"customer_id BETWEEN {low} AND {low + int(rng.integers(0, 20))}")
        if rng.random() < 0.3:
            new = customers_frame(2, seed=step)
            new["customer_id"] = [next_id, next_id + 1]
            next_id += 2
            insert(engine, new)
        if rng.random() < 0.3:
            delete(engine, f"customer_id = {int(rng.integers(1, next_id))}")
        op = rng.choice(["top-up", "top-up", "top-up", "fail", "flip", "full", "gc", "alias", "rollback", "kill",
                         "kill-gc"])
        newest = max(v.version for v in versions())
        if op == "fail":
            with engine.begin() as conn:
                conn.execute(text(f"INSERT INTO audit_fail VALUES ({low})"))
            out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
            assert "no_listed_key" in out and "Traceback" not in out, out
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM audit_fail"))
        elif op == "flip":
            ready = [v.version for v in versions() if v.status == "ready"]
            invoke(postgresql_url, tmp_path, "activate", "scores", str(int(rng.choice(ready))))
        elif op == "alias":
            ready = [v.version for v in versions() if v.status == "ready"]
            invoke(postgresql_url, tmp_path, "activate", "scores", str(int(rng.choice(ready))), "--alias", "challenger")
        elif op == "rollback":
            out = CliRunner().invoke(main, ["--jobs", str(tmp_path / "jobs"), "rollback", "scores", "--db",
                                            postgresql_url]).output
            assert "rolled back" in out or (out.startswith("Error:") and len(out.strip().splitlines()) == 1), out
        elif op == "kill":
            kill_at(tmp_path, postgresql_url, str(rng.choice(["loading", "indexing", "auditing", "flipping"])), "run",
                    "scores", "--incremental")
            invoke(postgresql_url, tmp_path, "status")
        elif op == "kill-gc":
            kill_at(tmp_path, postgresql_url, "retiring", "gc", "scores", "--keep", "1")
        elif op == "gc":
            invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", str(int(rng.integers(1, 4))))
        else:
            invoke(postgresql_url, tmp_path, "run", "scores", *(["--full", "--force"] if op == "full" else
                                                                 ["--incremental"]))
            made = max(v.version for v in versions())
            assert made == newest + 1
            saved[made] = version_rows(engine, made)
        found = versions()
        for v in found:
            if v.status == "ready":
                pd.testing.assert_frame_equal(version_rows(engine, v.version), saved[v.version], check_exact=True,
                                              obj=f"step {step} ({op}): version {v.version}")
        with engine.connect() as conn:
            active = state.active_version(conn, "scores").version
        pd.testing.assert_frame_equal(view_rows(engine).drop(columns="model_version"), saved[active],
                                      check_exact=True, obj=f"step {step} ({op}): the view")
        with engine.connect() as conn:
            challenger = state.active_version(conn, "scores", "challenger")
        if challenger is not None:
            pd.testing.assert_frame_equal(view_rows(engine, "scores__challenger").drop(columns="model_version"),
                                          saved[challenger.version], check_exact=True, obj=f"step {step}: challenger")
    invoke(postgresql_url, tmp_path, "run", "scores", "--incremental")
    topped = version_rows(engine, max(v.version for v in versions()))
    invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force")
    pd.testing.assert_frame_equal(topped, version_rows(engine, max(v.version for v in versions())),
                                  check_exact=True)


@pytest.mark.parametrize("executor", ["local", "dask"])
def test_a_full_run_with_a_null_or_twice_listed_key_fails_in_one_line_and_leaves_no_lineage(
        pg, postgresql_url, write_job, tmp_path, executor):
    engine = pg
    frame = customers_frame(KEYS)
    write_source(engine, frame)
    write_job(CHANGES_JOB)
    invoke(postgresql_url, tmp_path, "run", "scores")
    served = view_rows(engine)
    flags = ["--executor", "dask", "--workers", "1"] if executor == "dask" else []
    for bad in ("UPDATE customers SET customer_id = NULL WHERE customer_id = 7",
                "UPDATE customers SET customer_id = 8 WHERE customer_id = 9"):
        with engine.begin() as conn:
            conn.execute(text(bad))
        out = invoke(postgresql_url, tmp_path, "run", "scores", "--full", "--force", *flags, code=1)
        assert out.startswith("Error:") and len(out.strip().splitlines()) == 1, out
        assert "NULL" in out or "more than once" in out, out
        pd.testing.assert_frame_equal(view_rows(engine), served, check_exact=True)
    invoke(postgresql_url, tmp_path, "gc", "scores", "--keep", "1")
    assert {n for n in relations(engine) if not n.startswith("scores__p")} == {
        "scores", "scores__gate", "scores__l1", "scores__l1__log", "scores__v1"}


def test_a_null_integer_key_among_the_changed_rows_fails_in_one_line_and_changes_nothing(
        pg, postgresql_url, write_job, tmp_path):
    engine = pg
    first_run(engine, postgresql_url, tmp_path, write_job, keys=KEYS)
    before = view_rows(engine)
    change(engine, "customer_id <= 10")
    with engine.begin() as conn:
        conn.execute(text("UPDATE customers SET customer_id = NULL WHERE customer_id = 4"))
    out = invoke(postgresql_url, tmp_path, "run", "scores", "--incremental", code=1)
    assert out == "Error: 1 domain row(s) have a NULL key (customer_id)\n", out
    assert count(engine, "SELECT COUNT(*) FROM scores__l1") == KEYS
    pd.testing.assert_frame_equal(view_rows(engine), before, check_exact=True)
