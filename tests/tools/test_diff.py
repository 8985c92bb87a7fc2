"""Diffs of two versions: keys that came and went and how predictions moved, computed in the database."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from pipeline import gc, load_job, run_job
from pipeline.errors import TableError
from pipeline.tools.diff import HISTOGRAM_BINS, LabelChange, VersionDiff, diff_versions

from fakemodels import Scripted
from helpers import CUSTOMERS_JOB, FEATURES, SCRIPTED_JOB, customers_frame, version_rows, write_table

N = 200


@pytest.fixture
def customers(engine) -> pd.DataFrame:
    frame = customers_frame(N)
    write_table(engine, "customers", frame)
    return frame


@pytest.fixture
def run(engine, write_job):
    """Run the scores job once with ``model``; returns the new version."""

    def go(model: object, body: str = SCRIPTED_JOB) -> int:
        return run_job(load_job(write_job(body, model=model)), engine, force=True).version

    return go


def table(engine, version: int) -> pd.DataFrame:
    """A whole (small) version table, to work out in Python what the diff must say."""
    return version_rows(engine, version)


def only(diff: VersionDiff):
    assert len(diff.numeric) == 1 and not diff.labels
    return diff.numeric[0]


def string_labels(seed: int, cuts: dict[str, float]):
    """A LogisticRegression fitted on string labels: each label covers x1 up to its cut."""
    from sklearn.linear_model import LogisticRegression

    frame = customers_frame(300, seed=50 + seed)
    names, edges = list(cuts), list(cuts.values())
    labels = np.array(names, dtype=object)[np.searchsorted(edges, frame.x1.to_numpy())]
    return LogisticRegression(C=10.0).fit(frame[FEATURES], labels)


def test_a_shift_moves_every_shared_key_by_the_shift(engine, customers, run):
    assert (run(Scripted(scale=1)), run(Scripted(scale=1, shift=0.5))) == (1, 2)
    diff = diff_versions(engine, "scores", 1, 2, top=5)
    assert (diff.table, diff.a, diff.b, diff.keys) == ("scores", 1, 2, ("customer_id",))
    assert (diff.only_in_a, diff.only_in_b, diff.in_both, diff.rows_a, diff.rows_b) == (0, 0, N, N, N)
    assert diff.columns_only_in_a == diff.columns_only_in_b == ()
    moved = only(diff)
    assert (moved.column, moved.shared, moved.compared, moved.changed) == ("prediction", N, N, N)
    assert moved.changed_share == 1.0
    assert moved.mean_change == pytest.approx(0.5)
    assert moved.mean_abs_change == pytest.approx(0.5)
    assert moved.max_abs_change == pytest.approx(0.5)
    assert sum(b.count for b in moved.histogram) == N
    assert all(b.low == pytest.approx(0.5) and b.high == pytest.approx(0.5) for b in moved.histogram)
    assert len(moved.top) == 5
    for mover in moved.top:
        assert isinstance(mover.key, tuple) and len(mover.key) == 1
        assert mover.b - mover.a == pytest.approx(0.5) and mover.change == pytest.approx(0.5)
    reverse = only(diff_versions(engine, "scores", 2, 1))
    assert reverse.mean_change == pytest.approx(-0.5) and len(reverse.top) == 10


def test_figures_histogram_and_movers_match_the_tables(engine, customers, run):
    run(Scripted(scale=1))
    run(Scripted(scale=2))  # B - A = x1: a different change for every key
    diff = diff_versions(engine, "scores", 1, 2, top=7)
    moved = only(diff)
    both = table(engine, 1).merge(table(engine, 2), on="customer_id", suffixes=("_a", "_b"))
    change = both.prediction_b - both.prediction_a
    assert moved.mean_change == pytest.approx(change.mean())
    assert moved.mean_abs_change == pytest.approx(change.abs().mean())
    assert moved.max_abs_change == change.abs().max()
    assert moved.changed == N and moved.changed_share == 1.0

    low, high = change.min(), change.max()
    width = (high - low) / HISTOGRAM_BINS
    expected = Counter(HISTOGRAM_BINS - 1 if c >= high else int((c - low) / width) for c in change)
    assert [b.count for b in moved.histogram] == [expected[i] for i in range(HISTOGRAM_BINS)]
    assert moved.histogram[0].low == low and moved.histogram[-1].high == high
    assert all(b.low == pytest.approx(low + i * width) for i, b in enumerate(moved.histogram))

    both["change"] = change
    biggest = both.assign(size=change.abs()).sort_values(["size", "customer_id"], ascending=[False, True]).head(7)
    assert [m.key for m in moved.top] == [(int(k),) for k in biggest.customer_id]
    assert [(m.a, m.b, m.change) for m in moved.top] == list(
        zip(biggest.prediction_a, biggest.prediction_b, biggest.change))
    sizes = [abs(m.change) for m in moved.top]
    assert sizes == sorted(sizes, reverse=True)


def test_a_changed_domain_counts_keys_on_each_side(engine, run):
    everyone = customers_frame(60)
    write_table(engine, "customers", everyone.iloc[:50])   # customers 1..50
    run(Scripted())
    write_table(engine, "customers", everyone.iloc[10:])   # 11..60: 1..10 left, 51..60 joined
    run(Scripted())
    diff = diff_versions(engine, "scores", 1, 2)
    assert (diff.only_in_a, diff.only_in_b, diff.in_both) == (10, 10, 40)
    assert (diff.rows_a, diff.rows_b) == (50, 50)
    same = only(diff)  # the same model on the same features: shared keys did not move
    assert (same.shared, same.compared, same.changed, same.changed_share) == (40, 40, 0, 0.0)
    assert (same.mean_change, same.mean_abs_change, same.max_abs_change) == (0.0, 0.0, 0.0)
    assert [(b.low, b.high, b.count) for b in same.histogram] == [(0.0, 0.0, 40)]
    assert same.top == ()
    backwards = diff_versions(engine, "scores", 2, 1)
    assert (backwards.only_in_a, backwards.only_in_b, backwards.in_both) == (10, 10, 40)


def test_string_labels_count_changed_keys_and_pairs(engine, customers, run):
    job = SCRIPTED_JOB  # method = "predict": one text column of labels
    old = string_labels(0, {"low": 0.0, "high": np.inf})
    new = string_labels(1, {"low": -0.5, "mid": 0.5, "high": np.inf})
    run(old, job)
    run(new, job)
    diff = diff_versions(engine, "scores", 1, 2, top=3)
    assert diff.numeric == () and len(diff.labels) == 1
    labels = diff.labels[0]
    pairs = Counter((a, b) for a, b in zip(old.predict(customers[FEATURES]), new.predict(customers[FEATURES]))
                    if a != b)
    assert labels.column == "prediction" and labels.shared == N
    assert labels.changed == sum(pairs.values()) > 0
    assert labels.changed_share == pytest.approx(labels.changed / N)
    expected = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:3]
    assert labels.top == tuple(LabelChange(a, b, n) for (a, b), n in expected)
    assert diff_versions(engine, "scores", 1, 1).labels[0].changed == 0


def test_columns_in_one_version_only_are_listed(engine, customers, run):
    run(string_labels(0, {"low": 0.0, "high": np.inf}), CUSTOMERS_JOB)            # proba_high, proba_low
    run(string_labels(1, {"low": -0.5, "mid": 0.5, "high": np.inf}), CUSTOMERS_JOB)  # and proba_mid
    diff = diff_versions(engine, "scores", 1, 2, top=2)
    assert diff.columns_only_in_a == () and diff.columns_only_in_b == ("proba_mid",)
    assert [d.column for d in diff.numeric] == ["proba_high", "proba_low"] and diff.labels == ()
    for moved in diff.numeric:
        assert moved.compared == N and sum(b.count for b in moved.histogram) == N and len(moved.top) == 2
    assert diff_versions(engine, "scores", 2, 1).columns_only_in_a == ("proba_mid",)


def test_composite_keys_and_keys_that_differ(engine, customers, run):
    two_keys = SCRIPTED_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id", "segment"]').replace(
        "SELECT customer_id,", "SELECT customer_id, customer_id % 3 AS segment,")
    run(Scripted(), two_keys)
    run(Scripted(shift=-1.0), two_keys)
    diff = diff_versions(engine, "scores", 1, 2, top=1)
    assert diff.keys == ("customer_id", "segment") and diff.in_both == N
    moved = only(diff)
    assert moved.mean_change == pytest.approx(-1.0)
    assert len(moved.top[0].key) == 2 and moved.top[0].key[1] == moved.top[0].key[0] % 3
    run(Scripted())
    with pytest.raises(TableError, match=r"version 2 is keyed by \(customer_id, segment\) and version 3 by "
                                        r"\(customer_id\)"):
        diff_versions(engine, "scores", 2, 3)


def test_unknown_table_version_and_retired_version(engine, customers, run):
    with pytest.raises(TableError, match="no prediction table 'scores' in this database"):
        diff_versions(engine, "scores", 1, 2)  # an empty database: no bookkeeping tables yet
    for _ in range(3):
        run(Scripted())
    with pytest.raises(TableError, match="no prediction table 'nope' in this database"):
        diff_versions(engine, "nope", 1, 2)
    with pytest.raises(TableError, match=r"^scores has no version 9 \(see `pipeline versions scores`\)$"):
        diff_versions(engine, "scores", 1, 9)
    with pytest.raises(TableError, match="top must be"):
        diff_versions(engine, "scores", 1, 2, top=-1)
    assert gc(engine, "scores", keep=1).retired == [1]  # 2 stays: the rollback target
    with pytest.raises(TableError, match="^scores version 1 cannot be compared: it was retired and its table "
                                        "scores__v1 is gone$"):
        diff_versions(engine, "scores", 1, 3)
    assert diff_versions(engine, "scores", 3, 3, top=0).numeric[0].changed == 0
