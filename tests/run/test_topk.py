"""Top-k per entity: a product domain keeps each group's K best rows, ranked, computed while streaming."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from pipeline import load_job, run_job
from pipeline.jobspec import ExecutorSpec, OutputSpec
from pipeline.run.audits import audit_version
from pipeline.run.scoring import TopK

from helpers import PRODUCT_JOB, write_table, write_users_items

USERS, ITEMS, K = 60, 45, 4
JOB = PRODUCT_JOB.replace('keys = ["user_id", "item_id"]', 'keys = ["user_id", "item_id"]\n    chunk_size = 250') + """\
    top_k = 4
    group_by = ["user_id"]
    rank_by = "proba_true"
"""


@pytest.fixture
def inputs(engine):
    write_users_items(engine, USERS, ITEMS, seed=3)
    return engine


def expected(engine, job) -> pd.DataFrame:
    """Every pair scored in memory, each user's K best by proba_true (ties by item_id)."""
    import joblib

    model = joblib.load(job.model.path)
    with engine.connect() as conn:
        users = pd.read_sql(text("SELECT * FROM users"), conn)
        items = pd.read_sql(text("SELECT * FROM items"), conn)
    pairs = users.merge(items, how="cross")
    pairs["proba_true"] = model.predict_proba(pairs[["x1", "x2", "x3"]])[:, 1]
    best = pairs.sort_values(["user_id", "proba_true", "item_id"], ascending=[True, False, True])
    best = best.groupby("user_id").head(K).copy()
    best["rank"] = best.groupby("user_id").cumcount() + 1
    return best[["user_id", "item_id", "proba_true", "rank"]].sort_values(["user_id", "rank"]).reset_index(drop=True)


def served(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text('SELECT user_id, item_id, proba_true, rank, model_version FROM scores '
                                'ORDER BY user_id, rank'), conn)


def test_each_group_keeps_its_k_best_rows_in_rank_order(inputs, write_job):
    job = load_job(write_job(JOB))
    result = run_job(job, inputs)
    assert result.rows == USERS * K
    got = served(inputs)
    pd.testing.assert_frame_equal(got.drop(columns="model_version"), expected(inputs, job), check_dtype=False)
    assert {r.name: r.passed for r in result.audits}["top_k"]
    # Re-auditing from the CLI's side (the job at hand) checks the ranks again.
    again = audit_version(inputs, "scores", 1, job.audits, output=job.output)
    assert all(r.passed for r in again)


def test_groups_with_fewer_candidates_keep_them_all(inputs, write_job):
    body = JOB.replace('query = "SELECT item_id, x2, x3 FROM items"',
                       'query = "SELECT item_id, x2, x3 FROM items WHERE item_id < 3"')
    result = run_job(load_job(write_job(body)), inputs)
    assert result.rows == USERS * 3  # 3 candidates per user, K = 4
    got = served(inputs)
    assert got.groupby("user_id")["rank"].max().eq(3).all()


def test_top_k_streams_with_memory_bounded_by_the_groups():
    """Feeding 200 chunks keeps at most a few times K rows per group in memory."""
    output = OutputSpec(table="t", top_k=3, group_by=("g",), rank_by="s")
    top = TopK(output, ("g", "i"))
    rng = np.random.default_rng(0)
    peak = 0
    for chunk in range(200):
        frame = pd.DataFrame({"g": rng.integers(0, 50, 1000), "i": np.arange(chunk * 1000, (chunk + 1) * 1000),
                              "s": rng.random(1000)})
        top.add(frame)
        peak = max(peak, top.held)
    assert peak <= 100_000 + 50 * 3 * 2  # bounded by the merge threshold, not by the 200,000 rows streamed
    rows = pd.concat(list(top.frames(40)), ignore_index=True)
    assert len(rows) == 150 == top.expected_rows
    assert rows.groupby("g")["rank"].apply(list).map(lambda r: r == [1, 2, 3]).all()


