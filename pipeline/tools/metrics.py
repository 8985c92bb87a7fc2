"""Prometheus text-format metrics for node_exporter's textfile collector, written after a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlalchemy.engine import Engine

from pipeline.errors import PipelineError
from pipeline.serve import catalog

if TYPE_CHECKING:
    from pipeline.run.materialize import RunResult

log = logging.getLogger("pipeline")


def write_metrics(path: str | Path, engine: Engine, job: str, table: str, result: RunResult | None) -> None:
    """Write the metrics of ``job``'s latest run (``result`` is None when it failed) to ``path``.

    The file is replaced atomically (prometheus_client writes a temporary file and renames
    it), so the collector never reads half a file. Use one file per job.
    """
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = {"job": job, "table": table}
    gauges: dict[str, Gauge] = {}

    def gauge(name: str, doc: str, value: float, **extra: str) -> None:
        if name not in gauges:
            gauges[name] = Gauge(name, doc, [*labels, *extra], registry=registry)
        gauges[name].labels(**labels, **extra).set(value)

    gauge("pipeline_last_run_success", "1 if the job's latest run succeeded (or had nothing to do), else 0",
          1.0 if result is not None else 0.0)
    if result is not None and not result.skipped:
        gauge("pipeline_run_rows", "Rows written by the latest run", result.rows)
        gauge("pipeline_run_seconds", "Duration of the latest run", result.seconds)
        for phase, seconds in result.phases.items():
            gauge("pipeline_phase_seconds", "Duration of each phase of the latest run", seconds, phase=phase)
    try:
        _from_database(gauge, engine, job, table)
    except PipelineError as exc:  # the database failed the run too: its outcome is written all the same
        log.warning("%s: metrics: the figures read from the database are left out: %s", job, exc)
    write_to_textfile(str(path), registry)


def _from_database(gauge: Callable[..., None], engine: Engine, job: str, table: str) -> None:
    """The gauges read from the bookkeeping tables: the last success, what serves, the latest audits."""
    success = next((r for r in catalog.runs(engine, job, limit=200) if r.status in ("succeeded", "skipped")), None)
    if success is not None and success.finished_at is not None:
        gauge("pipeline_last_success_timestamp_seconds", "When the job last finished a run successfully",
              success.finished_at.timestamp())
    status = next((s for s in catalog.status(engine) if s.table == table), None)
    if status is not None and status.active_version is not None:
        gauge("pipeline_active_version", "The version the table's view serves", status.active_version)
        gauge("pipeline_active_rows", "Rows in the active version", status.row_count or 0)
    if status is not None and status.latest_version is not None:
        failed = sum(not a.passed for a in catalog.audits(engine, table, status.latest_version))
        gauge("pipeline_audit_failures", "Audits the table's latest version failed", failed)
