"""Build SQLAlchemy engines from the URLs users write; nothing else."""

from __future__ import annotations

import os

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from pipeline.database.dialects import configure_engine
from pipeline.errors import DatabaseError

DEFAULT_URL = "sqlite:///predictions.db"
URL_ENV = "PIPELINE_DATABASE_URL"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever spelling the user chose (``postgres://``, ``postgresql://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def resolve_url(cli_url: str | None, job_target: str | None = None) -> str:
    """The target database: ``--db``, else ``$PIPELINE_DATABASE_URL``, else the job's ``target``, else the default."""
    return cli_url or os.environ.get(URL_ENV) or job_target or DEFAULT_URL


def redact(url: str) -> str:
    """The URL without its password, fit for logs and metadata."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the pipeline's connection hooks installed.

    Raises:
        DatabaseError: the URL does not parse or names a driver that is not installed.
    """
    try:
        parsed = make_url(normalize_url(url))
        engine = create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DatabaseError(f"not a usable database URL {redact(url)!r}: {exc}") from None
    except ImportError as exc:
        raise DatabaseError(f"no driver for {redact(url)!r}: {exc}") from None
    configure_engine(engine)
    return engine
