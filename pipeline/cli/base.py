"""What every command shares: the group and its global options, the error boundary, the database opener and
table printing. Commands live beside this module, by what they work on: ``runs`` (run, backfill, runs, audit),
``serve`` (versions, activate, rollback, split, history, status, gc), ``scheduling`` (schedule, cron) and
``tools`` (validate, jobs, plan, diff, report)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import click

from pipeline.database.engines import DEFAULT_URL, URL_ENV, database_of, make_engine, missing_file, redact, resolve_url
from pipeline.errors import HidePasswords, JobLocked, PipelineError, first_line, hide_in_traceback
from pipeline.jobs import iter_jobs
from pipeline.jobspec import Job

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

JOBS_ENV = "PIPELINE_JOBS_DIR"
LOCKED_EXIT = 75  # EX_TEMPFAIL: another run holds the table


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message (and the exception, as the handler's
    :class:`HidePasswords` filter left it)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry)


class Settings:
    """The global options, from before the command's name or after it (the later wins)."""

    def __init__(self, debug: bool, jobs_dir: str, quiet: bool = False, log_format: str = "text",
                 db_url: str | None = None) -> None:
        self.debug = debug
        self.jobs_dir = jobs_dir
        self.quiet = quiet
        self.log_format = log_format
        self.db_url = db_url

    def jobs_for_table(self, table: str) -> list[Job]:
        """The jobs in the jobs directory that write ``table``."""
        return [j for j in iter_jobs(self.jobs_dir) if j.output.table == table]


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] == "pipeline" or record.levelno >= logging.WARNING


_HIDE_PASSWORDS = HidePasswords()


def configure_logging(settings: Settings) -> None:
    """Log to stderr at the level the options ask for; again when a command's own options change it. Every
    handler masks passwords, in what any library logs (a driver's error quoting a URL, a traceback)."""
    level = logging.DEBUG if settings.debug else logging.WARNING if settings.quiet else logging.INFO
    if settings.log_format == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:  # leaves a host application's (or pytest's) handlers alone, as basicConfig does
        logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger().setLevel(level)
    for handler in logging.getLogger().handlers:  # other libraries (dask, apscheduler) speak up only to warn
        handler.removeFilter(_ours_or_warning)
        handler.removeFilter(_HIDE_PASSWORDS)
        handler.addFilter(_HIDE_PASSWORDS)
        if not settings.debug:
            handler.addFilter(_ours_or_warning)


def pipeline_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print an error as one line and exit 1; the traceback only with ``--debug``. Passwords are masked in
    both."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings = click.get_current_context().find_object(Settings)
        try:
            return func(*args, **kwargs)
        except (click.ClickException, BrokenPipeError):
            raise  # usage errors already speak click's language; click ends quietly when stdout's reader left
        except PipelineError as exc:
            if settings and settings.debug:
                hide_in_traceback(exc)
                raise
            error = click.ClickException(str(exc))
            if isinstance(exc, JobLocked):
                error.exit_code = LOCKED_EXIT  # a temporary failure: try again later
            raise error from None
        except Exception as exc:  # a bug: still one line, with the way to see more
            if settings and settings.debug:
                hide_in_traceback(exc)
                raise
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {first_line(exc)} (run `pipeline --debug ...` for the traceback)"
            ) from None

    return wrapper


#: What a command says when it does not know which database to look at.
HOW_TO_POINT = (f"name it with --db URL or ${URL_ENV}, or run the command from the folder whose jobs/ writes the "
                "table")


def writers_of(jobs: Sequence[Job], table: str, url: str | None, jobs_dir: str) -> list[Job]:
    """The jobs of ``jobs`` that write ``table`` to ``url``: all of them, where they all write it to one database
    (``--db`` or the environment then overrides the target, as for a run); else those whose target is ``url``,
    compared as databases, not as text. Raises PipelineError when they write it to different databases and ``url``
    is none of them (or no database was named), naming the jobs: which table is meant, only the user can say."""
    writing = [j for j in jobs if j.output.table == table]
    if len({database_of(j.target or DEFAULT_URL) for j in writing}) <= 1:
        return writing
    if url is not None:
        found = [j for j in writing if database_of(j.target or DEFAULT_URL) == database_of(url)]
        if found:
            return found
    written = ", ".join(f"{j.path.name} to {redact(j.target or DEFAULT_URL)}" for j in writing)
    none = "" if url is None else f", none to {redact(url)}"
    raise PipelineError(f"jobs in {jobs_dir}/ write {table!r} to different databases ({written}){none}; "
                        f"name one with --db URL or ${URL_ENV}")


def writer_of(jobs: Sequence[Job], table: str, url: str | None, jobs_dir: str) -> Job | None:
    """The first job of :func:`writers_of`, whose keep and audits a table command follows."""
    return next(iter(writers_of(jobs, table, url, jobs_dir)), None)


