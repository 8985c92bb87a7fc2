"""What a job is: the frozen settings a validated job file holds (read by :mod:`pipeline.jobs`).

Every later stage takes these and trusts them; nothing here reads files or checks values.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METHODS = ("predict", "predict_proba", "decision_function")
#: ``[model] format`` values: the model families (see :mod:`pipeline.run.flavors`).
FORMATS = ("joblib", "skops", "lightgbm", "xgboost", "onnx", "mlflow")
EXECUTORS = ("local", "dask")
DEFAULT_CHUNK_SIZE = 100_000
#: Seconds a run keeps trying to publish while readers hold its view, before it leaves the version ready
#: but unpublished: long enough for an ordinary report or backup, short enough to be told about at 3 am.
DEFAULT_PUBLISH_TIMEOUT = 600
#: Ready versions a table keeps after each run, besides what every alias serves: a lookup reaches only the
#: serving set however many are kept, so this bounds disk space and how far back an activate can go.
DEFAULT_KEEP = 5


@dataclass(frozen=True)
class Factor:
    """One table of the domain: the rows of a query, or of a CSV/Parquet file."""

    query: str | None = None
    file: Path | None = None
    source: str | None = None  # None: the job's target database


@dataclass(frozen=True)
class DomainSpec:
    """The bounded input domain: a cartesian product of one or more factors."""

    keys: tuple[str, ...]
    factors: tuple[Factor, ...]
    chunk_size: int = DEFAULT_CHUNK_SIZE
    #: Let a run publish when a feature's type differs from the active version's (the change is recorded).
    allow_type_changes: bool = False
    #: Rows to leave out of the domain (items a user already bought): the rows of a query or file whose columns
    #: are domain columns; a domain row whose values on those columns match one is never scored.
    exclude: Factor | None = None
    #: The domain rows new or changed since ``:since`` (the active version's watermark): a top-up reads only these.
    changed: str | None = None
    #: The keys that left the domain since ``:since``, which a top-up drops (needs ``changed``).
    removed: str | None = None
    #: A top-up after ``full_every - 1`` top-ups in a row is a full run instead (needs ``changed``).
    full_every: int | None = None
    #: Runs are top-ups unless ``--full`` (needs ``changed``); a full run is the default.
    incremental: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """A model file (``path``) or a registry model (``uri``, through MLflow): exactly one of them."""

    path: Path | None = None
    method: str = "predict"
    sha256: str | None = None
    features: tuple[str, ...] | None = None
    #: One of :data:`FORMATS`: ``joblib`` (pickle: the file is code), ``skops`` (only the ``trusted`` types
    #: are loaded), a booster's native file, ONNX, or an MLflow model directory (``path`` is then a directory).
    format: str = "joblib"
    trusted: tuple[str, ...] = ()
    #: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; the alias is resolved once per run.
    uri: str | None = None
    #: The MLflow tracking server (or database) to resolve ``uri`` at; None: MLflow's own default.
    tracking_uri: str | None = None

    @property
    def location(self) -> str:
        """The model as the job file names it, for messages."""
        return self.uri or str(self.path)


@dataclass(frozen=True)
class OutputSpec:
    table: str
    #: Ready versions to retain after each successful run (what every alias serves always stays).
    keep: int = DEFAULT_KEEP
    #: Keep only the ``top_k`` best rows of each ``group_by`` group, ranked by the output ``rank_by``.
    top_k: int | None = None
    group_by: tuple[str, ...] = ()
    rank_by: str | None = None
    ascending: bool = False
    #: Values for keys outside the domain, served by the one-row view ``<table>__default``.
    default: tuple[tuple[str, Any], ...] = ()
    #: Seconds to keep trying to publish while readers hold the view (see :data:`DEFAULT_PUBLISH_TIMEOUT`).
    publish_timeout: int = DEFAULT_PUBLISH_TIMEOUT
    #: Roles granted SELECT on every view the pipeline makes for the table, never on its version tables;
    #: recorded when a run publishes, so a later activate, rollback or split grants them too (PostgreSQL).
    grant_select: tuple[str, ...] = ()
    #: Domain columns stored beside the outputs in every version and the view (a segment, a region).
    include: tuple[str, ...] = ()


@dataclass(frozen=True)
class DriftSpec:
    """Refuse a version whose ``column`` moved too far from the active version's."""

    column: str
    max_psi: float | None = None
    max_moved_share: float | None = None
    moved_by: float = 0.0


@dataclass(frozen=True)
class SqlAudit:
    """A query over the new version (``{table}``) that must return no rows, like a dbt test."""

    name: str
    query: str


