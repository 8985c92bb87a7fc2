"""Partitions of a distributed run: together they hold the domain exactly once, each key in one of them, and a
partition written again (a retried task) writes nothing."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import text

from pipeline import load_job
from pipeline.database.dialects import dialect_for
from pipeline.database.schema import ensure_schema
from pipeline.database.transactions import transaction
from pipeline.run import partitions as partitions_module
from pipeline.run.domain import Domain, merged_fingerprint, merged_size, partition_columns
from pipeline.run.model import load_model
from pipeline.run.partitions import PartitionTask, recorded, write_partition
from pipeline.run.scoring import Scorer, first_rows, score_chunk
from pipeline.run.store import columns_of

from helpers import CUSTOMERS_JOB, customers_frame, write_table

ROWS, PARTS = 600, 3
JOB = CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 90')


@pytest.fixture
def url(db_url):
    """The database URL a task carries; the engine write_partition keeps for it is let go afterwards."""
    yield db_url
    partitions_module._engine(db_url).dispose()


@pytest.fixture
def prepared(engine, url, write_job):
    """A job, its model, and version table scores__v1 made the way the Dask coordinator makes it."""
    write_table(engine, "customers", customers_frame(ROWS))
    job = load_job(write_job(JOB))
    model = load_model(job.model)
    domain = Domain(job.domain, engine)
    chunks = domain.chunks()
    try:
        first = next(chunks)
        columns = tuple(columns_of(first_rows(Scorer(model, job.domain.keys), job, first)))
        by = tuple(partition_columns(job.domain.keys, domain.first_columns))
    finally:
        chunks.close()
        domain.close()
    with transaction(engine) as conn:
        ensure_schema(conn)
        dialect_for(engine).create_table(conn, "scores__v1", list(columns))
    return job, model, columns, by


def task(url, job, columns, by, partition: int) -> PartitionTask:
    return PartitionTask(url, job, 1, "scores__v1", columns, partition, PARTS, by,
                         pd.Timestamp("2026-01-01").date())


def keys(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text('SELECT customer_id FROM scores__v1')).scalars())


def test_the_partitions_hold_the_domain_exactly_once(engine, url, prepared):
    job, model, columns, by = prepared
    results, owners = [], []
    for partition in range(PARTS):
        before = keys(engine)
        result = write_partition(task(url, job, columns, by, partition), model)
        added = keys(engine) - before
        assert result.written and result.partition == partition
        assert result.rows == result.expected_rows == len(added) > 0
        results.append(result)
        owners.append(added)
    assert set.union(*owners) == set(range(1, ROWS + 1))
    assert sum(len(o) for o in owners) == ROWS  # disjoint: every key in exactly one partition

    with engine.connect() as conn:
        written = pd.read_sql(text('SELECT * FROM scores__v1 ORDER BY customer_id'), conn)
        part = engine.dialect.identifier_preparer.quote("partition")
        records = conn.execute(text(f"SELECT {part}, partitions, row_count FROM pipeline_partitions "
                                    f"WHERE table_name = 'scores' AND version = 1 ORDER BY {part}")).all()
    expected = score_chunk(model, job.domain.keys, customers_frame(ROWS))
    pd.testing.assert_frame_equal(written, expected[list(written.columns)], check_dtype=False)
    assert [tuple(r) for r in records] == [(p, PARTS, len(owners[p])) for p in range(PARTS)]

    whole = Domain(job.domain, engine)
    for _ in whole.chunks():
        pass
    whole.close()
    assert merged_size([r.digest for r in results]) == ROWS
    assert merged_fingerprint([r.digest for r in results]) == whole.fingerprint


def test_a_partition_written_again_adds_nothing(engine, url, prepared):
    job, model, columns, by = prepared
    first = write_partition(task(url, job, columns, by, 1), model)
    with engine.connect() as conn:
        before = pd.read_sql(text('SELECT * FROM scores__v1 ORDER BY customer_id'), conn)
    again = write_partition(task(url, job, columns, by, 1), model)
    assert first.written and not again.written
    assert (again.partition, again.rows, again.expected_rows, again.digest, again.worker) == \
        (1, first.rows, first.expected_rows, first.digest, first.worker)
    with engine.connect() as conn:
        after = pd.read_sql(text('SELECT * FROM scores__v1 ORDER BY customer_id'), conn)
        count = conn.execute(text("SELECT COUNT(*) FROM pipeline_partitions")).scalar_one()
    pd.testing.assert_frame_equal(after, before)
    assert len(after) == first.rows and count == 1


def test_recorded_reads_a_committed_partition_and_none_otherwise(engine, url, prepared):
    job, model, columns, by = prepared
    done = write_partition(task(url, job, columns, by, 2), model)
    with engine.connect() as conn:
        found = recorded(conn, "scores", 1, 2)
        assert recorded(conn, "scores", 1, 0) is None
        assert recorded(conn, "scores", 2, 2) is None
    assert found is not None and not found.written
    assert (found.rows, found.expected_rows, found.digest) == (done.rows, done.expected_rows, done.digest)
