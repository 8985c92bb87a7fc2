"""Commands that make versions and show runs: run, backfill, runs, audit."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli.base import Databases, Settings, main, pass_databases, pipeline_errors, print_table
from pipeline.cli.progress import date_reporter, reporter
from pipeline.database.engines import redact
from pipeline.errors import AuditError, JobFileError, JobLocked, PipelineError, first_line
from pipeline.jobs import find_job, load_job
from pipeline.jobspec import EXECUTORS, AuditSpec, Job, with_executor
from pipeline.scheduling import ACTIVATE

if TYPE_CHECKING:
    from pipeline.run.materialize import RunResult


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
                                                  "copy the rest (the model must be the active version's); with "
                                                  "[domain] changed, read only the changed rows.")
@click.option("--full", is_flag=True, help="A full run, even where the job's [domain] incremental makes runs top-ups.")
@click.option("--executor", type=click.Choice(EXECUTORS), help="Score here (local, the default) or as partitions "
                                                                  "on a Dask cluster (dask); overrides [executor].")
@click.option("--dask-address", metavar="ADDRESS", help="A running Dask scheduler, e.g. tcp://host:8786 (default: "
                                                         "$DASK_SCHEDULER_ADDRESS, else a local cluster).")
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes of the local Dask cluster.")
@click.option("--partitions", type=click.IntRange(min=1), help="Partitions of the domain (default: 4 per worker "
                                                               "thread).")
@pass_databases
@click.pass_obj
@pipeline_errors
def run(settings: Settings, job: str, logical_date: datetime | None, no_activate: bool, force: bool,
        metrics_file: str | None, scheduled: bool, incremental: bool, full: bool, executor: str | None,
        dask_address: str | None, workers: int | None, partitions: int | None, db: Databases) -> None:
    """Score a job's domain into a new version and flip to it.

    JOB is a job file's path or the name of a job in the jobs directory. A run for a
    date that a ready version already holds, with the same model and domain, is
    skipped (exit 0) unless --force. Exits 75 when another run holds the table.

    \b
    Example:
      pipeline run churn --date 2026-01-31
      pipeline run jobs/churn.toml --db postgresql://localhost/app --no-activate
      pipeline run churn --executor dask --dask-address tcp://scheduler:8786
      pipeline run churn --incremental
    """
    if incremental and full:
        raise click.UsageError("--incremental and --full ask for opposite runs; give one")
    if metrics_file is not None and not Path(metrics_file).parent.is_dir():  # written after the run: too late then
        raise click.BadParameter(f"folder {Path(metrics_file).parent} does not exist", param_hint="'--metrics-file'")
    path = find_job(job, settings.jobs_dir)
    overrides = dict(kind=executor, address=dask_address, workers=workers, partitions=partitions)
    if scheduled:
        if any(v is not None for v in overrides.values()) or incremental or full:
            raise click.UsageError("--scheduled runs with the job file's [executor] and [domain] incremental; drop "
                                   "--executor, --dask-address, --workers, --partitions, --incremental and --full")
        from pipeline.scheduling.scheduler import run_tick

        try:
            done = run_tick(path, db.db_url, trigger="cron")
        except PipelineError:
            _write_metrics(metrics_file, db, load_job(path), None)
            raise
        if done is None:  # another run has the table (this tick's, and writes its metrics; or another one's)
            click.echo(f"{job}: another run holds the table (this tick's, or another); nothing to do")
            return
        _write_metrics(metrics_file, db, load_job(path), done)
        if done.full_because:
            click.echo(f"{done.table}: a full run, not a top-up: {done.full_because}")
        if done.skipped:
            click.echo(f"{done.table or job}: skipped: {done.skipped}")
        else:
            click.echo(f"{done.table}: version {done.version} is active ({done.rows} rows, {done.seconds:.1f}s)")
        return
    from pipeline.run.materialize import run_job  # pandas and the models' libraries: only for a run

    loaded = with_executor(load_job(path), **overrides)
    engine = db.for_job(loaded, create=True)
    try:
        with reporter(loaded.output.table, quiet=settings.quiet) as progress:
            result = run_job(loaded, engine, logical_date=logical_date.date() if logical_date else None,
                             activate=not no_activate, force=force, progress=progress, incremental=incremental,
                             full=full)
    except JobLocked:
        raise  # nothing was done: the run holding the table writes its metrics, as with --scheduled
    except BaseException:
        _write_metrics(metrics_file, db, loaded, None)
        raise
    _write_metrics(metrics_file, db, loaded, result)
    where = redact(str(engine.url))
    carried = "copied" if result.lineage is None else f"kept in lineage {result.lineage}"
    rows = f"{result.rows} rows" + (f": {result.rows - result.copied} scored, {result.copied} {carried}"
                                    if result.top_up and not result.skipped else "")
    if result.full_because:
        click.echo(f"{result.table}: a full run, not a top-up: {result.full_because}")
    if result.skipped:
        click.echo(f"{result.table}: skipped: {result.skipped}")
    elif result.activated:
        click.echo(f"{result.table}: version {result.version} is active ({rows}, "
                   f"{result.seconds:.1f}s, previous: {result.previous or 'none'}) on {where}")
    else:
        click.echo(f"{result.table}: version {result.version} is ready, not active ({rows}, "
                   f"{result.seconds:.1f}s) on {where}; `pipeline activate {result.table} {result.version}` "
                   "serves it")


def _write_metrics(metrics_file: str | None, db: Databases, job: Job, result: RunResult | None) -> None:
    """A run's metrics, when ``--metrics-file`` asks for them (``result`` None: the run failed). A file that cannot
    be written is said on stderr, and neither fails a run that succeeded nor hides why one failed."""
    if metrics_file:
        from pipeline.tools.metrics import write_metrics

        try:
            write_metrics(metrics_file, db.for_job(job, create=True), job.name, job.output.table, result)
        except (OSError, PipelineError) as exc:
            click.echo(f"Warning: --metrics-file {metrics_file} was not written: {first_line(exc)}",
                       err=True)


@main.command()
@click.argument("job")
@click.option("--start", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="First logical date.")
@click.option("--end", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="Last logical date.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(min=1), help="Dates run at once.")
@click.option("--force", is_flag=True, help="Redo dates that already have a ready version.")
@click.option("--activate", "activate_", type=click.Choice(ACTIVATE), default="latest", show_default=True,
              help="latest: point the view at the newest date's version, unless it already serves a newer date.")
@pass_databases
@click.pass_obj
@pipeline_errors
def backfill(settings: Settings, job: str, start: datetime, end: datetime, parallel: int, force: bool,
             activate_: str, db: Databases) -> None:
    """Run a job once per logical date from --start to --end.

    Done dates are skipped, so running it again redoes only the dates that failed
    (or were not reached before Ctrl-C). Exits 1 if a date failed.

    \b
    Example:
      pipeline backfill churn --start 2026-01-01 --end 2026-01-31 --parallel 2
    """
    loaded = load_job(find_job(job, settings.jobs_dir))
    from pipeline.scheduling import backfill as backfills

    days = backfills.dates(start.date(), end.date())

    def line(done, error) -> str:
        if error is not None:
            return f"failed: {error}"
        if done.skipped:
            return f"skipped: {done.skipped}"
        return f"version {done.version} ({done.rows} rows, {done.seconds:.1f}s)"

    with date_reporter(loaded.name, len(days), quiet=settings.quiet) as say:
        result = backfills.backfill(loaded, db.for_job(loaded, create=True), days[0], days[-1], parallel=parallel,
                                    force=force, activate=activate_,
                                    on_date=lambda day, done, error: say(f"{day}: {line(done, error)}"))
    if result.flip is not None:
        click.echo(f"{loaded.output.table}: version {result.flip.to_version} is active "
                   f"(was {result.flip.from_version or 'none'})")
    elif result.kept_pointer:
        click.echo(f"{loaded.output.table}: pointer left alone: {result.kept_pointer}")
    if result.interrupted:
        raise click.ClickException("interrupted; run the same backfill again to resume")
    if result.failed:
        raise PipelineError(f"{len(result.failed)} of {len(result.failed) + len(result.done)} date(s) failed: "
                            f"{', '.join(map(str, sorted(result.failed)))}; run the backfill again to retry them")


@main.command()
@click.argument("job", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@pass_databases
@click.pass_obj
@pipeline_errors
def runs(settings: Settings, job: str | None, limit: int, db: Databases) -> None:
    """Show the run history (newest first), for one job or all.

    JOB is a job file's path or a job's name; a name without a file in the jobs directory
    (a job run from elsewhere) is looked up in the database given by --db.

    \b
    Example:
      pipeline runs churn --limit 10
    """
    loaded = _job_if_any(job, settings.jobs_dir, db.named)
    engine = db.for_job(loaded)
    from pipeline.serve import catalog

    found = catalog.runs(engine, loaded.name if loaded else job, limit)
    if not found:
        click.echo(f"no runs{' of ' + job if job else ''} recorded in {redact(str(engine.url))}")
        return
    print_table(["id", "job", "logical_date", "trigger", "status", "version", "tries", "started", "finished",
                 "host/pid", "gates", "error"],
                [[r.id, r.job, r.logical_date, r.trigger, r.status, r.version, 1 + len(r.retries or ()), r.started_at,
                  r.finished_at, f"{r.host}/{r.pid}", r.gates_summary, r.error] for r in found])
def _job_if_any(job: str | None, jobs_dir: str, named: bool) -> Job | None:
    """The job ``job`` names; None for a bare name that no file in ``jobs_dir`` holds (its runs are still in
    the database), or without one. With a database ``named``, a bare name whose file does not load (its model
    gone, say: when its history is wanted most) is read by name, with a warning."""
    if job is None:
        return None
    bare = not (job.endswith(".toml") or os.sep in job)
    try:
        path = find_job(job, jobs_dir)
    except JobFileError:
        if not bare:
            raise
        return None
    try:
        return load_job(path)
    except JobFileError as exc:
        if not (bare and named):
            raise
        click.echo(f"Warning: {exc}; its runs are read by the name {job!r}", err=True)
        return None


@main.command()
@click.argument("table")
@click.argument("version", type=click.IntRange(min=1))
@pass_databases
@click.pass_obj
@pipeline_errors
def audit(settings: Settings, table: str, version: int, db: Databases) -> None:
    """Re-run a version's audits (built-in, and those of the job that writes the table).

    Exits 1 when an audit fails. The results are stored with the version.

    \b
    Example:
      pipeline audit churn_scores 3
    """
    job = db.job_for_table(table)
    from pipeline.run.audits import audit_version, failures

    results = audit_version(db.for_table(table), table, version, job.audits if job else AuditSpec(),
                            output=job.output if job else None)
    print_table(["audit", "result", "detail"], [[r.name, "pass" if r.passed else "FAIL", r.detail] for r in results])
    if any(not r.passed for r in results):
        raise AuditError(f"{table} version {version}: audit failed: {failures(results)}")
