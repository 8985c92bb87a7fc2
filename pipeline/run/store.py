"""Write one version table: infer its columns, score chunks into it (:func:`fill`, which keeps only each group's
best rows with top_k), then build its key and statistics."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import pandas as pd
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pipeline.contract import value_kind
from pipeline.database.dialects import Dialect
from pipeline.database.dialects.base import COLUMN_TYPES
from pipeline.errors import AuditError, SourceError
from pipeline.jobspec import Job
from pipeline.phases import checkpoint
from pipeline.run.audits import describe_keys, duplicate_keys
from pipeline.run.scoring import Scorer, TopK
from pipeline.run.stages import overlapped

#: A column's kind as its source declared it (see :meth:`pipeline.run.domain.Domain.kind`), or None.
Kinds = Callable[[str], str | None]


def infer_type(name: str, series: pd.Series, declared: str | None = None) -> str:
    """The portable column type (see ``dialects.base.COLUMN_TYPES``) that holds ``series``: its kind in the
    input contract (outputs of floats that are all NaN are still floats), or where its values cannot tell
    (dates that are all NULL in the first chunk), the kind its source ``declared``."""
    if pd.api.types.is_float_dtype(series.dtype):
        return "float"
    kind = value_kind(series) or (declared if declared in COLUMN_TYPES else None)
    if kind is None:
        raise SourceError(f"column {name!r} holds only NULLs in the first chunk; its type cannot be told")
    if kind == "other":
        value = series.dropna().iloc[0]
        raise SourceError(f"column {name!r} holds {type(value).__name__} values, which cannot be stored")
    return kind


def columns_of(frame: pd.DataFrame, kinds: Kinds | None = None) -> list[tuple[str, str]]:
    """A version table's columns and portable types, told from its first rows (and the source's ``kinds``)."""
    return [(str(c), infer_type(str(c), frame[c], kinds(str(c)) if kinds else None)) for c in frame.columns]


class VersionWriter:
    """Appends scored chunks to a new version table inside the caller's transaction."""

    def __init__(self, dialect: Dialect, conn: Connection, name: str, keys: Sequence[str],
                 columns: list[tuple[str, str]] | None = None, rows: int = 0, kinds: Kinds | None = None) -> None:
        """``columns``: the table exists already with these columns (a distributed run's coordinator made it);
        ``kinds``: the domain's declared column kinds, for columns its first rows cannot type."""
        self.dialect = dialect
        self.conn = conn
        self.name = name
        self.keys = list(keys)
        self.columns: list[tuple[str, str]] = columns or []
        self.rows = rows
        self.kinds = kinds

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
        """Build the unique key and gather statistics; return the rows written.

        The key is built after the load (far faster than maintaining it row by row);
        the row count and NULL keys are audited afterwards from the table itself.

        Raises:
            AuditError: a key is NULL (where the key forbids it) or listed more than once.
        """
        try:
            with self.dialect.savepoint(self.conn):
                self.dialect.add_unique_key(self.conn, self.name, self.keys)
        except IntegrityError:
            raise AuditError(self._key_problem()) from None
        self.dialect.analyze(self.conn, self.name)
        return self.rows

    def _key_problem(self) -> str:
        q = self.dialect.quote
        any_null = " OR ".join(f"{q(k)} IS NULL" for k in self.keys)
        nulls = self.conn.execute(text(f"SELECT COUNT(*) FROM {q(self.name)} WHERE {any_null}")).scalar_one()
        if nulls:
            return f"{nulls} domain row(s) have a NULL key ({', '.join(self.keys)})"
        found = duplicate_keys(self.conn, self.dialect, self.name, self.keys)
        return f"the domain lists some keys more than once, e.g. {describe_keys(self.keys, found)}"


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
        scored += len(frame)
        if progress is not None:
            progress(scored)

    overlapped(chunks, scorer, write)
    if top is None:
        return writer.rows
    for frame in top.frames(job.domain.chunk_size):
        put(frame)
    return top.expected_rows
