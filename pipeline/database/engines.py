"""Build SQLAlchemy engines from the URLs users write; nothing else.

SQLAlchemy is imported when an engine is made or a URL parsed, not with this module: the CLI reads
the defaults here before it knows whether a command needs a database at all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import DatabaseError, hide_passwords

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

DEFAULT_URL = "sqlite:///predictions.db"
URL_ENV = "PIPELINE_DATABASE_URL"
#: URL schemes of PostgreSQL (SQLAlchemy's name, and libpq's short one).
POSTGRES_SCHEMES = ("postgresql", "postgres")
#: URL schemes of MySQL and MariaDB.
MYSQL_SCHEMES = ("mysql", "mariadb")
#: The driver MySQL and MariaDB are read with (see :mod:`pipeline.database.dialects.mysql` for why), and its extra.
MYSQL_DRIVER = "mariadbconnector"
MYSQL_EXTRA = "pip install 'prediction-pipeline[mysql]'"


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever spelling or driver the URL names (``postgres://``,
    ``postgresql+psycopg2://``, an application's SQLAlchemy URL): loads, errors and the reader's connection
    settings are psycopg 3's. The same for MariaDB Connector/Python with MySQL and MariaDB: the reader needs its
    binary protocol. ``mysql://`` keeps SQLAlchemy's MySQL dialect, which a MySQL server needs."""
    scheme = _scheme(url)
    if scheme in POSTGRES_SCHEMES:
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if scheme in MYSQL_SCHEMES:
        return f"{scheme}+{MYSQL_DRIVER}://" + url.split("://", 1)[1]
    return url


def resolve_url(cli_url: str | None, job_target: str | None = None) -> str:
    """The target database: ``--db``, else ``$PIPELINE_DATABASE_URL``, else the job's ``target``, else the default."""
    return cli_url or os.environ.get(URL_ENV) or job_target or DEFAULT_URL


def missing_file(url: str) -> Path | None:
    """The file a SQLite ``url`` names when it does not exist yet (connecting would create it); else None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # a port that is not a number: make_engine says so
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


#: The port a URL without one connects to, by backend.
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def database_of(url: str) -> tuple[object, ...]:
    """What names the database ``url`` opens, whatever its spelling: the backend (not the driver), host, port, user,
    database and options (a search_path names another schema), a SQLite file by its absolute path; the password
    left out. Two URLs of one database compare equal (``postgres://u@h/db`` and
    ``postgresql+psycopg://u:pw@h:5432/db``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(normalize_url(url))
    except (ArgumentError, ValueError):
        return (url,)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (backend, str(Path(parsed.database).resolve()) if parsed.database not in (None, "", ":memory:")
                else parsed.database)
    options = tuple(sorted((k, str(v)) for k, v in parsed.query.items() if k != "password"))
    return (backend, parsed.host, parsed.port or DEFAULT_PORTS.get(backend), parsed.username, parsed.database, options)


def redact(url: str) -> str:
    """The URL without its password (after the user's name or as a ``password=`` parameter), fit for logs and
    metadata."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return hide_passwords(make_url(url).render_as_string(hide_password=True))
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return "<unparseable URL>"


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the pipeline's connection hooks installed.

    Raises:
        DatabaseError: the URL does not parse or names a driver that is not installed.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    from pipeline.database.dialects import configure_engine, engine_options

    try:
        parsed = make_url(normalize_url(url))
        engine = create_engine(parsed, pool_pre_ping=True, **engine_options(parsed.get_backend_name()))
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise DatabaseError(f"not a usable database URL {redact(url)!r}: {exc}") from None
    except ImportError as exc:
        if _scheme(url) in MYSQL_SCHEMES:
            raise DatabaseError(f"no driver for {redact(url)!r}: MySQL and MariaDB are read with MariaDB "
                                f"Connector/Python: {MYSQL_EXTRA}") from None
        raise DatabaseError(f"no driver for {redact(url)!r}: {exc}") from None
    configure_engine(engine)
    return engine
