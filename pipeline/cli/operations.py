"""Commands that start runs over time: backfill, schedule, cron, and the run history."""

from __future__ import annotations

import sys
from datetime import datetime

import click

from pipeline import backfill as backfills
from pipeline import catalog, scheduler
from pipeline.cli import Settings, db_option, main, pipeline_errors, print_table
from pipeline.db import make_engine, resolve_url
from pipeline.errors import PipelineError
from pipeline.jobs import find_job, load_job


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

    days = backfills.dates(start.date(), end.date())
    bar = None
    if sys.stderr.isatty() and not settings.quiet:  # a bar over the dates, with rate and ETA
        from tqdm import tqdm

        bar = tqdm(total=len(days), desc=loaded.name, unit="date", file=sys.stderr)

    def say(day, done, error) -> None:
        if error is not None:
            line = f"{day}: failed: {error}"
        elif done.skipped:
            line = f"{day}: skipped: {done.skipped}"
        else:
            line = f"{day}: version {done.version} ({done.rows} rows, {done.seconds:.1f}s)"
        if bar is not None:
            bar.write(line)
            bar.update(1)
        else:
            click.echo(line)

    try:
        result = backfills.backfill(loaded, engine, days[0], days[-1], parallel=parallel, force=force,
                                    activate=activate_, on_date=say)
    finally:
        if bar is not None:
            bar.close()
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
    loaded = load_job(find_job(job, settings.jobs_dir)) if job else None
    engine = make_engine(resolve_url(db_url, loaded.target if loaded else None))
    try:
        found = catalog.runs(engine, loaded.name if loaded else None, limit)
    finally:
        engine.dispose()
    print_table(["id", "job", "logical_date", "trigger", "status", "version", "started", "finished", "host/pid",
                 "error"],
                [[r.id, r.job, r.logical_date, r.trigger, r.status, r.version, r.started_at, r.finished_at,
                  f"{r.host}/{r.pid}", r.error] for r in found])
