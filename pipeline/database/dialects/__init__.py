"""Pick the one class that speaks a database's SQL; generic code never compares dialect names."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from pipeline.database.dialects.base import Dialect
from pipeline.database.dialects.postgresql import PostgresqlDialect
from pipeline.database.dialects.sqlite import SQLiteDialect
from pipeline.errors import PipelineError

DIALECTS: dict[str, type[Dialect]] = {
    "sqlite": SQLiteDialect,
    "postgresql": PostgresqlDialect,
}


def dialect_class(name: str) -> type[Dialect]:
    """The class for SQLAlchemy dialect ``name``, or a :class:`PipelineError` listing the supported ones."""
    try:
        return DIALECTS[name]
    except KeyError:
        raise PipelineError(
            f"unsupported target database {name!r}: prediction tables can be written to {', '.join(DIALECTS)}"
        ) from None


def configure_engine(engine: Engine) -> None:
    """Install a known dialect's connection hooks; other databases (domain sources) are left as they are."""
    cls = DIALECTS.get(engine.dialect.name)
    if cls is not None:
        cls.configure(engine)


def reader_for(engine: Engine) -> Dialect:
    """The dialect to read a domain query with: a known one's fast path, else the generic one."""
    return DIALECTS.get(engine.dialect.name, Dialect)(engine.dialect)


def dialect_for(engine: Engine) -> Dialect:
    """The dialect implementation for ``engine``."""
    return dialect_class(engine.dialect.name)(engine.dialect)


__all__ = ["Dialect", "configure_engine", "dialect_class", "dialect_for", "reader_for"]
