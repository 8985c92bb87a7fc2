"""Commands about runs and the pointer: run, versions, activate, rollback, split, history, status, audit, gc."""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import click

from pipeline import catalog, materialize, metrics, pointer, retention, scheduler, state
from pipeline import split as splits
from pipeline.audits import failures
from pipeline.cli import (URL_ENV, Settings, _versions, db_option, job_for_table, main, pipeline_errors,
                          print_table, table_engine)
from pipeline.db import make_engine, redact, resolve_url
from pipeline.errors import AuditError
from pipeline.jobs import EXECUTORS, AuditSpec, find_job, iter_jobs, load_job, with_executor
from pipeline.progress import reporter
from pipeline.versions import labels_text


@main.command()
@click.argument("job")
@click.option("--date", "logical_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Logical date of the run, given to the query as :run_date (default: today, UTC).")
@click.option("--no-activate", is_flag=True, help="Build and check the version, but leave the pointer alone.")
@click.option("--force", is_flag=True, help="Run even if a ready version holds this date with the same model and "
                                            "domain.")
@click.option("--metrics-file", type=click.Path(dir_okay=False), metavar="PATH",
              help="After the run, write Prometheus metrics there (for node_exporter's textfile collector).")
@click.option("--scheduled", is_flag=True, help="Run the tick of the job's schedule that is due now, as cron does: "
                                                "once per tick, and exit 0 if another process has it.")
@click.option("--incremental", is_flag=True, help="Build from the active version: score only new and changed keys, "
                                                  "copy the rest (the model must be the active version's).")
@click.option("--executor", type=click.Choice(EXECUTORS), help="Score here (local, the default) or as partitions "
                                                                  "on a Dask cluster (dask); overrides [executor].")
@click.option("--dask-address", metavar="ADDRESS", help="A running Dask scheduler, e.g. tcp://host:8786 (default: "
                                                         "$DASK_SCHEDULER_ADDRESS, else a local cluster).")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes of the local Dask cluster.")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions of the domain (default: 4 per worker "
                                                               "thread).")
@db_option
@click.pass_obj
@pipeline_errors
def run(settings: Settings, job: str, logical_date: datetime | None, no_activate: bool, force: bool,
        metrics_file: str | None, scheduled: bool, incremental: bool, executor: str | None, dask_address: str | None,
        workers: int | None, partitions: int | None, db_url: str | None) -> None:
    """Score a job's domain into a new version and flip to it.

    JOB is a job file's path or the name of a job in the jobs directory. A run for a
    date that a ready version already holds, with the same model and domain, is
    skipped (exit 0) unless --force. Exits 75 when another run holds the table.

    \b
    Example:
      pipeline run churn --date 2026-01-31
      pipeline run jobs/churn.toml --db postgresql://localhost/app --no-activate
      pipeline run churn --executor dask --dask-address tcp://scheduler:8786
    """
    path = find_job(job, settings.jobs_dir)
    overrides = dict(kind=executor, address=dask_address, workers=workers, partitions=partitions)
    if scheduled:
        if any(v is not None for v in overrides.values()):
            raise click.UsageError("--scheduled runs with the job file's [executor]; drop --executor, "
                                   "--dask-address, --workers and --partitions")
        done = scheduler.run_tick(path, db_url, trigger="cron")
        if done is None:
            click.echo(f"{job}: another process is running this tick; nothing to do")
        elif done.skipped:
            click.echo(f"{done.table or job}: skipped: {done.skipped}")
        else:
            click.echo(f"{done.table}: version {done.version} is active ({done.rows} rows, {done.seconds:.1f}s)")
        return
    loaded = with_executor(load_job(path), **overrides)
    engine = make_engine(resolve_url(db_url, loaded.target))
    result = None
    try:
        with reporter(loaded.output.table, quiet=settings.quiet) as progress:
            result = materialize.run_job(loaded, engine, logical_date=logical_date.date() if logical_date else None,
                                         activate=not no_activate, force=force, progress=progress,
                                         incremental=incremental)
    finally:
        if metrics_file:
            metrics.write_metrics(metrics_file, engine, loaded.name, loaded.output.table, result)
        engine.dispose()
    where = redact(str(engine.url))
    rows = f"{result.rows} rows" + (f": {result.rows - result.copied} scored, {result.copied} copied"
                                    if incremental and not result.skipped else "")
    if result.skipped:
        click.echo(f"{result.table}: skipped: {result.skipped}")
    elif result.activated:
        click.echo(f"{result.table}: version {result.version} is active ({rows}, "
                   f"{result.seconds:.1f}s, previous: {result.previous or 'none'}) on {where}")
    else:
        click.echo(f"{result.table}: version {result.version} is ready, not active ({rows}, "
                   f"{result.seconds:.1f}s) on {where}; `pipeline activate {result.table} {result.version}` "
                   "serves it")


