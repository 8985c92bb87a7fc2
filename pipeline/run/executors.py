"""Where a run reads, scores and writes its domain: in this process, or as partitions on a Dask cluster.

Both executors fill the version table with the same rows (built by :mod:`pipeline.run.scoring`)
and hand back what the run records; the key, the audits and the flip come after, once,
in the run's own process (:mod:`pipeline.run.materialize`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, Iterator

from sqlalchemy.engine import Connection

from pipeline.database import state
from pipeline.database.dialects import Dialect
from pipeline.database.transactions import transaction
from pipeline.errors import AuditError, PipelineError, first_line
from pipeline.jobspec import ExecutorSpec, Job
from pipeline.phases import checkpoint
from pipeline.run import changes, topup
from pipeline.run.context import RunContext
from pipeline.run.domain import Domain, merged_fingerprint, merged_size, partition_columns
from pipeline.run.model import Model
from pipeline.run.partitions import PartitionResult, PartitionTask, write_partition
from pipeline.run.scoring import Scorer, TypeGuard, first_rows
from pipeline.run.store import InLineage, VersionWriter, columns_of, fill

log = logging.getLogger("pipeline")

EMPTY_DOMAIN = ("the domain is empty: the query or file listed no rows; refusing to publish an empty version "
                "(set [audits] allow_empty = true to allow it)")
DASK_MISSING = "the dask executor needs dask.distributed: pip install 'prediction-pipeline[dask]'"
#: Partitions per worker thread when the job does not say: small enough to spread and to retry cheaply.
PARTITIONS_PER_THREAD = 4


@dataclass(frozen=True)
class Loaded:
    """A filled and keyed version table, with what the run records about its domain."""

    rows: int
    columns: list[tuple[str, str]]
    domain_size: int
    #: None for a change-driven top-up, which never reads the whole domain.
    fingerprint: str | None
    #: The rows the table must hold: the domain size, or with top_k each group's best rows.
    expected_rows: int
    #: Rows an incremental run copied from the active version instead of scoring them.
    copied: int = 0
    #: What the model was handed (see :meth:`pipeline.run.model.Model.input_schema`); None for an empty domain.
    input_schema: list[list[Any]] | None = None


@dataclass(frozen=True)
class Target:
    """The version table a run fills."""

    context: RunContext
    model: Model
    version: int
    physical: str
    #: The active version to top up: score only new and changed keys, copy the rest (--incremental).
    top_up: topup.TopUp | None = None
    #: The active version's input types, which the domain must keep unless the job allows a change.
    guard: TypeGuard | None = None
    #: The active version a change-driven top-up builds on (see :mod:`pipeline.run.changes`).
    changes_from: state.Version | None = None
    #: Where the version is kept in a lineage: ``physical`` is the lineage's table a full run starts.
    lineage: InLineage | None = None

    @property
    def job(self) -> Job:
        return self.context.job

    @property
    def logical_date(self) -> date:
        return self.context.logical_date

    def scorer(self) -> Scorer:
        return Scorer(self.model, self.job.domain.keys, self.guard, self.job.output.include)


class LocalExecutor:
    """Stream, score and write the whole domain in this process, in one transaction."""

    def check(self, dialect: Dialect) -> None:
        """Any database will do."""

    def load(self, target: Target) -> Loaded:
        if target.changes_from is not None:
            return self._apply_changes(target, target.changes_from)
        context, job, top_up = target.context, target.job, target.top_up
        dialect = context.dialect
        domain = Domain(job.domain, context.engine, context.logical_date)
        try:
            with domain.one_instant(), transaction(context.engine) as conn:
                progress = context.rows_written(progress_total(conn, job))
                writer = VersionWriter(dialect, conn, target.physical, job.domain.keys, kinds=domain.kind,
                                       lineage=target.lineage)
                scorer = target.scorer()
                chunks = scorer.checking(domain.chunks())
                if top_up is None:
                    expected = fill(writer, chunks, scorer, job, progress,
                                    grouped=lambda: domain.arrives_grouped(job.output.group_by))
                else:  # the bar counts the domain rows read: the changed ones are scored, the rest copied
                    writer.columns = top_up.columns
                    dialect.create_table(conn, target.physical, writer.columns, job.domain.keys)
                    fill(writer, top_up.changed(chunks, progress), scorer, job)
                    writer.rows += top_up.copy(conn, dialect, target.physical, job.output.table)
                    expected = domain.size
                if domain.size == 0:
                    writer.columns = empty_columns(conn, job)
                    if top_up is None:
                        dialect.create_table(conn, writer.name, writer.columns, job.domain.keys)
                checkpoint("indexing")
                rows = writer.finish()
        finally:
            domain.close()
        return Loaded(rows, writer.columns, domain.size, domain.fingerprint, expected,
                      top_up.copied if top_up is not None else 0, scorer.schema)

    def _apply_changes(self, target: Target, active: state.Version) -> Loaded:
        """A change-driven top-up: the changed rows scored, the active version's others copied (or kept, in its
        lineage), in one transaction.
        The domain's size is what the version must hold; with no rows read, the types the model was handed are
        the active version's."""
        context, job = target.context, target.job
        with transaction(context.engine) as conn:
            writer = VersionWriter(context.dialect, conn, target.physical, job.domain.keys, lineage=target.lineage)
            scorer = target.scorer()
            done = changes.apply(context, conn, writer, scorer, active, context.rows_written(None))
            if done.expected == 0:
                empty_columns(conn, job)  # refused unless the job allows an empty version
            checkpoint("indexing")
            rows = writer.finish()
        return Loaded(rows, writer.columns, done.expected, None, done.expected, done.copied,
                      scorer.schema or active.input_schema)