class Databases:
    """A command's way to its database: ``--db``, else ``$PIPELINE_DATABASE_URL``, else the target of the job
    concerned, else the default. It opens one engine per database and disposes of it when the command ends.

    Only a run creates a database: any other command refuses a SQLite file that does not exist (saying which),
    unless ``--db`` names it."""

    def __init__(self, db_url: str | None, settings: Settings, stack: contextlib.ExitStack) -> None:
        self.db_url = db_url
        self.settings = settings
        self._stack = stack
        self._engines: dict[str, Engine] = {}

    @property
    def named(self) -> bool:
        """Whether ``--db`` or the environment names the database, before any job's target."""
        return bool(self.db_url or os.environ.get(URL_ENV))

    def url(self, job: Job | None = None) -> str:
        return resolve_url(self.db_url, job.target if job else None)

    def absent(self, url: str) -> Path | None:
        """The SQLite file ``url`` names when it does not exist and this command may not make it (no ``--db``)."""
        return None if self.db_url else missing_file(url)

    def open(self, url: str, create: bool = False) -> Engine:
        missing = None if create else self.absent(url)
        if missing is not None:
            raise PipelineError(f"no database at {redact(url)} ({missing} does not exist); {HOW_TO_POINT}")
        if url not in self._engines:
            from pipeline.database.dialects import dialect_for

            engine = self._engines[url] = make_engine(url)
            self._stack.callback(engine.dispose)
            dialect_for(engine)  # a database that cannot hold prediction tables is refused before any query
        return self._engines[url]

    def for_job(self, job: Job | None, create: bool = False) -> Engine:
        return self.open(self.url(job), create)

    def for_checking(self, job: Job) -> tuple[Engine, str | None]:
        """The job's database for a command that checks a run without writing (validate, plan), and what it should
        say of it: a SQLite file that does not exist yet (a run creates it) is stood in for by an empty database
        in memory, rather than made or refused."""
        url = self.url(job)
        if self.absent(url) is None:
            return self.for_job(job), None
        return self.open("sqlite://"), f"{redact(url)} does not exist yet (a run creates it)"

    def for_reading(self, url: str) -> Engine:
        """An existing database whose bookkeeping tables are brought up to this release, so that read commands
        work on one an older release made."""
        from pipeline.database import schema
        from pipeline.database.dialects import dialect_for

        engine = self.open(url)
        schema.upgrade(engine, dialect_for(engine))
        return engine

    def job_for_table(self, table: str) -> Job | None:
        """The job in the jobs directory that writes ``table`` to the database this command reads (see
        :func:`writer_of`)."""
        return writer_of(self.settings.jobs_for_table(table), table, self.url() if self.named else None,
                         self.settings.jobs_dir)

    def for_table(self, table: str) -> Engine:
        """The database of ``table`` (see :meth:`for_reading`): the job that writes it names its target unless
        ``--db`` or the environment does."""
        job = None if self.named else self.job_for_table(table)
        url = self.url(job)
        if job is None and not self.named and missing_file(url) is not None:
            raise PipelineError(f"no job in {self.settings.jobs_dir}/ writes {table!r}, and no database was named "
                                f"(the default {redact(url)} does not exist); {HOW_TO_POINT}")
        return self.for_reading(url)

    def urls(self, jobs: Iterable[Job]) -> list[str]:
        """Where ``status`` looks: ``--db`` (or the environment), else every job's target (else the default)."""
        if self.named:
            return [self.url()]
        return sorted({self.url(j) for j in jobs} or {self.url()})


def _global_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes before its name and after it, so each ``--help`` lists them."""
    for option in reversed([
        click.option("--db", "db_url", metavar="URL",
                     help=f"Target database URL (default: ${URL_ENV}, else the job's target, "
                          "else sqlite:///predictions.db)."),
        click.option("--jobs", "jobs_dir", metavar="DIR",
                     help=f"Where job files live (also ${JOBS_ENV}; default: jobs)."),
        click.option("-q", "--quiet", is_flag=True, default=None, help="Only print results and errors."),
        click.option("--debug", is_flag=True, default=None, help="Show tracebacks and debug logs."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default=None,
                     help="json: one JSON object per log line, for log shippers (default: text)."),
    ]):
        func = option(func)
    return func


def pass_databases(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give a command the global options (``--db``, ``--jobs``, ``--quiet``, ``--debug``, ``--log-format``,
    which may also come before its name) and, as ``db``, a :class:`Databases` that disposes of what it opened
    when the command returns or fails (rq's ``pass_cli_config`` is the model)."""

    @_global_options
    @functools.wraps(func)
    def wrapper(*args: Any, db_url: str | None, jobs_dir: str | None, quiet: bool | None, debug: bool | None,
                log_format: str | None, **kwargs: Any) -> Any:
        settings = click.get_current_context().ensure_object(Settings)
        changed = (quiet, debug, log_format) != (None, None, None)
        settings.db_url = db_url or settings.db_url
        settings.jobs_dir = jobs_dir or settings.jobs_dir
        settings.quiet = quiet or settings.quiet
        settings.debug = debug or settings.debug
        settings.log_format = log_format or settings.log_format
        if changed:
            configure_logging(settings)
        with contextlib.ExitStack() as stack:
            return func(*args, db=Databases(settings.db_url, settings, stack), **kwargs)

    return wrapper


def fail_for_broken(broken: Sequence[PipelineError], consequence: str) -> None:
    """Name every job file that did not load on stderr, then fail saying what that meant (``consequence``)."""
    for error in broken:
        click.echo(f"Error: {error}", err=True)
    if broken:
        raise PipelineError(f"{len(broken)} job file(s) {consequence}")


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
@click.option("--db", "db_url", metavar="URL",
              help=f"Target database URL (default: ${URL_ENV}, else the job's target, else sqlite:///predictions.db).")
@click.version_option(package_name="prediction-pipeline")
@click.pass_context
def main(ctx: click.Context, debug: bool, jobs_dir: str, quiet: bool, log_format: str, db_url: str | None) -> None:
    """Materialize model predictions into versioned tables and flip a pointer.

    Every option below may also follow the command's name.

    \b
    Example:
      pipeline run churn             # score jobs/churn.toml, publish a new version
      pipeline versions churn_scores
      pipeline rollback churn_scores
    """
    ctx.obj = Settings(debug, jobs_dir, quiet, log_format, db_url)
    configure_logging(ctx.obj)
