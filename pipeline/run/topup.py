"""Incremental top-ups: a new version made from the active one, scoring only new and changed keys.

Every version row stores a hash of its features (``input_hash``). An incremental run
streams the domain as usual, but scores only the rows whose key and feature hash the
active version does not hold; the others keep their prediction, copied inside the
database, and keys gone from the domain are left out. The model must be the active
version's (same sha256): a new model means every row must be scored again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection, Engine

from pipeline.database import schema, state
from pipeline.database.dialects import Dialect, reader_for
from pipeline.database.transactions import reading
from pipeline.errors import PipelineError
from pipeline.jobspec import Job
from pipeline.names import INPUT_HASH, version_table
from pipeline.run.model import Model
from pipeline.run.scoring import check_inputs, hashed, input_hashes
from pipeline.run.stages import closing

#: Keys per statement when reading the active version's keys and hashes.
READ_CHUNK = 500_000


def check(job: Job) -> None:
    """What an incremental run cannot do, refused before anything is built."""
    if job.executor.kind != "local":
        raise PipelineError("--incremental runs on the local executor (drop --executor dask)")
    if job.output.top_k:
        raise PipelineError("--incremental cannot keep top_k rankings (a changed row moves its whole group); "
                            "run without --incremental")


@dataclass
class TopUp:
    """The active version's rows, as far as one incremental run needs them."""

    version: int
    columns: list[tuple[str, str]]
    keys: list[str]
    model: Model
    index: pd.Index                 # the key of every active row (unique: the version's key)
    hashes: np.ndarray              # and its input_hash, position for position
    #: Active rows whose key and inputs the domain listed again: they are copied, not scored.
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    checked: bool = False
    #: The domain columns the job passes through (``[output] include``), hashed with the features.
    include: tuple[str, ...] = ()

    @property
    def copied(self) -> int:
        return int(self.kept.sum())

    def to_score(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``chunk`` to score: new keys and keys whose features changed."""
        if not self.checked:
            check_inputs(self.model, self.keys, list(map(str, chunk.columns)), self.include)
            self.checked = True
        positions = self.index.get_indexer(_keys(chunk[self.keys]))
        known = positions >= 0
        hashes = input_hashes(chunk[hashed(self.model, self.include)])
        same = known & (self.hashes[np.where(known, positions, 0)] == hashes)
        self.kept[positions[same]] = True
        return chunk[~same]

    def changed(self, chunks: Iterable[pd.DataFrame],
                progress: Callable[[int], None] | None = None) -> Iterator[pd.DataFrame]:
        """The rows of ``chunks`` to score, chunk by chunk (empty ones left out); ``progress`` gets the
        domain rows read so far."""
        read = 0
        with closing(chunks):
            for chunk in chunks:
                read += len(chunk)
                if progress is not None:
                    progress(read)
                rows = self.to_score(chunk)
                if len(rows):
                    yield rows

    def copy(self, conn: Connection, dialect: Dialect, physical: str, table: str) -> int:
        """Copy the kept rows of the active version into ``physical`` inside the database; their count."""
        gone = self.index[~self.kept].to_frame(index=False)  # changed or left the domain
        gone.columns = self.keys
        copy_except(conn, dialect, physical, version_table(table, self.version), self.columns, self.keys, gone)
        return self.copied


def copy_except(conn: Connection, dialect: Dialect, physical: str, source: str, columns: Sequence[tuple[str, str]],
                keys: Sequence[str], gone: pd.DataFrame, count_held: bool = False) -> tuple[int, int]:
    """Copy the rows of version table ``source`` whose key ``gone`` (unique keys) does not hold into ``physical``,
    inside the database: ``gone`` is loaded into a keyed temporary ``<physical>__gone`` table (which commits nothing,
    on MariaDB too, and which a run that dies leaves nowhere), and the copy is one INSERT ... SELECT ... WHERE NOT
    EXISTS. Returns the rows copied and, with ``count_held``, the rows of ``source`` that ``gone`` held (counted from
    ``gone``'s side through ``source``'s key, cheap when few keys are gone; else 0). A key with a NULL matches none."""
    q = dialect.quote
    names = dialect.column_list([c for c, _ in columns])
    if gone[list(keys)].dropna().empty:
        done = conn.exec_driver_sql(f"INSERT INTO {q(physical)} ({names}) SELECT {names} FROM {q(source)}")
        return done.rowcount, 0
    with gone_table(conn, dialect, f"{physical}__gone", columns, keys, gone) as dropped:
        match = " AND ".join(f"g.{q(k)} = a.{q(k)}" for k in keys)
        held = conn.exec_driver_sql(f"SELECT COUNT(*) FROM {q(dropped)} g WHERE EXISTS "
                                    f"(SELECT 1 FROM {q(source)} a WHERE {match})").scalar_one() if count_held else 0
        done = conn.exec_driver_sql(
            f"INSERT INTO {q(physical)} ({names}) SELECT {', '.join(f'a.{q(c)}' for c, _ in columns)} "
            f"FROM {q(source)} a WHERE NOT EXISTS (SELECT 1 FROM {q(dropped)} g WHERE {match})")
    return done.rowcount, int(held)


@contextlib.contextmanager
def gone_table(conn: Connection, dialect: Dialect, name: str, columns: Sequence[tuple[str, str]],
               keys: Sequence[str], gone: pd.DataFrame) -> Iterator[str]:
    """The keys ``gone`` (unique; those with a NULL left out: they match none) in a keyed temporary table ``name``
    of the connection for the block, which commits nothing (on MariaDB too) and which a run that dies leaves
    nowhere."""
    types = dict(columns)
    gone_columns = [(k, types[k]) for k in keys]
    dialect.create_scratch(conn, name, gone_columns, keys)
    dialect.load(conn, name, gone_columns, gone[list(keys)].dropna())
    yield name
    dialect.drop_scratch(conn, name)


def _keys(keys: pd.DataFrame) -> pd.Index:
    """The keys as an index: a plain one for a single key column (much faster to build and probe)."""
    if len(keys.columns) == 1:
        return pd.Index(keys.iloc[:, 0].to_numpy())
    return pd.MultiIndex.from_arrays([keys[k].to_numpy() for k in keys.columns])


def from_active(engine: Engine, job: Job, model: Model) -> TopUp:
    """Read the active version's keys and input hashes, after checking it can be topped up.

    Raises:
        PipelineError: what :func:`check` refuses, no active version, another model, or a version made
            before input hashes.
    """
    check(job)
    table = job.output.table
    with reading(engine) as conn:
        active = state.active_version(conn, table) if schema.has_schema(conn) else None
    if active is None:
        raise PipelineError(f"{table} has no active version to top up; run without --incremental first")
    if active.model_sha256 != model.sha256:
        raise PipelineError(f"--incremental keeps the active version's predictions, but version {active.version} "
                            f"was scored by model sha256 {active.model_sha256[:12]} and the job's model is "
                            f"{model.sha256[:12]}; run without --incremental to score every row")
    columns = list(active.columns)
    if INPUT_HASH not in dict(columns) or list(active.keys) != list(job.domain.keys):
        raise PipelineError(f"version {active.version} of {table} has no {INPUT_HASH} for its keys (made by an "
                            "older release or another key); run without --incremental once")
    if active.passthrough != job.output.include:
        raise PipelineError(f"version {active.version} of {table} passes through "
                            f"({', '.join(active.passthrough) or 'nothing'}) and the job's [output] include is "
                            f"({', '.join(job.output.include) or 'nothing'}); run without --incremental once")
    keys = list(job.domain.keys)
    reader = reader_for(engine)
    select = f"SELECT {reader.column_list(keys + [INPUT_HASH])} FROM {reader.quote(version_table(table, active.version))}"
    parts = list(reader.read_query(engine, select, None, READ_CHUNK))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=keys + [INPUT_HASH])
    index = _keys(frame[keys])
    return TopUp(active.version, columns, keys, model, index, frame[INPUT_HASH].to_numpy(dtype=np.int64),
                 np.zeros(len(index), dtype=bool), include=job.output.include)
