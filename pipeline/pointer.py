"""The stable view and the pointer behind it: publish a version, activate, roll back.

The view ``<table>`` is a UNION ALL of the retained ready versions, each branch gated
by the ``pipeline_pointer`` row. Moving the pointer is a one-row UPDATE: readers see
the old version or the new one, whole, and never wait for it. The view is rewritten
only when its list of versions changes, inside the same transaction.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy.engine import Connection, Engine

from pipeline import split, state
from pipeline.dialects import Dialect, dialect_for
from pipeline.errors import FlipError
from pipeline.transactions import reading, retry_on_lock
from pipeline.versions import check_identifier, previous_version, version_table, view_name

log = logging.getLogger("pipeline")
Clock = Callable[[], Any]

#: ``PIPELINE_PAUSE_AT=phase[:seconds]`` stops a run at a phase (loading, indexing, auditing,
#: flipping): the crash tests kill it there. Unset in normal use.
PAUSE_ENV = "PIPELINE_PAUSE_AT"


def checkpoint(phase: str) -> None:
    """Mark the start of a run's phase; pause there when ``$PIPELINE_PAUSE_AT`` asks for it."""
    log.debug("phase: %s", phase)
    wanted, _, seconds = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted == phase:
        print(f"pipeline: paused at {phase} (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(float(seconds or 3600))


@dataclass(frozen=True)
class FlipResult:
    table: str
    alias: str
    from_version: int | None
    to_version: int


def members(conn: Connection, table: str, columns: tuple[tuple[str, str], ...]) -> list[int]:
    """The versions a view of ``columns`` lists: every ready version with exactly those columns."""
    return [v.version for v in state.list_versions(conn, table) if v.status == "ready" and v.columns == columns]


def write_view(conn: Connection, dialect: Dialect, table: str, alias: str, versions: list[int],
               columns: tuple[tuple[str, str], ...], same_columns: bool) -> None:
    """Make the view list exactly ``versions``.

    A view of other columns is made anew; the A/B split view, which reads it, is dropped first
    and must be made again by the caller once the pointer moved (:func:`split.refresh`).
    """
    branches = [(version_table(table, v), v) for v in versions]
    select_sql = dialect.view_select(table, alias, branches, [c for c, _ in columns])
    if not same_columns:
        split.drop_view(conn, dialect, table)
    dialect.replace_view(conn, view_name(table, alias), select_sql, same_columns, grants_from=table)


def publish(engine: Engine, table: str, version: int, *, ready: dict[str, Any] | None, move: bool,
            reason: str, clock: Clock, alias: str = state.DEFAULT_ALIAS,
            timeout: float | None = None) -> FlipResult | None:
    """Make ``version`` ready (when ``ready`` holds its final figures) and, if ``move``, point the view at it.

    All of it is one transaction: a run that dies before it commits leaves its version
    ``building`` (later reaped as failed) and readers exactly where they were. While readers
    hold the view, it tries again for ``timeout`` seconds (by default a minute's worth of tries).

    Raises:
        ViewBusy: readers held the view all that time; nothing changed.
    """
    dialect = dialect_for(engine)

    def step(conn: Connection) -> FlipResult | None:
        dialect.lock(conn, f"pipeline:{table}")
        target = state.get_version(conn, table, version)
        if target is None:
            raise FlipError(f"{table} has no version {version}")
        if ready is not None:
            state.update_version(conn, table, version, status="ready", **ready)
            target = state.get_version(conn, table, version)
        elif target.status != "ready":
            raise FlipError(f"{table} version {version} is {target.status}, not ready; only ready versions can be "
                            "activated (see `pipeline versions`)")
        pointer = state.get_pointer(conn, table, alias)
        listed = list(pointer.view_versions) if pointer else []
        remade = False
        if version not in listed:
            active = state.get_version(conn, table, pointer.version) if pointer else None
            same = active is not None and active.columns == target.columns
            if move or same:  # a version with other columns joins the view when it is activated
                listed = members(conn, table, target.columns)
                write_view(conn, dialect, table, alias, listed, target.columns, same)
                remade = not same
                if not move:
                    state.set_view_versions(conn, table, alias, listed)
        if not move:
            return None
        checkpoint("flipping")
        now = clock()
        state.set_pointer(conn, table, alias, version, listed, now)
        if remade:  # the split compares what the aliases serve now
            split.refresh(conn, dialect, table)
        from_version = pointer.version if pointer else None
        state.record_flip(conn, table, alias, from_version, version, now, reason, actor())
        return FlipResult(table, alias, from_version, version)

    result = retry_on_lock(engine, dialect, f"{table}: publishing version {version}", step, timeout=timeout)
    if result is not None:
        log.info("%s: pointer moved from version %s to %d", table, result.from_version, version)
    return result


#: Alias names kept for views of the pipeline's own (the A/B split, the default row).
RESERVED_ALIASES = ("ab", "default")


def check_alias(table: str, alias: str) -> str:
    """An alias names a view ``<table>__<alias>``: a safe identifier that fits, not a reserved one."""
    if alias == state.DEFAULT_ALIAS:
        return alias
    if alias in RESERVED_ALIASES or not alias.isidentifier() or not alias.isascii() or alias != alias.lower():
        raise FlipError(f"alias {alias!r} must be lower-case letters, digits and '_', and not one of "
                        f"{', '.join(RESERVED_ALIASES)}")
    try:
        check_identifier(view_name(table, alias))
    except ValueError as exc:
        raise FlipError(f"alias {alias!r}: {exc}") from None
    return alias


def activate(engine: Engine, table: str, version: int, *, reason: str = "activate",
             alias: str = state.DEFAULT_ALIAS, clock: Clock = state.utcnow) -> FlipResult:
    """Point ``table``'s view (or its ``alias`` view, ``<table>__<alias>``) at a retained ready ``version``.

    The same O(1) flip a run ends with; every alias has its own pointer row and history.
    """
    require_table(engine, table)
    result = publish(engine, table, version, ready=None, move=True, reason=reason, clock=clock,
                     alias=check_alias(table, alias))
    assert result is not None
    return result


def rollback(engine: Engine, table: str, to: int | None = None, *, alias: str = state.DEFAULT_ALIAS,
             clock: Clock = state.utcnow) -> FlipResult:
    """Flip ``table`` back to version ``to``, or to the newest ready version older than the active one."""
    require_table(engine, table)
    with reading(engine) as conn:
        pointer = state.get_pointer(conn, table, check_alias(table, alias))
        usable = [v.version for v in state.list_versions(conn, table) if v.status == "ready"]
    if pointer is None:
        raise FlipError(f"{table} has no active version{'' if alias == state.DEFAULT_ALIAS else ' for ' + alias} "
                        "to roll back from")
    if to is None:
        to = previous_version(usable, pointer.version)
        if to is None:
            raise FlipError(f"{table}: no ready version older than the active version {pointer.version}")
    if to == pointer.version:
        raise FlipError(f"{table}: version {to} is already active")
    return activate(engine, table, to, reason="rollback", alias=alias, clock=clock)


def require_table(engine: Engine, table: str) -> None:
    with reading(engine) as conn:
        state.require_table(conn, table)


def actor() -> str:
    """Who moved the pointer: user@host, for the flip log."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def write_default(engine: Engine, table: str, default: tuple[tuple[str, Any], ...]) -> None:
    """Make ``<table>__default`` the one-row view of the job's values for keys outside the domain.

    Applications read it with ``COALESCE`` over a left join (``sql/queries.sql``).
    """
    dialect = dialect_for(engine)
    select_sql = "SELECT " + ", ".join(f"{_literal(v)} AS {dialect.quote(c)}" for c, v in default)

    def step(conn: Connection) -> None:
        dialect.lock(conn, f"pipeline:{table}")
        dialect.replace_view(conn, view_name(table, "default"), select_sql, same_columns=False, grants_from=table)

    retry_on_lock(engine, dialect, f"{table}: default view", step)


def _literal(value: Any) -> str:
    """A SQL literal for a validated job-file value (number, string or boolean)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return "'" + str(value).replace("'", "''") + "'"