class DaskExecutor:
    """Score and load disjoint partitions of the domain on a Dask cluster, each worker writing its own.

    The coordinator (this process) creates the table from a first scored chunk, sends
    the model to every worker once, and keys the table after every partition committed.
    Where the domain's queries read PostgreSQL, the coordinator exports a snapshot that
    the sample and every partition read as of (:meth:`Domain.one_instant`), so a domain
    changing during the run gives one instant's rows; elsewhere each partition reads its own.
    """

    def __init__(self, spec: ExecutorSpec) -> None:
        self.spec = spec

    def check(self, dialect: Dialect) -> None:
        """Refuse databases with a single writer, and a missing dask, before anything is built."""
        if not dialect.CONCURRENT_WRITERS:
            raise PipelineError(f"the dask executor needs a database that takes concurrent writers, such as "
                                f"PostgreSQL; {dialect.name} has a single writer (use --executor local)")
        try:
            import distributed  # noqa: F401 - only to fail early
        except ImportError:
            raise PipelineError(DASK_MISSING) from None

    def load(self, target: Target) -> Loaded:
        domain = Domain(target.job.domain, target.context.engine, target.logical_date)
        try:
            with domain.one_instant(partitioned=True):
                return self._load(target, domain)
        finally:
            domain.close()

    # -- steps ----------------------------------------------------------------

    def _load(self, target: Target, domain: Domain) -> Loaded:
        context, job = target.context, target.job
        engine, dialect = context.engine, context.dialect
        columns, by, fingerprint, schema = self._sample(target, domain)
        if not columns:
            with transaction(engine) as conn:
                columns = empty_columns(conn, job)
                dialect.create_table(conn, target.physical, columns, job.domain.keys)
                VersionWriter(dialect, conn, target.physical, job.domain.keys, columns, lineage=target.lineage).finish()
            return Loaded(0, columns, 0, fingerprint, 0)
        with transaction(engine) as conn:
            # committed: the workers write into it
            dialect.create_table(conn, target.physical, columns, job.domain.keys)
            expected = progress_total(conn, job)
        try:
            checkpoint("loading")
            with self._client() as client:
                results = self._run(client, target, domain, columns, by, context.rows_written(expected))
            rows = sum(r.rows for r in results)
            checkpoint("indexing")
            with transaction(engine) as conn:
                VersionWriter(dialect, conn, target.physical, job.domain.keys, columns, rows,
                              lineage=target.lineage).finish()
        except BaseException:
            # Like a local load's rolled-back transaction: a load that failed leaves no table behind.
            with transaction(engine) as conn:
                dialect.drop_table(conn, target.physical)
            raise
        size = merged_size([r.digest for r in results])
        return Loaded(rows, columns, size, merged_fingerprint([r.digest for r in results]),
                      sum(r.expected_rows for r in results), input_schema=schema)

    def _sample(self, target: Target, domain: Domain) -> tuple[list[tuple[str, str]], tuple[str, ...], str,
                                                               list[list[Any]] | None]:
        """The table's columns, the partitions' hash columns and the input schema, from the first chunk
        (none: an empty domain, whose fingerprint comes third)."""
        chunks = domain.chunks()
        try:
            first = next(chunks, None)
            if first is None:
                return [], (), domain.fingerprint, None
            job = target.job
            scorer = target.scorer()
            frame = first_rows(scorer, job, first)
            if job.output.top_k:
                outside = [g for g in job.output.group_by if g not in domain.first_columns]
                if outside:  # a partition must hold whole groups
                    raise PipelineError(f"the dask executor splits the domain's first factor: top_k's group_by "
                                        f"({', '.join(outside)}) must be among its columns")
                return columns_of(frame, domain.kind), job.output.group_by, "", scorer.schema
            return (columns_of(frame, domain.kind), tuple(partition_columns(job.domain.keys, domain.first_columns)), "",
                    scorer.schema)
        finally:
            chunks.close()

    @contextlib.contextmanager
    def _client(self) -> Iterator[Any]:
        """A client of the cluster at the configured address, or of a local cluster started for this run."""
        from distributed import Client, LocalCluster

        address = _address(self.spec)
        with contextlib.ExitStack() as stack:
            try:
                if address:
                    client = stack.enter_context(Client(address, timeout="10s"))
                else:
                    cluster = stack.enter_context(LocalCluster(
                        n_workers=_workers(self.spec), threads_per_worker=1, processes=True,
                        silence_logs=logging.ERROR))
                    client = stack.enter_context(Client(cluster))
            except (OSError, TimeoutError) as exc:
                where = f"the Dask scheduler at {address}" if address else "a local Dask cluster"
                raise PipelineError(f"cannot reach {where}: {first_line(exc)}") from None
            log.info("dask: %d workers, dashboard at %s", len(client.scheduler_info()["workers"]),
                     client.dashboard_link)
            yield client

    def _run(self, client: Any, target: Target, domain: Domain, columns: list[tuple[str, str]],
             by: tuple[str, ...], progress: Callable[[int], None] | None) -> list[PartitionResult]:
        """Write every partition; the first one that fails for good cancels the rest and is raised."""
        from distributed import as_completed

        partitions = self.spec.partitions or PARTITIONS_PER_THREAD * max(1, sum(client.nthreads().values()))
        url = target.context.engine.url.render_as_string(hide_password=False)
        tasks = [PartitionTask(url, target.job, target.version, target.physical, tuple(columns), i, partitions, by,
                               target.logical_date, tuple(domain.snapshots.items())) for i in range(partitions)]
        topic = f"pipeline-progress-{target.physical}-{os.getpid()}"
        counts: dict[int, int] = {}
        lock = threading.Lock()

        def tally(event: tuple[float, tuple[int, int]]) -> None:
            partition, rows = event[1]
            with lock:
                counts[partition] = rows  # a retried partition starts again from 0
                if progress is not None:
                    progress(sum(counts.values()))

        client.subscribe_topic(topic, tally)
        model = client.scatter(target.model, broadcast=True)  # sent once to each worker, not once per task
        futures = [client.submit(_task, task, model, topic, key=f"pipeline-{target.physical}-p{task.partition}",
                                 pure=False) for task in tasks]
        log.info("%s: %d partitions on %d workers", target.physical, partitions,
                 len(client.scheduler_info()["workers"]))
        results = []
        try:
            for future in as_completed(futures):
                if future.status == "error":
                    error = _partition_error(future)  # before cancelling, which may release the worker's exception
                    client.cancel(futures)
                    raise error
                results.append(future.result())
        finally:
            client.unsubscribe_topic(topic)
        return sorted(results, key=lambda r: r.partition)