def alias_option(func):
    return click.option("--alias", default=state.DEFAULT_ALIAS, show_default=True,
                        help="Which pointer: champion is the table's own view; another alias serves TABLE__ALIAS.")(func)


@main.command()
@click.argument("table")
@db_option
@pipeline_errors
def versions(table: str, db_url: str | None) -> None:
    """List the versions of a prediction table; * marks the active one.

    \b
    Example:
      pipeline versions churn_scores
    """
    engine = table_engine(db_url, table)
    rows = catalog.versions(engine, table)
    print_table(
        ["", "version", "status", "logical_date", "rows", "model_sha256", "model", "started", "finished", "error",
         "classes", "type changes", "aliases"],
        [["*" if r.active else "", v.version, v.status, v.logical_date, v.row_count, v.model_sha256[:12],
          v.model_path if v.model_source else Path(v.model_path).name, v.started_at, v.finished_at, v.error,
          labels_text(v.output_labels or ()) or None, v.type_changes, ", ".join(r.aliases) or None]
         for r in rows for v in [r.version]],
    )


@main.command()
@click.argument("table")
@click.argument("version", type=click.IntRange(min=1))
@alias_option
@db_option
@pipeline_errors
def activate(table: str, version: int, alias: str, db_url: str | None) -> None:
    """Point a table's view (or an alias view, TABLE__ALIAS) at a retained version.

    \b
    Example:
      pipeline activate churn_scores 2
      pipeline activate churn_scores 3 --alias challenger
    """
    flip = pointer.activate(table_engine(db_url, table), table, version, alias=alias)
    click.echo(f"{pointer.view_name(table, alias)}: version {flip.to_version} is active "
               f"(was {flip.from_version or 'none'})")


@main.command()
@click.argument("table")
@click.option("--to", "to", type=click.IntRange(min=1), help="Version to go back to (default: the previous one).")
@alias_option
@db_option
@pipeline_errors
def rollback(table: str, to: int | None, alias: str, db_url: str | None) -> None:
    """Flip a table back to the previous ready version (or to --to VERSION).

    \b
    Example:
      pipeline rollback churn_scores
      pipeline rollback churn_scores --to 3
    """
    flip = pointer.rollback(table_engine(db_url, table), table, to, alias=alias)
    click.echo(f"{pointer.view_name(table, alias)}: rolled back from version {flip.from_version} to {flip.to_version}")


@main.command()
@click.argument("table")
@click.option("--alias", required=True, help="The alias whose versions serve the split's share (e.g. challenger).")
@click.option("--percent", required=True, type=int, help="Share of keys, 0..100, served by the alias (0 removes "
                                                          "the split).")
@db_option
@pipeline_errors
def split(table: str, alias: str, percent: int, db_url: str | None) -> None:
    """Serve an A/B split in the view TABLE__ab: keys whose ab_bucket is below PERCENT get the alias's row.

    Every key appears once, with variant (the alias or champion) and model_version. A
    key's bucket is a hash of the key, so it stays in its arm across runs and flips.

    \b
    Example:
      pipeline activate churn_scores 7 --alias challenger
      pipeline split churn_scores --alias challenger --percent 20
      pipeline split churn_scores --alias challenger --percent 0    # remove it
    """
    engine = table_engine(db_url, table)
    try:
        found = splits.set_split(engine, table, alias, percent)
    finally:
        engine.dispose()
    if found is None:
        click.echo(f"{table}__ab: removed; {table} serves every key")
    else:
        click.echo(f"{table}__ab: {percent}% of keys from {alias} ({table}__{alias}), the rest from {table}")


