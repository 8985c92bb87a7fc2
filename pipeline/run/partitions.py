"""Write one partition of a version table, exactly once, from whichever process runs it.

A distributed run splits its domain into disjoint partitions. Each partition is read,
scored and loaded in one transaction that also records it in ``pipeline_partitions``:
a worker that dies mid-partition leaves nothing (its transaction rolls back), and a
task retried after its partition committed finds the record and writes nothing again.
Each partition is filled the way a local run fills its whole table (:func:`pipeline.run.store.fill`).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import date
from typing import Callable

from sqlalchemy.engine import Connection, Engine

from pipeline.database import state
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.database.transactions import transaction
from pipeline.jobspec import Job
from pipeline.run.domain import Domain
from pipeline.run.model import Model
from pipeline.run.scoring import Scorer
from pipeline.run.store import VersionWriter, fill


@dataclass(frozen=True)
class PartitionTask:
    """Everything a worker needs to write one partition (the model travels apart, sent once)."""

    url: str                              # the target database, password included
    job: Job
    version: int
    physical: str
    columns: tuple[tuple[str, str], ...]  # the version table's columns, created by the coordinator
    partition: int
    partitions: int
    by: tuple[str, ...]                   # the first factor's columns the partitions hash
    logical_date: date
    #: (source, snapshot id) of each query source the coordinator exported a snapshot of (Domain.one_instant).
    snapshots: tuple[tuple[str | None, str], ...] = ()


@dataclass(frozen=True)
class PartitionResult:
    partition: int
    rows: int
    expected_rows: int          # what the partition must hold (its domain size, or its groups' top rows)
    digest: list[list[object]]  # the domain fingerprint's part (see Domain.digest)
    worker: str
    seconds: float
    #: False when an earlier attempt had committed the partition already.
    written: bool = True


@functools.lru_cache(maxsize=4)
def _engine(url: str) -> Engine:
    """One engine (and connection pool) per database and worker process, reused by its tasks."""
    return make_engine(url)


def write_partition(task: PartitionTask, model: Model,
                    progress: Callable[[int], None] | None = None) -> PartitionResult:
    """Read, score and load ``task``'s partition in one transaction, unless it was committed before.

    ``progress`` is called with the partition's rows so far after each chunk.
    """
    engine = _engine(task.url)
    dialect = dialect_for(engine)
    table = task.job.output.table
    started = time.monotonic()
    with transaction(engine) as conn:
        dialect.lock(conn, f"pipeline:{task.physical}:{task.partition}")  # one attempt at a time
        done = recorded(conn, table, task.version, task.partition)
        if done is not None:
            return done
        writer = VersionWriter(dialect, conn, task.physical, task.job.domain.keys, columns=list(task.columns))
        domain = Domain(task.job.domain, engine, task.logical_date, snapshots=dict(task.snapshots))
        scorer = Scorer(model, task.job.domain.keys, include=task.job.output.include)
        try:
            expected = fill(writer, domain.chunks(task.partition, task.partitions, task.by), scorer, task.job,
                            progress, phase="partition-loading",
                            grouped=lambda: domain.arrives_grouped(task.job.output.group_by))
        finally:
            domain.close()
        result = PartitionResult(task.partition, writer.rows, expected, domain.digest,
                                 f"{socket.gethostname()}:{os.getpid()}", time.monotonic() - started)
        state.record_partition(
            conn, table_name=table, version=task.version, partition=task.partition, partitions=task.partitions,
            row_count=result.rows, expected_rows=expected, digest=json.dumps(result.digest), worker=result.worker,
            seconds=result.seconds, finished_at=state.utcnow())
    return result


def recorded(conn: Connection, table: str, version: int, partition: int) -> PartitionResult | None:
    """The committed record of a partition, or None."""
    row = state.get_partition(conn, table, version, partition)
    if row is None:
        return None
    return PartitionResult(row.partition, row.row_count, row.expected_rows, json.loads(row.digest), row.worker or "",
                           row.seconds, written=False)
