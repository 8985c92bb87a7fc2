"""[domain] exclude: pairs left out of a product while it streams, before scoring and before top-k."""

from __future__ import annotations

import dataclasses

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.jobspec import ExecutorSpec
from pipeline.serve import catalog

from helpers import PRODUCT_JOB, quoted, write_table, write_users_items

USERS, ITEMS, K = 30, 12, 3
TOP_K = """\
    top_k = 3
    group_by = ["user_id"]
    rank_by = "proba_true"
"""
EXCLUDE = 'exclude = "SELECT user_id, item_id FROM purchases"\n    [[domain.product]]'


def job_body(exclude: str = EXCLUDE, top_k: bool = True, chunk_size: int = 50) -> str:
    body = PRODUCT_JOB.replace('keys = ["user_id", "item_id"]',
                               f'keys = ["user_id", "item_id"]\n    chunk_size = {chunk_size}')
    body = body.replace("[[domain.product]]", exclude, 1)
    return body + (TOP_K if top_k else "")


def purchases(users: int = USERS, items: int = ITEMS, seed: int = 5) -> pd.DataFrame:
    """Each user bought a random share of the items past the first K, user 0 all but K - 1 (so it keeps fewer
    than K), user 1 none; with a duplicate and a NULL row, as real purchase lists have."""
    rng = np.random.default_rng(seed)
    pairs = [(u, i) for u in range(2, users) for i in range(K, items) if rng.random() < 0.6]
    pairs += [(0, i) for i in range(items - K + 1)] + [(2, K), (2, K)]
    frame = pd.DataFrame(pairs, columns=["user_id", "item_id"]).astype("Int64")
    return pd.concat([frame, pd.DataFrame({"user_id": [None], "item_id": [3]}, dtype="Int64")], ignore_index=True)


@pytest.fixture
def inputs(engine):
    write_users_items(engine, USERS, ITEMS, seed=3)
    write_table(engine, "purchases", purchases())
    return engine


def expected(engine, job, top_k: bool = True) -> pd.DataFrame:
    """Every pair not bought, scored in memory; with top-k each user's K best by proba_true (ties by item_id)."""
    model = joblib.load(job.model.path)
    with engine.connect() as conn:
        users = pd.read_sql(text("SELECT * FROM users"), conn)
        items = pd.read_sql(text("SELECT * FROM items"), conn)
    bought = purchases().dropna().astype("int64").drop_duplicates()
    pairs = users.merge(items, how="cross").merge(bought, how="left", indicator=True)
    pairs = pairs[pairs["_merge"] == "left_only"].copy()
    pairs["proba_true"] = model.predict_proba(pairs[["x1", "x2", "x3"]])[:, 1]
    columns = ["user_id", "item_id", "proba_true"]
    if not top_k:
        return pairs[columns].sort_values(["user_id", "item_id"]).reset_index(drop=True)
    best = pairs.sort_values(["user_id", "proba_true", "item_id"], ascending=[True, False, True])
    best = best.groupby("user_id").head(K).copy()
    best["rank"] = best.groupby("user_id").cumcount() + 1
    return best[[*columns, "rank"]].sort_values(["user_id", "rank"]).reset_index(drop=True)


def served(engine, top_k: bool = True) -> pd.DataFrame:
    order = "user_id, rank" if top_k else "user_id, item_id"
    with engine.connect() as conn:
        return pd.read_sql(text(f"SELECT user_id, item_id, proba_true{', rank' if top_k else ''} FROM scores "
                                f"ORDER BY {order}"), conn)


@pytest.mark.parametrize("chunk_size", [7, 50, 1000])
def test_each_user_gets_k_items_none_of_them_bought(inputs, write_job, chunk_size):
    job = load_job(write_job(job_body(chunk_size=chunk_size)))
    result = run_job(job, inputs)
    got = served(inputs)
    pd.testing.assert_frame_equal(got, expected(inputs, job), check_dtype=False)
    counts = got.groupby("user_id").size()
    assert counts[0] == K - 1 and (counts.drop(0) == K).all() and len(counts) == USERS
    bought = set(map(tuple, purchases().dropna().astype("int64").to_numpy()))
    assert not bought & set(zip(got.user_id, got.item_id))
    assert result.rows == len(got)


def test_without_top_k_the_table_holds_every_pair_not_bought(inputs, write_job):
    job = load_job(write_job(job_body(top_k=False)))
    result = run_job(job, inputs)
    want = expected(inputs, job, top_k=False)
    pd.testing.assert_frame_equal(served(inputs, top_k=False), want, check_dtype=False)
    version = catalog.versions(inputs, "scores")[0].version
    assert result.rows == len(want) == version.domain_size == version.row_count


