"""Commands that start runs over time: schedule (a long-running scheduler) and cron (crontab lines)."""

from __future__ import annotations

import click

from pipeline.cli.base import Databases, Settings, fail_for_broken, main, pass_databases, pipeline_errors
from pipeline.errors import JobFileError
from pipeline.scheduling.crontab import crontab


@main.command()
@pass_databases
@click.pass_obj
@pipeline_errors
def schedule(settings: Settings, db: Databases) -> None:
    """Run every job that has a schedule, on its cron, until SIGTERM or Ctrl-C.

    Two schedulers (or a scheduler and cron) run each tick once. On SIGTERM the
    running job finishes, then the process exits 0.

    \b
    Example:
      pipeline --jobs /srv/pipeline/jobs schedule
    """
    from pipeline.scheduling.scheduler import Scheduler

    Scheduler(settings.jobs_dir, db.db_url).serve()


@main.command()
@click.option("--log-dir", default="logs", show_default=True, help="Where each job's log file goes.")
@pass_databases
@click.pass_obj
@pipeline_errors
def cron(settings: Settings, log_dir: str, db: Databases) -> None:
    """Print crontab lines that run every scheduled job, for `crontab -e`.

    Each line runs `pipeline run JOB --scheduled`: the run takes the table's lock and
    records its tick, so it never doubles up with another cron entry or a scheduler.
    A job file that does not load is named on stderr, and the exit status is 1.

    \b
    Example:
      pipeline cron > /tmp/lines && crontab /tmp/lines
    """
    broken: list[JobFileError] = []
    click.echo("\n".join(crontab(settings.jobs_dir, log_dir, db.db_url, on_error=broken.append)))
    fail_for_broken(broken, "left out of the crontab; fix them and run `pipeline cron` again")
