"""The stable view and the pointer behind it: publish a version, activate, roll back.

The view ``<table>`` serves a small set of versions (the active one and its rollback
target), each gated by the ``pipeline_pointer`` row. Moving the pointer is a one-row
UPDATE: readers see the old version or the new one, whole, and never wait for it. How
the set is kept is the dialect's: on PostgreSQL, partitions attached to and detached from
a partitioned table the view reads; elsewhere, a UNION ALL the view lists.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.database import state
from pipeline.database.dialects import Dialect, dialect_for
from pipeline.database.transactions import reading, retry_on_lock
from pipeline.errors import PipelineError, TableError
from pipeline.names import check_alias, version_table, view_name
from pipeline.phases import checkpoint
from pipeline.serve import split

log = logging.getLogger("pipeline")
Clock = Callable[[], Any]

#: What a publish step answers when it attached versions (committed on their own, before the flip).
ATTACHED = object()


@dataclass(frozen=True)
class FlipResult:
    table: str
    alias: str
    from_version: int | None
    to_version: int


def serving(conn: Connection, dialect: Dialect, table: str, version: int, previous: int | None) -> list[state.Version]:
    """What an alias pointing at ``version`` serves: that version, its rollback target (the newest ready version
    older than it) and the version it served before (so flipping back costs nothing); nothing else, so a
    lookup costs the same however many versions are kept. A version whose table was dropped by hand is
    neither rollback target nor served before: the views would fail to read it."""
    found = {v.version: v for v in state.list_versions(conn, table)}
    back = rollback_target(conn, dialect, table, found.values(), version)
    return [found[v] for v in dict.fromkeys((version, back, previous))
            if v in found and (v in (version, back) or dialect.has_version(conn, table, v))]


def rollback_target(conn: Connection, dialect: Dialect, table: str, versions: Iterable[state.Version],
                    version: int) -> int | None:
    """The newest ready version older than ``version`` whose table is there (not dropped by hand)."""
    older = sorted((v.version for v in versions if v.status == "ready" and v.version < version), reverse=True)
    return next((v for v in older if dialect.has_version(conn, table, v)), None)


def serving_set(conn: Connection, table: str) -> set[int]:
    """Every version some alias serves: what must stay within the views' reach."""
    return {v for p in state.list_pointers(conn, table) for v in (p.version, *p.view_versions)}


def attach(conn: Connection, dialect: Dialect, table: str, kept: list[state.Version]) -> bool:
    """Bring ``kept`` within the views' reach (:meth:`Dialect.serve`); whether any was newly attached.

    The first is the version to serve and must be; the others may wait for readers that still
    hold them from before, which the flip does not wait for.
    """
    attached = dialect.serve(conn, table, kept[0].version, kept[0].columns, kept[0].lineage)
    for v in kept[1:]:
        try:
            with dialect.savepoint(conn):
                attached = dialect.serve(conn, table, v.version, v.columns, v.lineage) or attached
        except SQLAlchemyError as exc:
            if not dialect.is_lock_timeout(exc):
                raise
            log.info("%s: version %d is still held by readers from before it was detached; activating it "
                     "will wait for them", table, v.version)
    return attached


def write_view(conn: Connection, dialect: Dialect, table: str, alias: str, kept: list[state.Version],
               active: state.Version | None) -> None:
    """Make the alias's view serve ``kept`` (the first is the version to serve), with no DDL when it does already.

    Where the view reads a partitioned table, it changes only with its columns; where it lists its
    versions, it is written again when the list changes. A view of other columns is made anew; the
    A/B split view, which reads it, is dropped first and must be made again once the pointer moved
    (:func:`split.refresh`).
    """
    served = kept[0]
    listed = [(version_table(table, v.version), v.version) for v in kept if v.columns == served.columns]
    select_sql = dialect.view_select(table, alias, listed, served.columns, lineages=served.lineage is not None)
    same = active is not None and active.columns == served.columns
    if not same:
        split.drop_view(conn, dialect, table)
    dialect.ensure_view(conn, view_name(table, alias), select_sql, same, grants_from=table,
                        roles=state.grant_roles(conn, table))


def record_grants(conn: Connection, dialect: Dialect, table: str, roles: Sequence[str]) -> None:
    """Record a run's ``grant_select`` for every later flip, and grant it on each view ``table`` has now (its
    aliases' and split's too, which this run may not write). Roles dropped from the job keep their grants."""
    state.set_grant_roles(conn, table, roles)
    views = {view_name(table, p.alias) for p in state.list_pointers(conn, table)}
    for view in sorted(views | {view_name(table, split.AB), view_name(table, "default")}):
        dialect.grant_select(conn, view, roles)


