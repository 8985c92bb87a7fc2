"""The ``pipeline`` command: each subcommand turns options into arguments and calls one library function."""

from __future__ import annotations

import functools
import logging
import os
import sys
from datetime import datetime
from typing import Any, Callable, Sequence

import click
from sqlalchemy.engine import Engine

from pipeline import backfill as backfills
from pipeline import catalog, materialize, pointer, retention, scheduler
from pipeline.db import make_engine, redact, resolve_url, URL_ENV
from pipeline.audits import failures
from pipeline.errors import AuditError, JobLocked, PipelineError, first_line
from pipeline.jobs import AuditSpec, Job, find_job, iter_jobs, load_job

JOBS_ENV = "PIPELINE_JOBS_DIR"
LOCKED_EXIT = 75  # EX_TEMPFAIL: another run holds the table


class Settings:
    def __init__(self, debug: bool, jobs_dir: str) -> None:
        self.debug = debug
        self.jobs_dir = jobs_dir


def pipeline_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an error as one line and exit 1; the traceback only with ``--debug``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = click.get_current_context().find_object(Settings)
        try:
            return func(*args, **kwargs)
        except PipelineError as exc:
            if settings and settings.debug:
                raise
            error = click.ClickException(str(exc))
            if isinstance(exc, JobLocked):
                error.exit_code = LOCKED_EXIT  # a temporary failure: try again later
            raise error from None
        except Exception as exc:  # a bug: still one line, with the way to see more
            if settings and settings.debug:
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {first_line(exc)} (run `pipeline --debug ...` for the traceback)"
            ) from None

    return wrapper


def db_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--db", "db_url", metavar="URL",
                        help=f"Target database URL (default: ${URL_ENV}, else the job's target, "
                             "else sqlite:///predictions.db).")(func)


def job_for_table(table: str) -> Job | None:
    """The job in the jobs directory that writes ``table``, if any."""
    settings = click.get_current_context().find_object(Settings)
    return next((j for j in iter_jobs(settings.jobs_dir) if j.output.table == table), None)


def table_engine(db_url: str | None, table: str) -> Engine:
    """The database of ``table``: ``--db``, the environment, else the target of the job that writes it."""
    target = None
    if not (db_url or os.environ.get(URL_ENV)):
        job = job_for_table(table)
        target = job.target if job else None
    return make_engine(resolve_url(db_url, target))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _versions(versions: Sequence[int]) -> str:
    return ", ".join(map(str, versions)) or "none"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("--jobs", "jobs_dir", default=lambda: os.environ.get(JOBS_ENV, "jobs"), show_default="jobs",
              metavar="DIR", help=f"Where job files live (also ${JOBS_ENV}).")