def _task(task: PartitionTask, model: Model, topic: str) -> PartitionResult:
    """What a worker runs: one partition, reporting its rows on ``topic`` (shown by the CLI's bar)."""
    from distributed import get_worker

    worker = get_worker()
    return write_partition(task, model, progress=lambda rows: worker.log_event(topic, (task.partition, rows)))


def _partition_error(future: Any) -> PipelineError:
    exc = future.exception()
    if isinstance(exc, PipelineError):
        return exc
    what = f"partition {future.key.rsplit('-p', 1)[-1]}"
    return PipelineError(f"{what} failed on the Dask cluster: {type(exc).__name__}: {first_line(exc)}")


def _address(spec: ExecutorSpec) -> str | None:
    """The scheduler to use: the job's or the CLI's, else ``$DASK_SCHEDULER_ADDRESS``; None: a local cluster."""
    return spec.address or os.environ.get("DASK_SCHEDULER_ADDRESS")


def _workers(spec: ExecutorSpec) -> int:
    """Worker processes of a local cluster: as asked, else one per core."""
    return spec.workers or os.cpu_count() or 1


def describe(spec: ExecutorSpec) -> str:
    """One line on where a run of ``spec`` would score, for plans and logs."""
    if spec.kind != "dask":
        return "local (this process)"
    address = _address(spec)
    where = f"the cluster at {address}" if address else f"a local cluster of {_workers(spec)} workers"
    count = f"{spec.partitions} partitions" if spec.partitions else f"{PARTITIONS_PER_THREAD} partitions per thread"
    return f"dask: {count} on {where}"


def executor_for(spec: ExecutorSpec) -> LocalExecutor | DaskExecutor:
    """The executor a job's ``[executor]`` (or the CLI's ``--executor``) asks for."""
    return DaskExecutor(spec) if spec.kind == "dask" else LocalExecutor()


def progress_total(conn: Connection, job: Job) -> int | None:
    """What the progress bar expects: the active version's domain size, the best guess before counting."""
    active = state.active_version(conn, job.output.table)
    return active.domain_size if active else None


def empty_columns(conn: Connection, job: Job) -> list[tuple[str, str]]:
    """An empty domain has no rows to tell column types from: take the active version's, if it may be empty."""
    if not job.audits.allow_empty:
        raise AuditError(EMPTY_DOMAIN)
    active = state.active_version(conn, job.output.table)
    if active is None:
        raise AuditError("the domain is empty and there is no active version to take column types from")
    return list(active.columns)