def publish(engine: Engine, table: str, version: int, *, ready: dict[str, Any] | None, move: bool,
            reason: str, clock: Clock, alias: str = state.DEFAULT_ALIAS,
            timeout: float | None = None, grant_select: Sequence[str] | None = None) -> FlipResult | None:
    """Make ``version`` ready (when ``ready`` holds its final figures) and, if ``move``, point the view at it.

    Where versions are served as partitions, any not attached yet are attached first, in a
    transaction of their own, and statements planned before that are let finish
    (:meth:`Dialect.wait_for_planners`). The rest is one transaction: a run that dies before it
    commits leaves its version ``building`` (later reaped as failed) and readers exactly where
    they were. Nothing takes a lock a reader holds, except DDL on the view when its columns
    change: while readers hold the view, that tries again for ``timeout`` seconds (by default a
    minute's worth of tries). Versions that no alias serves any more are then taken out of the
    views' reach (:func:`settle`). A run hands its job's ``grant_select``, recorded in the same
    transaction (:func:`record_grants`); every view written then or later is granted to those roles.

    Raises:
        ViewBusy: readers held the view all that time; nothing changed.
    """
    dialect = dialect_for(engine)

    def kept(conn: Connection, pointer: state.Pointer | None) -> list[state.Version]:
        found = serving(conn, dialect, table, version, pointer.version if pointer else None)
        wanted = found[0] if found and found[0].version == version else None
        if wanted is None:
            raise TableError(f"{table} has no version {version}")
        if ready is None and wanted.status != "ready":
            raise TableError(f"{table} version {version} is {wanted.status}, not ready; only ready versions can be "
                             "activated (see `pipeline versions`)")
        if ready is None and not dialect.has_version(conn, table, version):
            raise TableError(f"{table} version {version} cannot be activated: its table "
                             f"{version_table(table, version)} is gone (dropped by hand)")
        if ready is not None:  # its columns as they will be recorded
            found[0] = dataclasses.replace(wanted, columns=tuple(tuple(c) for c in ready["columns"]))
        return found

    def flip(conn: Connection) -> FlipResult | None | object:
        dialect.lock(conn, f"pipeline:{table}")
        pointer = state.get_pointer(conn, table, alias)
        versions = kept(conn, pointer)
        if move and attach(conn, dialect, table, versions):
            return ATTACHED  # committed alone: readers' plans catch up before the pointer moves
        if ready is not None:
            state.update_version(conn, table, version, status="ready", **ready)
        if grant_select is not None:
            record_grants(conn, dialect, table, grant_select)
        if not move:
            return None
        # the version served now is among ``versions`` (as the one served before the flip)
        active = next((v for v in versions if pointer and v.version == pointer.version), None)
        dialect.set_gate(conn, table, alias, version, versions[0].columns, versions[0].lineage)
        write_view(conn, dialect, table, alias, versions, active)
        checkpoint("flipping")
        # the version served already: its views are written again (which mends one dropped by hand), but the
        # pointer does not move, so neither its time nor the history says it did
        again = pointer is not None and pointer.version == version
        now = pointer.updated_at if again else clock()
        state.set_pointer(conn, table, alias, version, [v.version for v in versions], now)
        if active is None or active.columns != versions[0].columns:  # the split compares what the aliases serve
            split.refresh(conn, dialect, table)
        from_version = pointer.version if pointer else None
        if not again:
            state.record_flip(conn, table, alias, from_version, version, now, reason, actor())
        return FlipResult(table, alias, from_version, version)

    what = f"{table}: publishing version {version}"
    for _ in range(3):  # again only if another process detached a version meanwhile
        result = retry_on_lock(engine, dialect, what, flip, timeout=timeout)
        if result is not ATTACHED:
            break
        checkpoint("attached")  # the version is within the views' reach, its flip not yet done
        dialect.wait_for_planners(engine)
    else:
        raise TableError(f"{what}: another process kept taking its versions out of serving; try again")
    assert result is None or isinstance(result, FlipResult)
    if result is not None:
        if result.from_version is None:
            log.info("%s: version %d is served now", table, version)
        elif result.from_version == version:
            log.info("%s: version %d was active already; its views are written again", table, version)
        else:
            log.info("%s: pointer moved from version %d to %d", table, result.from_version, version)
        checkpoint("published")  # the flip is committed; versions no alias serves are not yet out of reach
        settle(engine, table)
    return result


def settle(engine: Engine, table: str) -> dict[int, str]:
    """Take the versions no alias serves out of the views' reach as far as readers allow now; those left, with
    why. Never raises: it follows a flip that has happened, and the next publish or ``gc`` tries again."""
    dialect = dialect_for(engine)
    try:
        with reading(engine) as conn:
            wanted = serving_set(conn, table)
            lineages = {v.lineage for v in state.list_versions(conn, table) if v.version in wanted and v.lineage}
        left = dialect.settle(engine, table, wanted, lineages)
    except PipelineError as exc:
        log.warning("%s: could not settle what the views serve: %s", table, exc)
        return {}
    for version, why in left.items():
        log.info("%s: version %d: %s", table, version, why)
    return left


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
    """Flip ``table`` back to version ``to``, or to the newest ready version older than the active one (whose
    table is there)."""
    require_table(engine, table)
    with reading(engine) as conn:
        pointer = state.get_pointer(conn, table, check_alias(table, alias))
        if pointer is None:
            raise TableError(f"{table} has no active version{'' if alias == state.DEFAULT_ALIAS else ' for ' + alias} "
                             "to roll back from")
        if to is None:
            to = rollback_target(conn, dialect_for(engine), table, state.list_versions(conn, table), pointer.version)
            if to is None:
                raise TableError(f"{table}: no ready version older than the active version {pointer.version}")
    if to == pointer.version:
        raise TableError(f"{table}: version {to} is already active")
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
        dialect.ensure_view(conn, view_name(table, "default"), select_sql, same_columns=False, grants_from=table,
                            roles=state.grant_roles(conn, table))

    retry_on_lock(engine, dialect, f"{table}: default view", step)


def _literal(value: Any) -> str:
    """A SQL literal for a validated job-file value (number, string or boolean)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(float(value)) if isinstance(value, float) else str(value)
    return "'" + str(value).replace("'", "''") + "'"
