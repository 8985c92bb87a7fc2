"""What operators ask about prediction tables: versions, flips, status. Reads only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy.engine import Connection, Engine

from pipeline.database import schema, state
from pipeline.database.transactions import reading
from pipeline.names import check_alias
from pipeline.serve.split import unserved


@dataclass(frozen=True)
class VersionRow:
    version: state.Version
    active: bool
    aliases: tuple[str, ...] = ()   # the aliases pointing at it (champion is the default view)


@dataclass(frozen=True)
class TableStatus:
    table: str
    active_version: int | None
    logical_date: date | None
    row_count: int | None
    model_sha256: str | None
    activated_at: datetime | None
    latest_version: int | None                 # None: runs were recorded, no version was ever made
    latest_status: str | None
    latest_error: str | None
    last_run: state.Run | None = None          # the newest run of the table, whatever its outcome
    failed_runs: int = 0                       # failed runs since the last success
    missed_ticks: int = 0                      # of which scheduled ticks no run stood for
    aliases: tuple[tuple[str, int], ...] = ()  # other aliases and the versions they serve
    split: str | None = None                   # the A/B split view, e.g. "20% challenger"


def versions(engine: Engine, table: str) -> list[VersionRow]:
    """Every version of ``table``, oldest first, with the active one marked."""
    with reading(engine) as conn:
        state.require_table(conn, table)
        found = state.list_versions(conn, table)
        pointers = state.list_pointers(conn, table)
    active = next((p.version for p in pointers if p.alias == state.DEFAULT_ALIAS), None)
    return [VersionRow(v, v.version == active, tuple(p.alias for p in pointers if p.version == v.version))
            for v in found]


def history(engine: Engine, table: str, alias: str = state.DEFAULT_ALIAS) -> list[state.Flip]:
    """Every move of ``table``'s pointer (or its ``alias``), oldest first."""
    with reading(engine) as conn:
        state.require_table(conn, table)
        return state.list_flips(conn, table, check_alias(table, alias))  # a name no alias can have: said, not []


def status(engine: Engine) -> list[TableStatus]:
    """One line per prediction table in the database: what serves, and how the last run went."""
    rows = []
    with reading(engine) as conn:
        if not schema.has_schema(conn):
            return []
        for table in sorted(set(state.list_tables(conn)) | set(state.run_tables(conn))):
            found = state.list_versions(conn, table)
            pointers = state.list_pointers(conn, table)
            pointer = next((p for p in pointers if p.alias == state.DEFAULT_ALIAS), None)
            ab = state.get_split(conn, table)
            active = next((v for v in found if pointer and v.version == pointer.version), None)
            latest = found[-1] if found else None
            recent = state.list_runs(conn, table=table, limit=200)
            failed = missed = 0
            for run in recent:
                if run.status == "succeeded":
                    break
                failed += run.status == "failed"
                missed += run.status == "failed" and (run.error or "").startswith(state.MISSED)
            rows.append(TableStatus(
                table=table,
                active_version=active.version if active else None,
                logical_date=active.logical_date if active else None,
                row_count=active.row_count if active else None,
                model_sha256=active.model_sha256 if active else None,
                activated_at=pointer.updated_at if pointer else None,
                latest_version=latest.version if latest else None,
                latest_status=latest.status if latest else None,
                latest_error=latest.error if latest else None,
                last_run=recent[0] if recent else None,
                failed_runs=failed,
                missed_ticks=missed,
                aliases=tuple((p.alias, p.version) for p in pointers if p.alias != state.DEFAULT_ALIAS),
                split=_split(conn, ab),
            ))
    return rows


def _split(conn: Connection, ab: state.Split | None) -> str | None:
    if ab is None:
        return None
    why = unserved(conn, ab)
    return f"{ab.percent}% {ab.alias}" + (f" (not served: {why})" if why else "")


def runs(engine: Engine, job: str | None = None, limit: int = 50) -> list[state.Run]:
    """The latest runs, newest first, of one job or of all."""
    with reading(engine) as conn:
        return state.list_runs(conn, job, limit) if schema.has_schema(conn) else []


def audits(engine: Engine, table: str, version: int) -> list[state.AuditRow]:
    """The stored results of a version's latest audit."""
    with reading(engine) as conn:
        return state.list_audits(conn, table, version) if schema.has_schema(conn) else []
