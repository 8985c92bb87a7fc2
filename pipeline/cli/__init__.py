"""The ``pipeline`` command: each subcommand turns options into arguments and calls one library function.

This module holds the group, the shared options and the error boundary; the commands
live in ``tables.py`` (runs and the pointer) and ``operations.py`` (backfills, the
scheduler, cron, run history)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import click
from sqlalchemy.engine import Engine

from pipeline.materialize import upgrade
from pipeline.db import URL_ENV, make_engine, resolve_url
from pipeline.errors import JobLocked, PipelineError, first_line
from pipeline.jobs import Job, iter_jobs

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
    engine = make_engine(resolve_url(db_url, target))
    upgrade(engine)
    return engine


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


from pipeline.cli import operations, tables, tools  # noqa: E402,F401  (registers the commands)
