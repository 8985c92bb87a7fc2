"""Where transactions begin: write and read scopes that turn database failures into one-line errors.

Dialect methods and state functions take a Connection and never commit; the
functions here are the only places that open one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.database.dialects import Dialect
from pipeline.database.dialects.base import WRITE_OPTION
from pipeline.errors import DatabaseError, PipelineError, ViewBusy, first_line

log = logging.getLogger("pipeline")
T = TypeVar("T")

#: How often DDL that readers hold up is tried again (with backoff up to 1 s) before giving up.
LOCK_ATTEMPTS = 60


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction; database failures come out as one-line :class:`DatabaseError`."""
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
            yield conn
    except PipelineError:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database error: {first_line(exc)}") from exc


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only connection; database failures come out as :class:`DatabaseError`."""
    try:
        with engine.connect() as conn:
            yield conn
    except PipelineError:
        raise
    except SQLAlchemyError as exc:
        raise DatabaseError(f"database error: {first_line(exc)}") from exc


def retry_on_lock(engine: Engine, dialect: Dialect, what: str, step: Callable[[Connection], T],
                  attempts: int = LOCK_ATTEMPTS, timeout: float | None = None) -> T:
    """Run ``step`` in a transaction whose DDL gives way to readers, again and again with backoff.

    On PostgreSQL, view DDL and DROP TABLE wait for readers of the object and make
    every later reader queue behind them; a short ``lock_timeout`` bounds that queue
    to a few milliseconds, and the step is simply tried again once readers moved on.
    With ``timeout`` (seconds), it keeps trying that long instead of ``attempts`` times.
    """
    delay = 0.01
    deadline = None if timeout is None else time.monotonic() + timeout
    tried = 0
    while True:
        tried += 1
        try:
            with transaction(engine) as conn:
                dialect.bound_lock_wait(conn)
                return step(conn)
        except DatabaseError as exc:
            if not dialect.is_lock_timeout(exc.__cause__):
                raise
        if tried >= attempts if deadline is None else time.monotonic() >= deadline:
            raise ViewBusy(f"{what}: readers kept the view busy through {tried} attempts; try again")
        log.info("%s: readers hold the view; trying again in %.2fs", what, delay)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
