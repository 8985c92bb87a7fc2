"""The pipeline's bookkeeping tables, their DDL and their upgrades.

The DDL in ``sql/`` is generated from these definitions (``make sql``) and a test keeps the two in step.
A database an older release made gains the new (nullable) columns in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, Column, Date, DateTime, Float, Index, Integer, MetaData,
                        String, Table, Text, text)
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

from pipeline.database.dialects import Dialect
from pipeline.database.transactions import reading, transaction
from pipeline.names import DEFAULT_ALIAS

STATUSES = ("building", "ready", "failed", "retired")
#: The largest version the (32-bit) ``version`` columns hold on every database.
MAX_VERSION = 2**31 - 1

metadata = MetaData()
#: A point in time, in UTC; MySQL and MariaDB keep microseconds only when asked.
Timestamp = DateTime(timezone=True).with_variant(DATETIME(fsp=6), "mysql", "mariadb")

versions = Table(
    "pipeline_versions", metadata,
    Column("table_name", String(63), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("job", String(255), nullable=False),
    Column("logical_date", Date),
    Column("status", String(16), nullable=False),
    Column("keys", Text, nullable=False),          # JSON list of the key columns
    Column("columns", Text),                       # JSON [[name, type], ...] of the version table
    Column("row_count", BigInteger),
    Column("domain_size", BigInteger),
    Column("domain_fingerprint", String(64)),
    Column("model_path", Text, nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("model_class", Text),
    Column("model_source", Text),                  # JSON: where a registry model came from (uri, version, run_id...)
    Column("model_library", Text),                 # JSON: the model's library, trained-with and installed versions
    Column("input_schema", Text),                  # JSON [[feature, dtype, categories or null], ...] the model got
    Column("type_changes", Text),                  # the feature types that changed from the active version (allowed)
    Column("output_labels", Text),                 # JSON [[column, class label], ...] of class-per-column outputs
    Column("settings_sha256", String(64)),         # the job settings that shape the rows (see run.materialize)
    Column("input_profile", Text),                 # JSON: per feature, NULL share and deciles (see run.gates)
    Column("passthrough", Text),                   # JSON list: domain columns stored beside the outputs (include)
    Column("watermark", Timestamp),                # the source's clock as the run began ([domain] changed)
    Column("top_ups", Integer),                    # top-ups in a row that made it, since a full run (0 or NULL: full)
    Column("lineage", Integer),                    # the lineage table holding its rows (PostgreSQL, domain.changed)
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("error", Text),
    CheckConstraint("status IN ('building', 'ready', 'failed', 'retired')", name="pipeline_versions_status"),
)

pointer = Table(
    "pipeline_pointer", metadata,
    Column("table_name", String(63), primary_key=True),
    Column("alias", String(63), primary_key=True, server_default=DEFAULT_ALIAS),
    Column("version", Integer, nullable=False),
    Column("view_versions", Text, nullable=False),  # JSON list: the versions the alias serves (its serving set)
    Column("updated_at", Timestamp, nullable=False),
)

flips = Table(
    "pipeline_flips", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("table_name", String(63), nullable=False),
    Column("alias", String(63), nullable=False, server_default=DEFAULT_ALIAS),
    Column("from_version", Integer),
    Column("to_version", Integer, nullable=False),
    Column("flipped_at", Timestamp, nullable=False),
    Column("reason", Text, nullable=False),
    Column("actor", Text),
    Index("pipeline_flips_table", "table_name", "alias", "id"),
)


audits = Table(
    "pipeline_audits", metadata,
    Column("table_name", String(63), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(255), primary_key=True),
    Column("passed", Boolean, nullable=False),
    Column("detail", Text, nullable=False),
    Column("checked_at", Timestamp, nullable=False),
)

# One row per partition a distributed run wrote, committed with the partition's rows:
# a retried task finds its partition done here and does not write it twice.
partitions = Table(
    "pipeline_partitions", metadata,
    Column("table_name", String(63), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("partitions", Integer, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("expected_rows", BigInteger, nullable=False),
    Column("digest", Text, nullable=False),        # JSON: the domain fingerprint's part from this partition
    Column("worker", Text),
    Column("seconds", Float, nullable=False),
    Column("finished_at", Timestamp, nullable=False),
)

# The A/B split of a table: the share of keys (by ab_bucket) its <table>__ab view serves from an alias.
splits = Table(
    "pipeline_splits", metadata,
    Column("table_name", String(63), primary_key=True),
    Column("alias", String(63), nullable=False),
    Column("percent", Integer, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# The roles a table's views are granted SELECT to ([output] grant_select), recorded when a run publishes, so
# any later flip, rollback, alias or split grants them again without the job file.
grants = Table(
    "pipeline_grants", metadata,
    Column("table_name", String(63), primary_key=True),
    Column("role", String(63), primary_key=True),
)

RUN_STATUSES = ("running", "succeeded", "failed", "skipped")

runs = Table(
    "pipeline_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job", String(255), nullable=False),
    Column("table_name", String(63), nullable=False),
    Column("logical_date", Date, nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("scheduled_for", Timestamp),   # the cron tick a scheduled run stands for
    Column("status", String(16), nullable=False),
    Column("version", Integer),
    Column("started_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp),
    Column("error", Text),
    Column("host", Text),
    Column("pid", Integer),
    Column("gates", Text),                              # JSON [[name, passed, detail], ...] (see run.gates)
    Column("retries", Text),                            # JSON list: the passing faults the run tried again after
    CheckConstraint("status IN ('running', 'succeeded', 'failed', 'skipped')", name="pipeline_runs_status"),
    Index("pipeline_runs_tick", "job", "scheduled_for", unique=True),  # one run per job and tick
    Index("pipeline_runs_job", "job", "id"),
)


def ensure_schema(conn: Connection) -> None:
    """Create the bookkeeping tables that do not exist yet, and add the columns that a database made by an
    earlier release lacks (such columns are nullable, so the rows it holds stay valid)."""
    metadata.create_all(conn, checkfirst=True)
    quote = conn.dialect.identifier_preparer.quote
    for table, column in missing_columns(conn):
        conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} "
                          f"{column.type.compile(dialect=conn.dialect)}"))


def missing_columns(conn: Connection, tables: list[Table] | None = None) -> list[tuple[Table, Column]]:
    """The columns of existing bookkeeping tables that this release has and the database does not.

    It reads each table's columns from an empty ``SELECT *`` rather than the catalog: one cheap query per table
    on every database, where reflection costs a command's start-up tens of milliseconds on PostgreSQL."""
    quote = conn.dialect.identifier_preparer.quote
    missing = []
    for table in _present(conn) if tables is None else tables:
        present = set(conn.execute(text(f"SELECT * FROM {quote(table.name)} WHERE 1 = 0")).keys())
        missing += [(table, column) for column in table.columns if column.name not in present]
    return missing


