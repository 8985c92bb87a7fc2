"""List a job's bounded input domain, chunk by chunk, without ever holding it whole.

A domain is the cartesian product of one or more factors (a plain query or file is a
product of one). The first factor is streamed; the others, the small side of a
users x items product, are held in memory and crossed with each streamed chunk in
blocks of ``chunk_size`` rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.contract import Contract
from pipeline.database.dialects import reader_for
from pipeline.database.engines import make_engine, redact
from pipeline.errors import SourceError, first_line
from pipeline.jobspec import DomainSpec, Factor


class _Digest:
    """An order-independent fingerprint of a factor's rows: count plus the wrapped sum of row hashes."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.rows = 0
        self.total = 0

    def update(self, frame: pd.DataFrame) -> None:
        self.columns = list(frame.columns)
        self.rows += len(frame)
        if len(frame):
            hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
            self.total = (self.total + int(hashes.sum(dtype=np.uint64))) % (1 << 64)  # arrays wrap silently

    def state(self) -> list[object]:
        return [self.columns, self.rows, self.total]


#: Marks the exclusions' entry of a digest (a factor's entry starts with its list of columns).
EXCLUDED = "excluded"
#: The column a left join against the exclusions sets on the rows it matched.
_MATCHED = "__pipeline_excluded"