def test_a_grouped_stream_hands_out_each_group_as_it_ends_in_memory_bounded_by_the_chunk():
    """Groups arriving one after another (a product's users crossed with every item in turn), spread over
    chunks that cut groups in two: memory holds K rows of the groups of one chunk, whatever the number of
    groups, and the rows handed out equal what the whole stream ranked at once gives, ties to the smaller key."""
    output = OutputSpec(table="t", top_k=3, group_by=("g",), rank_by="s")
    rng = np.random.default_rng(1)
    groups, per_group, chunk = 2000, 70, 500
    stream = pd.DataFrame({"g": np.repeat(np.arange(groups), per_group), "i": np.tile(np.arange(per_group), groups),
                           "s": rng.integers(0, 20, groups * per_group) / 20})  # many ties
    stream = stream[~((stream.g % 7 == 0) & (stream.i > 1))]  # some groups keep fewer than K
    grouped, whole = TopK(output, ("g", "i"), grouped=True), TopK(output, ("g", "i"))
    handed, peak = [], 0
    for start in range(0, len(stream), chunk):
        frame = stream.iloc[start:start + chunk].reset_index(drop=True)
        grouped.add(frame)
        whole.add(frame)
        handed.extend(grouped.finished())
        peak = max(peak, grouped.held)
    assert peak <= (chunk // per_group + 2) * 3  # K rows of the groups one chunk touches
    handed.extend(grouped.frames(100))
    got = pd.concat(handed, ignore_index=True)
    want = pd.concat(list(whole.frames(100)), ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
    assert grouped.expected_rows == whole.expected_rows == len(got) == (groups - 286) * 3 + 286 * 2
    ties = stream.sort_values(["g", "s", "i"], ascending=[True, False, True]).groupby("g").head(3)
    assert list(got.i) == list(ties.i)


def test_a_product_grouped_by_its_first_factor_is_written_as_groups_end(inputs, write_job, monkeypatch):
    """A run of a product whose group_by is its first factor's key never holds more than a chunk's groups."""
    peaks = []
    finished = TopK.finished

    def watch(self):
        peaks.append((self.grouped, self.held))
        return finished(self)

    monkeypatch.setattr(TopK, "finished", watch)
    job = load_job(write_job(JOB))
    run_job(job, inputs)
    pd.testing.assert_frame_equal(served(inputs).drop(columns="model_version"), expected(inputs, job),
                                  check_dtype=False)
    # before it hands them out: the groups a chunk of 250 pairs touches, and the one left open before it
    assert all(grouped for grouped, _ in peaks) and max(held for _, held in peaks) <= (250 // ITEMS + 3) * K


#: A single query of pairs in no order, with text items that sort differently by code point than in a locale.
SPILL_JOB = """
    [domain]
    keys = ["user_id", "item_id"]
    chunk_size = 40
    query = "SELECT user_id, item_id, x1, x2, x3 FROM pairs"
    [model]
    path = "models/{model}"
    method = "predict_proba"
    [output]
    table = "scores"
    top_k = 3
    group_by = ["user_id"]
    rank_by = "proba_true"
"""
TEXT_ITEMS = ["b", "a10", "a9", "Zed", "apple", "_x", "10", "9", "Mango", "kiwi"]


def shuffled_pairs(users: int = 40, seed: int = 4) -> pd.DataFrame:
    """Users x TEXT_ITEMS in random order; items share three feature rows, so scores tie within a user; some
    users have fewer than K items."""
    pairs = pd.DataFrame([(u, item) for u in range(users) for item in TEXT_ITEMS], columns=["user_id", "item_id"])
    pairs = pairs[~((pairs.user_id % 9 == 0) & ~pairs.item_id.isin(["b", "9"]))]
    look = {item: i % 3 for i, item in enumerate(TEXT_ITEMS)}
    pairs["x1"] = np.sin(pairs.user_id.to_numpy())
    pairs["x2"] = pairs.item_id.map(look).astype(float)
    pairs["x3"] = 0.5
    return pairs.sample(frac=1, random_state=seed).reset_index(drop=True)


def test_many_groups_in_any_order_move_to_the_database_and_rank_the_same(engine, write_job, monkeypatch):
    """Past SPILL_ROWS held rows, a top-k run ranks in the database: the same table row for row as ranking in
    memory, ties to the smaller item by code point, groups with fewer than K candidates whole."""
    from pipeline.run import store

    write_table(engine, "pairs", shuffled_pairs())
    job = load_job(write_job(SPILL_JOB))
    memory = run_job(job, engine)
    moves = []
    spill_move = store.Spill.move

    def move(self):
        moves.append(self.top.held)
        spill_move(self)

    monkeypatch.setattr(store, "SPILL_ROWS", 20)
    monkeypatch.setattr(store.Spill, "move", move)
    moved = run_job(job, engine, force=True)
    assert len(moves) > 3 and max(moves) <= 20 + 40  # held rows never grew past the limit and a chunk
    ordered = "ORDER BY user_id, rank"
    with engine.connect() as conn:
        one, two = (pd.read_sql(text(f"SELECT user_id, item_id, proba_true, rank FROM scores__v{v} {ordered}"), conn)
                    for v in (memory.version, moved.version))
        assert not engine.dialect.has_table(conn, "scores__v2__top")
    pd.testing.assert_frame_equal(one, two)
    assert moved.rows == memory.rows == len(two) == 35 * 3 + 5 * 2  # users 0, 9, 18, 27 and 36 have two items
    tied = two[two.duplicated(["user_id", "proba_true"], keep=False)]
    assert len(tied) > 20  # the ties are real, and broken by code point
    for _, group in tied.groupby(["user_id", "proba_true"]):
        assert list(group.item_id) == sorted(group.item_id)
    assert all(r.passed for r in moved.audits)


def test_a_broken_ranking_fails_the_top_k_audit(inputs, write_job):
    job = load_job(write_job(JOB))
    run_job(job, inputs)
    with inputs.begin() as conn:
        conn.execute(text('UPDATE scores__v1 SET rank = 1 WHERE user_id = 5'))
    results = {r.name: r for r in audit_version(inputs, "scores", 1, job.audits, output=job.output)}
    assert not results["top_k"].passed and "1 group(s)" in results["top_k"].detail


@pytest.mark.postgres
def test_dask_partitions_keep_whole_groups(postgresql_url, write_job):
    from pipeline.database.engines import make_engine

    engine = make_engine(postgresql_url)
    write_users_items(engine, USERS, ITEMS, seed=3)
    job = load_job(write_job(JOB))
    run_job(dataclasses.replace(job, executor=ExecutorSpec("dask", workers=2, partitions=3)), engine)
    pd.testing.assert_frame_equal(served(engine).drop(columns="model_version"), expected(engine, job),
                                  check_dtype=False)
    grouped_by_items = dataclasses.replace(job, output=dataclasses.replace(job.output, group_by=("item_id",)),
                                           executor=ExecutorSpec("dask", workers=1))
    with pytest.raises(Exception, match="group_by \\(item_id\\) must be among its columns"):
        run_job(grouped_by_items, engine, force=True)
    engine.dispose()