def test_the_exclusion_list_is_part_of_the_domain(inputs, write_job):
    """Another purchase makes another domain: a run is not skipped as the same work, and the new version
    leaves the pair out."""
    path = write_job(job_body())
    first = run_job(load_job(path), inputs)
    assert run_job(load_job(path), inputs).skipped
    with inputs.begin() as conn:
        conn.execute(text("INSERT INTO purchases (user_id, item_id) "
                          "SELECT user_id, item_id FROM scores WHERE user_id = 1 AND rank = 1"))
        gone = conn.execute(text("SELECT item_id FROM scores WHERE user_id = 1 AND rank = 1")).scalar_one()
    second = run_job(load_job(path), inputs)
    assert not second.skipped and second.version == first.version + 1
    with inputs.connect() as conn:
        items = conn.execute(text("SELECT item_id FROM scores WHERE user_id = 1")).scalars().all()
    assert gone not in items and len(items) == K


def test_an_exclusion_file_and_a_query_on_another_source(inputs, write_job, tmp_path):
    bought = purchases().dropna()
    bought.to_csv(tmp_path / "bought.csv", index=False)
    job = load_job(write_job(job_body(exclude='exclude = { file = "../bought.csv" }\n    [[domain.product]]')))
    run_job(job, inputs)
    pd.testing.assert_frame_equal(served(inputs), expected(inputs, job), check_dtype=False)


@pytest.mark.parametrize("exclude, message", [
    ('exclude = "SELECT user_id, region FROM purchases"', "exclude: query failed|no such column|region"),
    ('exclude = "SELECT user_id AS customer, item_id FROM purchases"',
     "exclude has column(s) customer that are not among the domain's columns"),
    ("exclude = \"SELECT CAST(user_id AS CHAR(8)) AS user_id, item_id FROM purchases\"",
     "exclude cannot be matched with the domain"),
])
def test_a_bad_exclusion_list_fails_in_one_line_and_publishes_nothing(inputs, db_url, write_job, tmp_path,
                                                                      monkeypatch, exclude, message):
    monkeypatch.chdir(tmp_path)
    if "CAST" in exclude and inputs.dialect.name == "postgresql":
        exclude = exclude.replace("CHAR(8)", "TEXT")
    write_job(job_body(exclude=f"{exclude}\n    [[domain.product]]"))
    out = CliRunner().invoke(main, ["run", "scores", "--db", db_url])
    assert out.exit_code != 0
    assert len(out.output.strip().splitlines()) == 1 and out.output.startswith("Error: ")
    assert any(part.lower() in out.output.lower() for part in message.split("|")), out.output
    with inputs.connect() as conn:
        assert not inputs.dialect.has_table(conn, "scores")


@pytest.mark.parametrize("body, message", [
    ('exclude = 3', "domain.exclude: must be a query or a table with 'query' or 'file'"),
    ('exclude = { query = "SELECT 1", sheet = "x" }', "domain.exclude.sheet"),
    ('exclude = { file = "bought.xlsx" }', "domain.exclude.file: file not found: bought.xlsx"),
])
def test_bad_exclude_settings_are_job_file_errors(write_job, body, message):
    from pipeline.errors import JobFileError

    with pytest.raises(JobFileError, match=message.replace("(", "\\(").replace(")", "\\)")):
        load_job(write_job(job_body(exclude=f"{body}\n    [[domain.product]]")))


@pytest.mark.postgres
def test_dask_partitions_exclude_the_same_pairs(postgresql_url, write_job):
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    try:
        write_users_items(engine, USERS, ITEMS, seed=3)
        write_table(engine, "purchases", purchases())
        job = load_job(write_job(job_body()))
        local = run_job(job, engine)
        distributed = run_job(dataclasses.replace(job, executor=ExecutorSpec("dask", workers=2, partitions=3)),
                              engine, force=True)
        got = served(engine)
        pd.testing.assert_frame_equal(got, expected(engine, job), check_dtype=False)
        versions = {row.version.version: row.version for row in catalog.versions(engine, "scores")}
        one, two = versions[local.version], versions[distributed.version]
        assert (one.domain_size, one.domain_fingerprint) == (two.domain_size, two.domain_fingerprint)
        assert one.domain_size == USERS * ITEMS - len(purchases().dropna().drop_duplicates())
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT COUNT(*) FROM {quoted(engine, 'scores')}")).scalar_one() == len(got)
    finally:
        engine.dispose()


def test_plan_says_what_is_left_out_and_what_is_passed_through(inputs, db_url, write_job, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_job(job_body() + '    include = ["x1"]\n')
    out = CliRunner().invoke(main, ["plan", "scores", "--db", db_url])
    assert out.exit_code == 0, out.output
    serving = [line for line in out.output.splitlines() if line.startswith("serving:")]
    assert serving[:2] == [
        "serving:   leaving out the domain rows that SELECT user_id, item_id FROM purchases lists ([domain] exclude)",
        "serving:   with the domain's x1 beside the outputs"]
    domain = next(line for line in out.output.splitlines() if line.startswith("domain:"))
    assert domain.startswith(f"domain:    {USERS * ITEMS - len(purchases().dropna().drop_duplicates())} rows")