class _Exclusions:
    """The rows to leave out (``[domain] exclude``), matched exactly on their columns by a left join.

    Rows with a NULL never match, as in SQL; duplicates are dropped once, so a join keeps each
    domain row once and in its order.
    """

    def __init__(self, frame: pd.DataFrame) -> None:
        frame = frame.dropna().drop_duplicates(ignore_index=True)
        self.columns = [str(c) for c in frame.columns]
        self.digest = _Digest()
        self.digest.update(frame)
        self.rows = frame.assign(**{_MATCHED: True})
        self.removed = 0

    def check(self, columns: Sequence[str]) -> None:
        missing = [c for c in self.columns if c not in columns]
        if missing:
            raise SourceError(f"[domain] exclude has column(s) {', '.join(missing)} that are not among the domain's "
                              f"columns: {', '.join(columns)}")

    def apply(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """``chunk`` without the rows that match an exclusion."""
        try:
            joined = chunk[self.columns].merge(self.rows, how="left", on=self.columns, sort=False)
        except (ValueError, TypeError) as exc:
            raise SourceError(f"[domain] exclude cannot be matched with the domain: {first_line(exc)} "
                              "(cast the columns to the same type)") from None
        matched = joined[_MATCHED].notna().to_numpy()
        if not matched.any():
            return chunk
        self.removed += int(matched.sum())
        return chunk[~matched].reset_index(drop=True)

    def state(self) -> list[object]:
        return [EXCLUDED, self.removed, self.digest.state()]


def _parts(digest: Sequence[list[object]]) -> tuple[list[list[object]], list[object] | None]:
    """A digest's factor entries, and its exclusions' entry or None."""
    factors = [entry for entry in digest if entry[0] != EXCLUDED]
    return factors, next((entry for entry in digest if entry[0] == EXCLUDED), None)


def _removed(digests: Sequence[Sequence[list[object]]]) -> int:
    """The rows the exclusions left out of disjoint partitions, in all."""
    return sum(int(entry[1]) for entry in (_parts(part)[1] for part in digests) if entry is not None)  # type: ignore


def partition_columns(keys: Sequence[str], first_columns: Sequence[str]) -> list[str]:
    """What partitions hash: the key columns the first factor holds, else all its columns."""
    return [k for k in keys if k in first_columns] or list(first_columns)


def merged_fingerprint(digests: Sequence[list[list[object]]]) -> str:
    """The fingerprint of the union of disjoint partitions, from each one's :attr:`Domain.digest`.

    Partitions split the first factor only: its counts and hash sums add up; the other
    factors were read whole by each partition.
    """
    first = [part[0] for part in digests]
    columns = next((c for c, _, _ in first if c), [])
    factors, exclusions = _parts(digests[0])
    merged = [[columns, sum(int(r) for _, r, _ in first), sum(int(t) for _, _, t in first) % (1 << 64)],
              *factors[1:]]
    if exclusions is not None:  # the rows each partition left out add up; the list itself is the same in each
        merged.append([EXCLUDED, _removed(digests), exclusions[2]])
    return hashlib.sha256(json.dumps(merged).encode()).hexdigest()


def merged_size(digests: Sequence[list[list[object]]]) -> int:
    """The size of the union of disjoint partitions: the first factor's rows times the other factors'."""
    if not digests:
        return 0
    size = sum(int(part[0][1]) for part in digests)
    for _, rows, _ in _parts(digests[0])[0][1:]:
        size *= int(rows)
    return size - _removed(digests)


class Domain:
    """One run's view of the domain: streams chunks and keeps their count and fingerprint."""

    def __init__(self, spec: DomainSpec, target: Engine, run_date: date | None = None,
                 *, since: datetime | None = None, snapshots: Mapping[str | None, str] | None = None) -> None:
        """``since``: what queries that name ``:since`` (a top-up's change queries) are given."""
        self.spec = spec
        self.target = target
        self.run_date = run_date
        self.since = since
        #: The snapshot each query source is read as of, by source (None: the target), from :meth:`one_instant`.
        self.snapshots = dict(snapshots or {})
        self.size = 0
        self._digests = [_Digest() for _ in spec.factors]
        self._engines: dict[str, Engine] = {}
        self._pushed_down = False
        self._exclusions: _Exclusions | None = None
        #: Each factor's column kinds, decided at its first read and kept for every later one.
        self.contracts = [Contract(spec.keys) for _ in spec.factors]

    @property
    def fingerprint(self) -> str:
        """sha256 of what was streamed: the same rows in any order give the same fingerprint."""
        return merged_fingerprint([self.digest])

    @property
    def digest(self) -> list[list[object]]:
        """What the fingerprint is made of; the digests of disjoint partitions merge into the whole's."""
        return [d.state() for d in self._digests] + ([self._exclusions.state()] if self._exclusions else [])

    def arrives_grouped(self, columns: Sequence[str]) -> bool:
        """Whether each group of ``columns`` arrives as one run of rows (known once a chunk was read): a product
        crosses each row of its first factor with all of the others in turn, so groups by exactly the first
        factor's keys do, with or without partitions and exclusions."""
        first_keys = {k for k in self.spec.keys if k in self.first_columns}
        return len(self.spec.factors) > 1 and bool(first_keys) and set(columns) == first_keys

    def kind(self, column: str) -> str | None:
        """The kind a factor's source declared for ``column`` (or its values told), once it was read."""
        return next((c.kinds[column] for c in self.contracts if c.kinds.get(column)), None)

    @property
    def first_columns(self) -> list[str]:
        """The first factor's columns (known once a chunk was read)."""
        return self._digests[0].columns

    def clock(self) -> datetime:
        """The clock of the first factor's database, in UTC (see :meth:`pipeline.database.dialects.Dialect.clock`).

        Raises:
            SourceError: the database cannot be asked.
        """
        source = self.spec.factors[0].source
        engine = self._engine(source)
        try:
            return reader_for(engine).clock(engine)
        except SQLAlchemyError as exc:
            where = f" of {redact(source)}" if source else ""
            raise SourceError(f"cannot read the clock{where}: {first_line(exc)}") from None

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()

    @contextlib.contextmanager
    def one_instant(self, partitioned: bool = False) -> Iterator[None]:
        """Within the block, read each query source as of one instant, however many statements read it.

        A source read by several statements (several factors, an exclusion list, or ``partitioned``:
        a sample and each partition, in other processes too) exports a snapshot where its database can share
        one (PostgreSQL), held until the block ends; :attr:`snapshots` carries the ids to the
        partitions' own Domains. Elsewhere (SQLite, MariaDB) each statement reads its own instant,
        and files are read as they are.
        """
        read = [*self.spec.factors, *([self.spec.exclude] if self.spec.exclude else [])]
        statements = Counter(f.source for f in read if f.query is not None)
        with contextlib.ExitStack() as stack:
            for source, count in statements.items():
                if partitioned or count > 1:
                    engine = self._engine(source)
                    try:
                        exported = stack.enter_context(reader_for(engine).export_snapshot(engine))
                    except SourceError as exc:
                        raise SourceError(f"cannot export a snapshot of the domain{_on(source)}: {exc}") from None
                    if exported is not None:
                        self.snapshots[source] = exported
            try:
                yield
            finally:
                self.snapshots.clear()

    def chunks(self, partition: int = 0, partitions: int = 1,
               by: Sequence[str] | None = None) -> Iterator[pd.DataFrame]:
        """Yield the domain (or partition ``partition`` of ``partitions`` disjoint ones) in chunks.

        Partitions split the first factor by a stable hash of ``by`` (its key columns by
        default), so the partitions of a product are disjoint products themselves. Where
        the database can hash, a query reads only its partition's rows.
        """
        if not 0 <= partition < partitions:
            raise ValueError(f"partition {partition} is not in 0..{partitions - 1}")
        self.size = 0
        self._digests = [_Digest() for _ in self.spec.factors]
        rest = []
        for digest, factor, contract in zip(self._digests[1:], self.spec.factors[1:], self.contracts[1:]):
            frame = pd.concat(list(self._read(factor, contract)), ignore_index=True)
            digest.update(frame)
            rest.append(frame)
        self._exclusions = self._read_exclusions()
        checked = False
        first_factor = self.spec.factors[0]
        pushed = self._partition_query(first_factor, by, partition, partitions) if partitions > 1 and by else None
        self._pushed_down = pushed is not None
        if pushed is not None:
            first_factor = dataclasses.replace(first_factor, query=pushed)
        with contextlib.closing(self._read(first_factor, self.contracts[0])) as stream:
            for first in stream:
                if not checked:
                    self._check_columns([first, *rest])
                    checked = True
                if partitions > 1 and not self._pushed_down:
                    first = self._partition(first, by, partition, partitions)
                self._digests[0].update(first)
                for chunk in self._cross(first, rest):
                    if self._exclusions is not None:
                        chunk = self._exclusions.apply(chunk)
                    if len(chunk):
                        self.size += len(chunk)
                        yield chunk

    # -- reading factors ----------------------------------------------------

    def _read(self, factor: Factor, contract: Contract) -> Iterator[pd.DataFrame]:
        if factor.file is not None:
            yield from self._read_file(factor.file, contract)
        else:
            yield from self._read_query(factor, contract)

    def _read_exclusions(self) -> _Exclusions | None:
        """The rows ``[domain] exclude`` lists, read whole (like every factor but the first)."""
        if self.spec.exclude is None:
            return None
        frames = list(self._read(self.spec.exclude, Contract(self.spec.keys)))
        if not frames:
            return None
        return _Exclusions(pd.concat(frames, ignore_index=True))

    def _partition_query(self, factor: Factor, by: Sequence[str], partition: int, partitions: int) -> str | None:
        """The factor's query narrowed to one partition in its database, where the database can hash."""
        if factor.query is None:
            return None
        return reader_for(self._engine(factor.source)).partition_query(factor.query, by, partition, partitions)

    def _read_file(self, path: Path, contract: Contract) -> Iterator[pd.DataFrame]:
        """A Parquet file declares its column types; a CSV file's are told from the first values of each column."""
        size = self.spec.chunk_size
        try:
            if path.suffix.lower() == ".csv":
                with pd.read_csv(path, chunksize=size) as reader:
                    for chunk in reader:
                        yield contract.conform(chunk)
            else:
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
                    yield contract.arrow(batch)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise SourceError(f"cannot read domain file {path}: {first_line(exc)}") from None

    def _engine(self, source: str | None) -> Engine:
        if source is None:
            return self.target
        if source not in self._engines:
            self._engines[source] = make_engine(source)
        return self._engines[source]

    def _read_query(self, factor: Factor, contract: Contract) -> Iterator[pd.DataFrame]:
        assert factor.query is not None
        engine = self._engine(factor.source)
        try:
            yield from reader_for(engine).read_query(engine, factor.query, self.run_date, self.spec.chunk_size,
                                                     contract, self.since, self.snapshots.get(factor.source))
        except SourceError as exc:
            raise SourceError(f"domain query failed{_on(factor.source)}: {str(exc).lstrip()}") from None

    # -- shaping ------------------------------------------------------------

    def _check_columns(self, frames: list[pd.DataFrame]) -> None:
        seen: dict[str, int] = {}
        for i, frame in enumerate(frames):
            for column in frame.columns:
                if column in seen:
                    raise SourceError(f"domain column {column!r} comes from more than one factor "
                                      f"(factors {seen[column] + 1} and {i + 1}); rename one")
                seen[column] = i
        missing = [k for k in self.spec.keys if k not in seen]
        if missing:
            raise SourceError(f"domain key(s) {', '.join(missing)} not among the domain's columns: "
                              f"{', '.join(map(str, seen))}")
        if self._exclusions is not None:
            self._exclusions.check(list(map(str, seen)))

    def _partition(self, frame: pd.DataFrame, by: Sequence[str] | None, partition: int,
                   partitions: int) -> pd.DataFrame:
        keys = list(by or partition_columns(self.spec.keys, list(frame.columns)))
        buckets = pd.util.hash_pandas_object(frame[keys], index=False).to_numpy() % np.uint64(partitions)
        return frame[buckets == partition]

    def _cross(self, first: pd.DataFrame, rest: list[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        if not rest:
            if len(first):
                yield first.reset_index(drop=True)
            return
        shape = (len(first), *(len(r) for r in rest))
        total = int(np.prod(shape, dtype=np.int64))
        for start in range(0, total, self.spec.chunk_size):
            positions = np.unravel_index(np.arange(start, min(start + self.spec.chunk_size, total)), shape)
            parts = [frame.iloc[pos].reset_index(drop=True) for frame, pos in zip([first, *rest], positions)]
            yield pd.concat(parts, axis=1)


def _on(source: str | None) -> str:
    """Where a domain query ran, for errors: its source without the password; nothing for the target."""
    return f" on {redact(source)}" if source else ""