def _present(conn: Connection) -> list[Table]:
    return [table for table in metadata.sorted_tables if conn.dialect.has_table(conn, table.name)]


def has_schema(conn: Connection) -> bool:
    return conn.dialect.has_table(conn, versions.name)


def ddl(sa_dialect: Any) -> str:
    """The DDL of the bookkeeping tables for one dialect, as written to ``sql/<dialect>/metadata.sql``."""
    statements = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=sa_dialect)))
        indexes = sorted(table.indexes, key=lambda ix: ix.name)  # a set: sort for a stable file
        statements.extend(str(CreateIndex(ix).compile(dialect=sa_dialect)) for ix in indexes)
    tidy = ["\n".join(line.rstrip() for line in s.strip().splitlines()) for s in statements]
    return ";\n\n".join(tidy) + ";\n"


def write_ddl_files(root: str = "sql") -> list[str]:
    """Regenerate ``sql/<dialect>/metadata.sql`` from the table definitions above."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.dialects.mysql import mariadbconnector

    written = []
    for name, sa_dialect in (("sqlite", sqlite.dialect()), ("postgresql", postgresql.dialect()),
                             ("mariadb", mariadbconnector.dialect())):
        path = Path(root) / name / "metadata.sql"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (f"-- The pipeline's bookkeeping tables on {name}. Generated from pipeline/database/schema.py by "
                  "`make sql`.\n\n")
        path.write_text(header + ddl(sa_dialect), encoding="utf-8")
        written.append(str(path))
    return written


def upgrade(engine: Engine, dialect: Dialect) -> None:
    """Bring a database's bookkeeping tables up to this release (new tables, new nullable columns), so commands
    that only read work on a database an older release made; a database without them is left alone.

    It writes only when a table or a column is missing: a read command must not wait for a running load's write lock.
    """
    with reading(engine) as conn:
        present = _present(conn)
        if versions not in present or (len(present) == len(metadata.tables) and not missing_columns(conn, present)):
            return
    with transaction(engine) as conn:
        dialect.lock(conn, "pipeline:schema")
        ensure_schema(conn)