@click.option("-q", "--quiet", is_flag=True, help="Only print results and errors.")
@click.version_option(package_name="prediction-pipeline")
@click.pass_context
def main(ctx: click.Context, debug: bool, jobs_dir: str, quiet: bool) -> None:
    """Materialize model predictions into versioned tables and flip a pointer.

    \b
    Example:
      pipeline run churn             # score jobs/churn.toml, publish a new version
      pipeline versions churn_scores
      pipeline rollback churn_scores
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    ctx.obj = Settings(debug, jobs_dir)


@main.command()
@click.argument("job")
@click.option("--date", "logical_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Logical date of the run, given to the query as :run_date (default: today, UTC).")
@click.option("--no-activate", is_flag=True, help="Build and check the version, but leave the pointer alone.")
@click.option("--force", is_flag=True, help="Run even if a ready version holds this date with the same model and "
                                            "domain.")
@click.option("--scheduled", is_flag=True, help="Run the tick of the job's schedule that is due now, as cron does: "
                                                "once per tick, and exit 0 if another process has it.")
@db_option
@click.pass_obj
@pipeline_errors
def run(settings: Settings, job: str, logical_date: datetime | None, no_activate: bool, force: bool,
        scheduled: bool, db_url: str | None) -> None:
    """Score a job's domain into a new version and flip to it.

    JOB is a job file's path or the name of a job in the jobs directory. A run for a
    date that a ready version already holds, with the same model and domain, is
    skipped (exit 0) unless --force. Exits 75 when another run holds the table.

    \b
    Example:
      pipeline run churn --date 2026-01-31
      pipeline run jobs/churn.toml --db postgresql://localhost/app --no-activate
    """
    path = find_job(job, settings.jobs_dir)
    if scheduled:
        done = scheduler.run_tick(path, db_url, trigger="cron")
        if done is None:
            click.echo(f"{job}: another process is running this tick; nothing to do")
        elif done.skipped:
            click.echo(f"{done.table or job}: skipped: {done.skipped}")
        else:
            click.echo(f"{done.table}: version {done.version} is active ({done.rows} rows, {done.seconds:.1f}s)")
        return
    loaded = load_job(path)
    engine = make_engine(resolve_url(db_url, loaded.target))
    try:
        result = materialize.run_job(loaded, engine, logical_date=logical_date.date() if logical_date else None,
                                     activate=not no_activate, force=force)
    finally:
        engine.dispose()
    where = redact(str(engine.url))
    if result.skipped:
        click.echo(f"{result.table}: skipped: {result.skipped}")
    elif result.activated:
        click.echo(f"{result.table}: version {result.version} is active ({result.rows} rows, "
                   f"{result.seconds:.1f}s, previous: {result.previous or 'none'}) on {where}")
    else:
        click.echo(f"{result.table}: version {result.version} is ready, not active ({result.rows} rows, "
                   f"{result.seconds:.1f}s) on {where}; `pipeline activate {result.table} {result.version}` "
                   "serves it")


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
        ["", "version", "status", "logical_date", "rows", "model_sha256", "started", "finished", "error"],
        [["*" if r.active else "", v.version, v.status, v.logical_date, v.row_count, v.model_sha256[:12],
          v.started_at, v.finished_at, v.error] for r in rows for v in [r.version]],
    )


@main.command()
@click.argument("table")
@click.argument("version", type=click.IntRange(min=1))
@db_option
@pipeline_errors
def activate(table: str, version: int, db_url: str | None) -> None:
    """Point a table's view at a retained version.

    \b
    Example:
      pipeline activate churn_scores 2
    """
    flip = pointer.activate(table_engine(db_url, table), table, version)
    click.echo(f"{table}: version {flip.to_version} is active (was {flip.from_version or 'none'})")


@main.command()
@click.argument("table")
@click.option("--to", "to", type=click.IntRange(min=1), help="Version to go back to (default: the previous one).")
@db_option
@pipeline_errors
def rollback(table: str, to: int | None, db_url: str | None) -> None:
    """Flip a table back to the previous ready version (or to --to VERSION).

    \b
    Example:
      pipeline rollback churn_scores
      pipeline rollback churn_scores --to 3
    """
    flip = pointer.rollback(table_engine(db_url, table), table, to)
    click.echo(f"{table}: rolled back from version {flip.from_version} to {flip.to_version}")


@main.command()
@click.argument("table")
@db_option
@pipeline_errors
def history(table: str, db_url: str | None) -> None:
    """Show every pointer flip of a table, oldest first.

    \b
    Example:
      pipeline history churn_scores
    """
    flips = catalog.history(table_engine(db_url, table), table)
    print_table(["flipped_at", "from", "to", "reason", "by"],
                [[f.flipped_at, f.from_version, f.to_version, f.reason, f.actor] for f in flips])


@main.command()
@db_option
@click.pass_obj
@pipeline_errors
def status(settings: Settings, db_url: str | None) -> None:
    """Show every prediction table: the active version and how the latest run went.

    Without --db it looks in every target named by the job files (and the default).

    \b
    Example:
      pipeline status --db postgresql://localhost/app
    """
    if db_url or os.environ.get(URL_ENV):
        urls = [resolve_url(db_url)]
    else:
        urls = sorted({resolve_url(None, j.target) for j in iter_jobs(settings.jobs_dir)} or {resolve_url(None)})
    rows = []
    for url in urls:
        engine = make_engine(url)
        try:
            for table, version in retention.reap(engine):
                click.echo(f"{table}: version {version} was abandoned by a run that died; marked failed", err=True)
            rows.extend((redact(url), s) for s in catalog.status(engine))
        finally:
            engine.dispose()
    if not rows:
        click.echo(f"no prediction tables yet in {', '.join(redact(u) for u in urls)}")
        return
    print_table(["table", "active", "logical_date", "rows", "model_sha256", "activated", "latest", "database"],
                [[s.table, s.active_version, s.logical_date, s.row_count, (s.model_sha256 or "")[:12] or None,
                  s.activated_at, f"v{s.latest_version} {s.latest_status}", url] for url, s in rows])


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
                                        job.audits if job else AuditSpec())
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
    keep = keep or (job.output.keep if job else None) or retention.DEFAULT_KEEP
    result = retention.gc(table_engine(db_url, table), table, keep)
    click.echo(f"{table}: retired {_versions(result.retired)}; cleaned failed {_versions(result.cleaned)}")
    for version, why in result.kept.items():
        click.echo(f"{table}: kept version {version}: {why}")


@main.command()
@click.argument("job")
@click.option("--start", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="First logical date.")
@click.option("--end", required=True, type=click.DateTime(formats=["%Y-%m-%d"]), help="Last logical date.")
@click.option("--parallel", default=1, show_default=True, type=click.IntRange(min=1), help="Dates run at once.")
@click.option("--force", is_flag=True, help="Redo dates that already have a ready version.")
@click.option("--activate", "activate_", type=click.Choice(backfills.ACTIVATE), default="latest", show_default=True,
              help="latest: point the view at the newest date's version, unless it already serves a newer date.")
@db_option
@click.pass_obj
@pipeline_errors
def backfill(settings: Settings, job: str, start: datetime, end: datetime, parallel: int, force: bool,
             activate_: str, db_url: str | None) -> None:
    """Run a job once per logical date from --start to --end.

    Done dates are skipped, so running it again redoes only the dates that failed
    (or were not reached before Ctrl-C). Exits 1 if a date failed.

    \b
    Example:
      pipeline backfill churn --start 2026-01-01 --end 2026-01-31 --parallel 2
    """
    loaded = load_job(find_job(job, settings.jobs_dir))
    engine = make_engine(resolve_url(db_url, loaded.target))

    def say(day, done, error) -> None:
        if error is not None:
            click.echo(f"{day}: failed: {error}")
        elif done.skipped:
            click.echo(f"{day}: skipped: {done.skipped}")
        else:
            click.echo(f"{day}: version {done.version} ({done.rows} rows, {done.seconds:.1f}s)")

    try:
        result = backfills.backfill(loaded, engine, start.date(), end.date(), parallel=parallel, force=force,
                                    activate=activate_, on_date=say)
    finally:
        engine.dispose()
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
@db_option
@click.pass_obj
@pipeline_errors
def schedule(settings: Settings, db_url: str | None) -> None:
    """Run every job that has a schedule, on its cron, until SIGTERM or Ctrl-C.

    Two schedulers (or a scheduler and cron) run each tick once. On SIGTERM the
    running job finishes, then the process exits 0.

    \b
    Example:
      pipeline --jobs /srv/pipeline/jobs schedule
    """
    scheduler.Scheduler(settings.jobs_dir, db_url).serve()


@main.command()
@click.option("--log-dir", default="logs", show_default=True, help="Where each job's log file goes.")
@click.pass_obj
@pipeline_errors
def cron(settings: Settings, log_dir: str) -> None:
    """Print crontab lines that run every scheduled job, for `crontab -e`.

    Each line runs `pipeline run JOB --scheduled`: the run takes the table's lock and
    records its tick, so it never doubles up with another cron entry or a scheduler.

    \b
    Example:
      pipeline cron >> /tmp/lines && crontab /tmp/lines
    """
    click.echo("\n".join(scheduler.crontab(settings.jobs_dir, log_dir)))


@main.command()
@click.argument("job", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@db_option
@click.pass_obj
@pipeline_errors
def runs(settings: Settings, job: str | None, limit: int, db_url: str | None) -> None:
    """Show the run history (newest first), for one job or all.

    \b
    Example:
      pipeline runs churn --limit 10
    """
    target = load_job(find_job(job, settings.jobs_dir)).target if job and not db_url else None
    engine = make_engine(resolve_url(db_url, target))
    try:
        found = catalog.runs(engine, load_job(find_job(job, settings.jobs_dir)).name if job else None, limit)
    finally:
        engine.dispose()
    print_table(["id", "job", "logical_date", "trigger", "status", "version", "started", "finished", "host/pid",
                 "error"],
                [[r.id, r.job, r.logical_date, r.trigger, r.status, r.version, r.started_at, r.finished_at,
                  f"{r.host}/{r.pid}", r.error] for r in found])