@main.command()
@click.argument("table")
@alias_option
@db_option
@pipeline_errors
def history(table: str, alias: str, db_url: str | None) -> None:
    """Show every pointer flip of a table, oldest first.

    \b
    Example:
      pipeline history churn_scores
    """
    flips = catalog.history(table_engine(db_url, table), table, alias)
    print_table(["flipped_at", "from", "to", "reason", "by"],
                [[f.flipped_at, f.from_version, f.to_version, f.reason, f.actor] for f in flips])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per table, for machines.")
@db_option
@click.pass_obj
@pipeline_errors
def status(settings: Settings, as_json: bool, db_url: str | None) -> None:
    """Show every prediction table: what serves, how old it is, the last run, the next tick.

    Without --db it looks in every target named by the job files (and the default).
    Runs that died are found here and marked failed.

    \b
    Example:
      pipeline status --db postgresql://localhost/app
      pipeline status --json
    """
    jobs = iter_jobs(settings.jobs_dir)
    if db_url or os.environ.get(URL_ENV):
        urls = [resolve_url(db_url)]
    else:
        urls = sorted({resolve_url(None, j.target) for j in jobs} or {resolve_url(None)})
    ticks = {j.output.table: scheduler.next_tick(j) for j in jobs if j.schedule}
    rows = []
    for url in urls:
        engine = make_engine(url)
        try:
            materialize.upgrade(engine)
            for table, version in retention.reap(engine):
                click.echo(f"{table}: version {version} was abandoned by a run that died; marked failed", err=True)
            rows.extend((redact(url), s) for s in catalog.status(engine))
        finally:
            engine.dispose()
    now = state.utcnow()
    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(s), "database": url, "next_tick": ticks.get(s.table),
                                "age_seconds": (now - s.activated_at).total_seconds() if s.activated_at else None}
                               for url, s in rows], default=str, indent=2))
        return
    if not rows:
        click.echo(f"no prediction tables yet in {', '.join(redact(u) for u in urls)}")
        return
    print_table(["table", "active", "logical_date", "rows", "model", "age", "last run", "failing", "next tick",
                 "aliases", "database"],
                [[s.table, s.active_version, s.logical_date, s.row_count, (s.model_sha256 or "")[:12] or None,
                  _age(now - s.activated_at) if s.activated_at else None,
                  f"{s.last_run.status} {s.last_run.logical_date}" if s.last_run else None,
                  s.failed_runs or None, ticks.get(s.table),
                  ", ".join([f"{a}=v{v}" for a, v in s.aliases] + ([f"ab {s.split}"] if s.split else [])) or None,
                  url] for url, s in rows])


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@main.command()
@click.argument("table")
@click.argument("version", type=click.IntRange(min=1))
@db_option
@pipeline_errors
def audit(table: str, version: int, db_url: str | None) -> None:
    """Re-run a version's audits (built-in, and those of the job that writes the table).

    Exits 1 when an audit fails. The results are stored with the version.

    \b
    Example:
      pipeline audit churn_scores 3
    """
    job = job_for_table(table)
    results = materialize.audit_version(table_engine(db_url, table), table, version,
                                        job.audits if job else AuditSpec(), output=job.output if job else None)
    print_table(["audit", "result", "detail"], [[r.name, "pass" if r.passed else "FAIL", r.detail] for r in results])
    if any(not r.passed for r in results):
        raise AuditError(f"{table} version {version}: audit failed: {failures(results)}")


@main.command()
@click.argument("table")
@click.option("--keep", type=click.IntRange(min=1),
              help=f"Ready versions to keep (default: the job's [output] keep, else {retention.DEFAULT_KEEP}).")
@db_option
@pipeline_errors
def gc(table: str, keep: int | None, db_url: str | None) -> None:
    """Drop old version tables; never the active version or its rollback target.

    Failed versions lose their partial tables too. A table that another view still
    reads is kept, and said so.

    \b
    Example:
      pipeline gc churn_scores --keep 2
    """
    job = job_for_table(table)
    keep = keep or (job.output.keep if job else retention.DEFAULT_KEEP)
    result = retention.gc(table_engine(db_url, table), table, keep)
    click.echo(f"{table}: retired {_versions(result.retired)}; cleaned failed {_versions(result.cleaned)}")
    for version, why in result.kept.items():
        click.echo(f"{table}: kept version {version}: {why}")
