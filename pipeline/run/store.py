"""Write one version table: infer its columns, score chunks into it (:func:`fill`, which keeps only each group's
best rows with top_k), then build its key and statistics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pipeline.contract import value_kind
from pipeline.database.dialects import Dialect
from pipeline.database.dialects.base import COLUMN_TYPES
from pipeline.errors import AuditError, SourceError
from pipeline.jobspec import Job, OutputSpec
from pipeline.names import RANK
from pipeline.phases import checkpoint
from pipeline.run.audits import describe_keys, duplicate_keys
from pipeline.run.scoring import Scorer, TopK
from pipeline.run.stages import overlapped

#: A column's kind as its source declared it (see :meth:`pipeline.run.domain.Domain.kind`), or None.
Kinds = Callable[[str], str | None]


def infer_type(name: str, series: pd.Series, declared: str | None = None) -> str:
    """The portable column type (see ``dialects.base.COLUMN_TYPES``) that holds ``series``: its kind in the
    input contract (outputs of floats that are all NaN are still floats), or where its values cannot tell
    (dates that are all NULL in the first chunk), the kind its source ``declared``. A domain column (a key, an
    included one: ``declared`` is known) of values no type holds (a PostgreSQL uuid, a MariaDB TIME) is refused
    with the cast to text that stores it."""
    if pd.api.types.is_float_dtype(series.dtype):
        return "float"
    kind = value_kind(series) or (declared if declared in COLUMN_TYPES else None)
    if kind is None:
        raise SourceError(f"column {name!r} holds only NULLs in the first chunk; its type cannot be told")
    if kind == "other":
        value = series.dropna().iloc[0]
        fix = f": cast it to text in the query ({name}::text, CAST({name} AS CHAR) on MariaDB)" if declared else ""
        raise SourceError(f"column {name!r} holds {type(value).__name__} values, which cannot be stored{fix}")
    return kind


def columns_of(frame: pd.DataFrame, kinds: Kinds | None = None) -> list[tuple[str, str]]:
    """A version table's columns and portable types, told from its first rows (and the source's ``kinds``)."""
    return [(str(c), infer_type(str(c), frame[c], kinds(str(c)) if kinds else None)) for c in frame.columns]


@dataclass(frozen=True)
class InLineage:
    """A version kept in a lineage (:attr:`Dialect.LINEAGES`): a full run's table starts ``lineage`` (its own
    number), a top-up adds its changes to the lineage's table."""

    table: str
    lineage: int
    version: int

    @property
    def starts(self) -> bool:
        return self.version == self.lineage


