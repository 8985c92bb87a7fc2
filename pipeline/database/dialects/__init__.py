"""Pick the one class that speaks a database's SQL; generic code never compares dialect names.

Each database's module is imported when an engine of that kind first needs it, so a SQLite command
does not load PostgreSQL's driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline.database.dialects.base import Dialect
from pipeline.errors import DatabaseError, PipelineError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

#: SQLAlchemy's dialect name -> the class that speaks it (module and class name).
DIALECTS: dict[str, str] = {
    "sqlite": "pipeline.database.dialects.sqlite:SQLiteDialect",
    "postgresql": "pipeline.database.dialects.postgresql:PostgresqlDialect",
    "mariadb": "pipeline.database.dialects.mysql:MariaDBDialect",
    "mysql": "pipeline.database.dialects.mysql:MariaDBDialect",  # mysql:// URLs to a MariaDB server
}


def _known(name: str, classes: dict[str, str] = DIALECTS) -> type[Dialect] | None:
    if name not in classes:
        return None
    module, _, cls = classes[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def dialect_class(name: str) -> type[Dialect]:
    """The class for SQLAlchemy dialect ``name``, or a :class:`PipelineError` listing the supported ones."""
    cls = _known(name)
    if cls is None:
        raise PipelineError(
            f"unsupported target database {name!r}: prediction tables can be written to {', '.join(DIALECTS)}")
    return cls


def configure_engine(engine: Engine) -> None:
    """Install a known dialect's connection hooks; other databases (domain sources) are left as they are."""
    cls = _known(engine.dialect.name)
    if cls is not None:
        cls.configure(engine)


def engine_options(backend: str) -> dict[str, Any]:
    """``create_engine`` arguments for a database of SQLAlchemy backend ``backend`` (none for other sources)."""
    cls = _known(backend)
    return dict(cls.ENGINE_OPTIONS) if cls is not None else {}


def reader_for(engine: Engine) -> Dialect:
    """The dialect to read a domain query with: a known one's fast path, else the generic one."""
    name = engine.dialect.name
    return (_known(name) or Dialect)(engine.dialect)


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a passing fault (see :meth:`Dialect.transient`) of any kind of database: a run reads
    gates' and the domain's ``source`` too, which need not be of its target's kind. Every dialect is asked, so
    PostgreSQL's driver is loaded by a SQLite run only once it failed."""
    return any(cls.transient(exc) for cls in {dialect_class(name) for name in DIALECTS})


def dialect_for(engine: Engine) -> Dialect:
    """The dialect implementation for ``engine``, a target: one whose URL names no database where the prediction
    tables need one (a MariaDB server's URL, fine for a ``source``) is refused here, in one line."""
    cls = dialect_class(engine.dialect.name)
    if cls.NEEDS_DATABASE and not engine.url.database:
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseError(f"{where} names no database: prediction tables are kept in the database the URL's "
                            f"path names ({engine.url.get_backend_name()}://user@host/DATABASE)")
    return cls(engine.dialect)


__all__ = ["Dialect", "configure_engine", "dialect_class", "dialect_for", "engine_options", "reader_for",
           "transient"]
