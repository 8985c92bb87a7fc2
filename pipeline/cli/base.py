"""What every command shares: the group and its global options, the error boundary, the database opener and
table printing. Commands live beside this module, by what they work on: ``runs`` (run, backfill, runs, audit),
``serve`` (versions, activate, rollback, split, history, status, gc), ``scheduling`` (schedule, cron) and
``tools`` (plan, diff, report)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Sequence

import click
from sqlalchemy.engine import Engine

from pipeline.database import schema
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import URL_ENV, make_engine, resolve_url
from pipeline.errors import JobLocked, PipelineError, first_line
from pipeline.jobs import iter_jobs
from pipeline.jobspec import Job

JOBS_ENV = "PIPELINE_JOBS_DIR"
LOCKED_EXIT = 75  # EX_TEMPFAIL: another run holds the table


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class Settings:
    def __init__(self, debug: bool, jobs_dir: str, quiet: bool = False) -> None:
        self.debug = debug
        self.jobs_dir = jobs_dir
        self.quiet = quiet

    def job_for_table(self, table: str) -> Job | None:
        """The job in the jobs directory that writes ``table``, if any."""
        return next((j for j in iter_jobs(self.jobs_dir) if j.output.table == table), None)


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] == "pipeline" or record.levelno >= logging.WARNING


def pipeline_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an error as one line and exit 1; the traceback only with ``--debug``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = click.get_current_context().find_object(Settings)
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise  # usage errors already speak click's language
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


class Databases:
    """A command's way to its database: ``--db``, else ``$PIPELINE_DATABASE_URL``, else the target of the job
    concerned, else the default. Every engine it opens is disposed of when the command ends."""

    def __init__(self, db_url: str | None, settings: Settings, stack: contextlib.ExitStack) -> None:
        self.db_url = db_url
        self.settings = settings
        self._stack = stack

    def url(self, job: Job | None = None) -> str:
        return resolve_url(self.db_url, job.target if job else None)

    def open(self, url: str) -> Engine:
        engine = make_engine(url)
        self._stack.callback(engine.dispose)
        return engine

    def for_job(self, job: Job | None) -> Engine:
        return self.open(self.url(job))

    def for_table(self, table: str) -> Engine:
        """The database of ``table``: the job that writes it names its target unless ``--db`` or the environment
        does. Its bookkeeping tables are brought up to this release, so read commands work on older ones."""
        job = None if self.db_url or os.environ.get(URL_ENV) else self.settings.job_for_table(table)
        engine = self.for_job(job)
        schema.upgrade(engine, dialect_for(engine))
        return engine

    def urls(self, jobs: Iterable[Job]) -> list[str]:
        """Where ``status`` looks: ``--db`` (or the environment), else every job's target (else the default)."""
        if self.db_url or os.environ.get(URL_ENV):
            return [self.url()]
        return sorted({self.url(j) for j in jobs} or {self.url()})


def pass_databases(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the ``--db`` option and, in its place, a :class:`Databases` (as ``db``) that disposes of
    what it opened when the command returns or fails (rq's ``pass_cli_config`` is the model)."""

    @click.option("--db", "db_url", metavar="URL",
                  help=f"Target database URL (default: ${URL_ENV}, else the job's target, "
                       "else sqlite:///predictions.db).")
    @functools.wraps(func)
    def wrapper(*args: Any, db_url: str | None, **kwargs: Any) -> Any:
        settings = click.get_current_context().find_object(Settings)
        with contextlib.ExitStack() as stack:
            return func(*args, db=Databases(db_url, settings, stack), **kwargs)

    return wrapper


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def versions_text(versions: Sequence[int]) -> str:
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
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: one JSON object per log line, for log shippers.")
@click.version_option(package_name="prediction-pipeline")
@click.pass_context
def main(ctx: click.Context, debug: bool, jobs_dir: str, quiet: bool, log_format: str) -> None:
    """Materialize model predictions into versioned tables and flip a pointer.

    \b
    Example:
      pipeline run churn             # score jobs/churn.toml, publish a new version
      pipeline versions churn_scores
      pipeline rollback churn_scores
    """
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    if log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:  # leaves a host application's (or pytest's) handlers alone, as basicConfig does
        logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if not debug:  # other libraries (dask, apscheduler) speak up only to warn
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ours_or_warning)
    ctx.obj = Settings(debug, jobs_dir, quiet)
