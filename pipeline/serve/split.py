"""The A/B split view ``<table>__ab``: each key served by the challenger alias or by the champion.

A key whose stored ``ab_bucket`` (a stable hash of the key, 0..99) is below the split's
percent gets the alias's row, any other key the champion's, with ``variant`` and
``model_version`` saying which. The view reads the two alias views, so flips of either
alias move it too, and a key stays in its arm across versions and flips.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Callable

from sqlalchemy.engine import Connection, Engine

from pipeline.database import state
from pipeline.database.dialects import Dialect, dialect_for
from pipeline.database.state import Split
from pipeline.database.transactions import reading, retry_on_lock
from pipeline.errors import TableError
from pipeline.names import BUCKET, check_alias, outputs_of, view_name

log = logging.getLogger("pipeline")
AB = "ab"


def set_split(engine: Engine, table: str, alias: str, percent: int,
              clock: Callable[[], datetime] = state.utcnow) -> Split | None:
    """Serve ``percent`` % of keys from ``alias`` through ``<table>__ab`` (0 removes the split and its view).

    Raises:
        TableError: a bad percent, an alias or champion without an active version, the two
            serving different columns, or (percent 0) no split of that alias to remove.
    """
    if not 0 <= percent <= 100:
        raise TableError(f"--percent must be between 0 and 100, got {percent}")
    if alias == state.DEFAULT_ALIAS:
        raise TableError("the split serves an alias against the champion; name the alias, e.g. --alias challenger")
    with reading(engine) as conn:
        state.require_table(conn, table)
    check_alias(table, alias)
    dialect = dialect_for(engine)

    def step(conn: Connection) -> Split | None:
        dialect.lock(conn, f"pipeline:{table}")
        if percent == 0:
            current = state.get_split(conn, table)
            if current is None:
                raise TableError(f"{table} has no A/B split to remove")
            if current.alias != alias:
                raise TableError(f"{view_name(table, AB)} splits {current.alias}, not {alias}; `pipeline split {table} "
                                 f"--alias {current.alias} --percent 0` removes it")
            state.set_split(conn, None, table)
            drop_view(conn, dialect, table)
            return None
        found = Split(table, alias, percent, clock())
        columns = _columns(conn, table, alias)  # refuses an alias that cannot be split against the champion
        state.set_split(conn, found, table)
        _write(conn, dialect, found, columns)
        return found

    result = retry_on_lock(engine, dialect, f"{table}: split view", step)
    log.info("%s: %s", table, f"{percent}% of keys from {alias} in {view_name(table, AB)}" if result
             else f"split removed, {view_name(table, AB)} dropped")
    return result


def refresh(conn: Connection, dialect: Dialect, table: str) -> None:
    """Make the split view again after an alias view changed its columns (or leave it out, saying why)."""
    found = state.get_split(conn, table)
    if found is None:
        return
    try:
        _write(conn, dialect, found, _columns(conn, table, found.alias))
    except TableError as exc:
        log.warning("%s: %s no longer served: %s", table, view_name(table, AB), exc)


def unserved(conn: Connection, split: Split) -> str | None:
    """Why ``<table>__ab`` does not serve ``split`` now (a flip left the two aliases on other columns, so the view
    was dropped and waits for them to match again), or None when it does."""
    try:
        _columns(conn, split.table, split.alias)
    except TableError as exc:
        return str(exc)
    return None


def drop_view(conn: Connection, dialect: Dialect, table: str) -> None:
    dialect.drop_view(conn, view_name(table, AB))


def _columns(conn: Connection, table: str, alias: str) -> list[str]:
    """The columns both arms serve: keys, outputs, the bucket. Both aliases must serve the same ones."""
    served = []
    for name in (state.DEFAULT_ALIAS, alias):
        version = state.active_version(conn, table, name)
        if version is None:
            raise TableError(f"{table} has no version active for {name}; activate one first "
                             f"(pipeline activate {table} N"
                             f"{'' if name == state.DEFAULT_ALIAS else ' --alias ' + name})")
        served.append((version.keys, tuple(version.columns)))
    if served[0] != served[1]:
        raise TableError(f"{table}: {alias} and {state.DEFAULT_ALIAS} serve different columns; an A/B split needs the "
                         "same keys and outputs")
    keys, columns = served[0]
    if BUCKET not in dict(columns):
        raise TableError(f"{table}: the active versions have no {BUCKET} column (made before A/B splits); run again")
    return [*keys, *(c for c, _ in outputs_of(columns, keys)), BUCKET]


def _write(conn: Connection, dialect: Dialect, split: Split, names: list[str]) -> None:
    columns = dialect.column_list(names)
    q = dialect.quote
    select_sql = (
        f"SELECT {columns}, '{split.alias}' AS variant, model_version FROM {q(view_name(split.table, split.alias))} "
        f"WHERE {q(BUCKET)} < {int(split.percent)}\n"
        "UNION ALL\n"
        f"SELECT {columns}, '{state.DEFAULT_ALIAS}' AS variant, model_version FROM {q(split.table)} "
        f"WHERE {q(BUCKET)} >= {int(split.percent)}"
    )
    dialect.ensure_view(conn, view_name(split.table, AB), select_sql, same_columns=False, grants_from=split.table,
                        roles=state.grant_roles(conn, split.table))