@dataclass(frozen=True)
class AuditSpec:
    allow_empty: bool = False
    bounds: tuple[tuple[str, float | None, float | None], ...] = ()
    drift: tuple[DriftSpec, ...] = ()
    sql: tuple[SqlAudit, ...] = ()


@dataclass(frozen=True)
class WaitFor:
    """A query (``:run_date`` bound) whose first value must be true before the run reads its domain."""

    name: str
    query: str
    source: str | None = None  # None: the job's target database


@dataclass(frozen=True)
class GateSpec:
    """Checks of the run's inputs before anything is scored (see :mod:`pipeline.run.gates`)."""

    wait_for: tuple[WaitFor, ...] = ()
    #: Seconds to keep polling ``wait_for`` queries (with backoff up to ``poll_interval``) before failing.
    wait_timeout: int = 3600
    poll_interval: int = 60
    #: Refuse a domain whose size changed by more than this share of the active version's.
    max_rows_change: float | None = None
    #: Refuse when a feature's NULL share moved by more than this (absolute) from the active version's inputs.
    max_null_change: float | None = None
    #: Refuse when a numeric feature's PSI against the active version's inputs exceeds this.
    max_psi: float | None = None

    @property
    def profiles(self) -> bool:
        """Whether the gates compare features, so a run records its inputs' profile."""
        return self.max_null_change is not None or self.max_psi is not None


@dataclass(frozen=True)
class ExecutorSpec:
    """Where a run scores and writes: in this process, or as partitions on a Dask cluster."""

    kind: str = "local"
    #: A running Dask scheduler (``tcp://host:8786``); None: ``$DASK_SCHEDULER_ADDRESS``, else a local cluster.
    address: str | None = None
    #: Worker processes of the local cluster started when there is no address.
    workers: int | None = None
    #: Partitions of the domain; None: four per worker thread.
    partitions: int | None = None


#: ``[notify]`` events: what a run's outcome is called in a job file.
NOTIFY_EVENTS = ("on_failure", "on_success", "on_skip")
#: What a webhook's POST body looks like: the run's facts, a Slack message, or Alertmanager alerts.
NOTIFY_FORMATS = ("json", "slack", "alertmanager")


@dataclass(frozen=True)
class Hook:
    """One way of hearing of a run: a shell command handed the run's facts, and/or a webhook POSTed them."""

    command: str | None = None
    webhook: str | None = None
    #: One of :data:`NOTIFY_FORMATS`; a command always gets the plain JSON facts.
    format: str = "json"
    #: Seconds each of the two may take; None: 30 for a command, 10 for a webhook.
    timeout: float | None = None


@dataclass(frozen=True)
class NotifySpec:
    """The hooks of each outcome. A job without ``[notify]`` takes the jobs directory's ``defaults.toml``."""

    on_failure: tuple[Hook, ...] = ()
    on_success: tuple[Hook, ...] = ()
    on_skip: tuple[Hook, ...] = ()


@dataclass(frozen=True)
class Job:
    """A validated job file."""

    name: str
    path: Path
    domain: DomainSpec
    model: ModelSpec
    output: OutputSpec
    target: str | None = None
    schedule: str | None = None
    timezone: str = "UTC"
    description: str = ""
    audits: AuditSpec = AuditSpec()
    #: Run the ticks missed while no scheduler was up (one run each), instead of only reporting them.
    catchup: bool = False
    #: How late a tick may still start (a busy or restarted scheduler); later ones count as missed.
    misfire_grace_seconds: int = 300
    executor: ExecutorSpec = ExecutorSpec()
    gates: GateSpec = GateSpec()
    #: Times a run tries again after a passing database fault (see :mod:`pipeline.run.materialize`).
    retries: int = 0
    notify: NotifySpec = NotifySpec()


def with_executor(job: Job, **overrides: Any) -> Job:
    """``job`` with the ``[executor]`` settings the caller gives (None keeps the job file's); asking for a
    cluster address or a worker count implies the dask executor."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if (given.get("address") or given.get("workers")) and "kind" not in given:
        given["kind"] = "dask"
    return dataclasses.replace(job, executor=dataclasses.replace(job.executor, **given)) if given else job


_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>[0-9]+))")


def parse_uri(uri: str) -> tuple[str, str | None, int | None]:
    """``(name, alias, version)`` of a registry URI; exactly one of alias and version is set.

    Raises:
        ValueError: not ``models:/NAME@ALIAS`` nor ``models:/NAME/VERSION``.
    """
    match = _URI.fullmatch(uri)
    if match is None:
        raise ValueError(f"must be models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}")
    version = match["version"]
    return match["name"], match["alias"], None if version is None else int(version)