class VersionWriter:
    """Appends scored chunks to a new version table inside the caller's transaction."""

    def __init__(self, dialect: Dialect, conn: Connection, name: str, keys: Sequence[str],
                 columns: list[tuple[str, str]] | None = None, rows: int = 0, kinds: Kinds | None = None,
                 lineage: InLineage | None = None) -> None:
        """``columns``: the table exists already with these columns (a distributed run's coordinator made it);
        ``kinds``: the domain's declared column kinds, for columns its first rows cannot type; ``lineage``:
        the version is kept in one (its table starts it, or a top-up writes the rows it scored to ``name``)."""
        self.dialect = dialect
        self.conn = conn
        self.name = name
        self.keys = list(keys)
        self.columns: list[tuple[str, str]] = columns or []
        self.rows = rows
        self.kinds = kinds
        self.lineage = lineage

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame``; the first call creates the table with the types of its columns."""
        if not self.columns:
            self.columns = columns_of(frame, self.kinds)
            self.dialect.create_table(self.conn, self.name, self.columns, self.keys)
        names = [c for c, _ in self.columns]
        if list(frame.columns) != names:
            frame = frame[names]  # a table made elsewhere (a coordinator, the active version) sets the order
        self.dialect.load(self.conn, self.name, self.columns, frame)
        self.rows += len(frame)

    def finish(self) -> int:
        """Build the unique key and gather statistics (a lineage's first table is marked as one); make the view
        of a version kept in a lineage; return the rows written.

        The key is built after the load (far faster than maintaining it row by row);
        the row count and NULL keys are audited afterwards from the table itself.

        Raises:
            AuditError: a key is NULL (where the key forbids it) or listed more than once.
        """
        lineage, dialect = self.lineage, self.dialect
        if lineage is None or lineage.starts:
            try:
                with dialect.savepoint(self.conn):
                    if lineage is None:
                        dialect.add_unique_key(self.conn, self.name, self.keys)
                    else:
                        dialect.mark_lineage(self.conn, self.name, self.columns, self.keys, lineage.lineage)
            except IntegrityError:
                raise AuditError(self.key_problem()) from None
            dialect.analyze(self.conn, self.name)
        if lineage is not None:
            dialect.version_view(self.conn, lineage.table, lineage.version, lineage.lineage, self.columns)
        return self.rows

    def key_problem(self) -> str:
        """Which keys of the table written are NULL or listed more than once, for one line."""
        q = self.dialect.quote
        any_null = " OR ".join(f"{q(k)} IS NULL" for k in self.keys)
        nulls = self.conn.execute(text(f"SELECT COUNT(*) FROM {q(self.name)} WHERE {any_null}")).scalar_one()
        if nulls:
            return f"{nulls} domain row(s) have a NULL key ({', '.join(self.keys)})"
        found = duplicate_keys(self.conn, self.dialect, self.name, self.keys)
        return f"the domain lists some keys more than once, e.g. {describe_keys(self.keys, found)}"


#: Best rows a top-k run holds in memory, at most, before it moves them to a temporary table (see :class:`Spill`).
SPILL_ROWS = 1_000_000


class Spill:
    """A top-k run's best rows so far, moved out of memory once they outgrow :data:`SPILL_ROWS` (rows that
    arrive in any group order, for many groups), and ranked by the database at the end.

    Each group's best rows of every batch go to a temporary table of the writer's connection; at the end one
    ``ROW_NUMBER()`` over the groups keeps each group's K best into the version table, ordered as
    :class:`TopK` orders them (NULLs last, ties to the smaller key, text by code point), so the table is the
    same row for row as an in-memory run's.
    """

    def __init__(self, writer: VersionWriter, top: TopK, output: OutputSpec) -> None:
        self.writer, self.top, self.output = writer, top, output
        self.name = f"{writer.name}__top"  # no longer than the key index's name (names.MAX_TABLE_LENGTH)
        self.columns: list[tuple[str, str]] = []

    @property
    def used(self) -> bool:
        return bool(self.columns)

    def move(self) -> None:
        """Move the rows ``top`` holds to the temporary table."""
        frame = self.top.take()
        if frame is None or not len(frame):
            return
        writer = self.writer
        if not self.columns:
            self.columns = columns_of(frame, writer.kinds)
            writer.dialect.create_scratch(writer.conn, self.name, self.columns)
        writer.dialect.load(writer.conn, self.name, self.columns, frame[[c for c, _ in self.columns]])

    def finish(self) -> int:
        """Rank the moved rows into the version table; the rows it received (what the table must hold)."""
        self.move()
        writer, output, dialect = self.writer, self.output, self.writer.dialect
        q, types = dialect.quote, dict(self.columns)
        if not writer.columns:
            writer.columns = [*self.columns, (RANK, "integer")]
            dialect.create_table(writer.conn, writer.name, writer.columns, writer.keys)
        ranked = q(output.rank_by or "")
        order = [f"CASE WHEN {ranked} IS NULL THEN 1 ELSE 0 END", f"{ranked} {'ASC' if output.ascending else 'DESC'}",
                 *(dialect.sort_key(k, types[k]) for k in writer.keys if k not in output.group_by)]
        names = dialect.column_list([c for c, _ in self.columns])
        inserted = writer.conn.exec_driver_sql(
            f"INSERT INTO {q(writer.name)} ({names}, {q(RANK)}) SELECT {names}, _rank FROM (SELECT {names}, "
            f"ROW_NUMBER() OVER (PARTITION BY {', '.join(dialect.sort_key(g, types[g]) for g in output.group_by)} "
            f"ORDER BY {', '.join(order)}) AS _rank FROM {q(self.name)}) ranked WHERE _rank <= {int(self.top.k)}"
        ).rowcount
        dialect.drop_scratch(writer.conn, self.name)
        writer.rows += inserted
        return inserted


def fill(writer: VersionWriter, chunks: Iterator[pd.DataFrame], scorer: Scorer, job: Job,
         progress: Callable[[int], None] | None = None, phase: str = "loading",
         grouped: Callable[[], bool] | None = None) -> int:
    """Score ``chunks`` with ``scorer`` into ``writer``, keeping only each group's best rows when the job has top_k.

    Returns the rows the table must hold. ``progress`` gets the rows scored so far;
    ``phase`` is the checkpoint marked once rows are written (and not yet committed).
    ``grouped`` tells, once the first chunk was read, whether each top-k group's rows arrive
    together (:meth:`Domain.arrives_grouped`): complete groups are then written as they end.
    """
    keys = job.domain.keys
    top = TopK(job.output, keys) if job.output.top_k else None
    spill = Spill(writer, top, job.output) if top is not None else None
    scored = 0

    def put(frame: pd.DataFrame) -> None:
        writer.write(frame)
        if writer.rows == len(frame):
            checkpoint(phase)  # a partial table exists from here on

    def write(frame: pd.DataFrame) -> None:
        nonlocal scored
        if top is None:
            put(frame)
        else:
            if not scored and grouped is not None:
                top.grouped = grouped()
            top.add(frame)
            for done in top.finished():
                put(done)
            if top.held > SPILL_ROWS:
                spill.move()
        scored += len(frame)
        if progress is not None:
            progress(scored)

    overlapped(chunks, scorer, write)
    if top is None:
        return writer.rows
    if spill.used:
        expected = spill.finish()
        checkpoint(phase)
        return expected
    for frame in top.frames(job.domain.chunk_size):
        put(frame)
    return top.expected_rows
