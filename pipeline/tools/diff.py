"""Compare two versions of a prediction table: which keys came and went, and how the predictions moved.

Answers the question asked before (or after) a flip: what would change for the
applications? Everything is computed in the database with a handful of joins on
the key columns, so a diff of two 10-million-row versions pulls only figures,
histogram counts and the ``top`` rows into memory, never the tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from pipeline.database import state
from pipeline.database.dialects import Dialect, dialect_for
from pipeline.database.transactions import reading
from pipeline.errors import TableError
from pipeline.names import version_table

#: Portable column types whose change is a number (B - A).
NUMERIC_TYPES = ("integer", "float", "numeric")
#: Equal-width bins of each numeric column's histogram of changes.
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Bin:
    """One bar of a histogram of changes: ``count`` keys moved by ``low <= B - A < high`` (the last bar includes
    ``high``)."""

    low: float
    high: float
    count: int


@dataclass(frozen=True)
class Mover:
    """One key whose numeric prediction moved, with both values, so a person can check it by hand."""

    key: tuple[Any, ...]
    a: Any
    b: Any
    change: float       # B - A


@dataclass(frozen=True)
class NumericDiff:
    """How a numeric output column moved over the keys both versions hold.

    The means and the maximum are taken over keys where both values are non-NULL
    (``compared``); a key counts as ``changed`` when its value differs at all,
    NULL against a value included. They are None when nothing could be compared.
    """

    column: str
    shared: int                     # keys in both versions
    compared: int                   # shared keys with a value in both
    changed: int                    # shared keys whose value differs
    changed_share: float            # changed / shared (0.0 when nothing is shared)
    mean_change: float | None       # mean of B - A
    mean_abs_change: float | None   # mean of |B - A|
    max_abs_change: float | None    # largest |B - A|
    histogram: tuple[Bin, ...]      # HISTOGRAM_BINS bins from the smallest to the largest change; one if all equal
    top: tuple[Mover, ...]          # the largest |B - A| first, at most ``top``; unchanged keys left out


@dataclass(frozen=True)
class LabelChange:
    """A pair of values of a non-numeric output, and how many shared keys went from ``a`` to ``b``."""

    a: Any
    b: Any
    count: int


@dataclass(frozen=True)
class LabelDiff:
    """How a non-numeric output column (a class label, say) changed over the keys both versions hold."""

    column: str
    shared: int                     # keys in both versions
    changed: int                    # shared keys whose value differs, NULL against a value included
    changed_share: float            # changed / shared (0.0 when nothing is shared)
    top: tuple[LabelChange, ...]    # the most frequent changes first, at most ``top``


@dataclass(frozen=True)
class VersionDiff:
    """Version ``b`` of ``table`` against version ``a``: keys, then each output column both versions hold."""

    table: str
    a: int
    b: int
    keys: tuple[str, ...]
    only_in_a: int                  # keys that version b dropped
    only_in_b: int                  # keys that version b added
    in_both: int
    numeric: tuple[NumericDiff, ...]            # in version a's column order
    labels: tuple[LabelDiff, ...]               # non-numeric outputs (or numeric in one version only)
    columns_only_in_a: tuple[str, ...]
    columns_only_in_b: tuple[str, ...]

    @property
    def rows_a(self) -> int:
        return self.only_in_a + self.in_both

    @property
    def rows_b(self) -> int:
        return self.only_in_b + self.in_both


def diff_versions(engine: Engine, table: str, a: int, b: int, top: int = 10) -> VersionDiff:
    """Compare version ``b`` of ``table`` with version ``a``, in the database.

    Args:
        engine: the database holding the prediction table.
        table: the prediction table (its stable view's name).
        a: the version compared against (the baseline, usually the active one).
        b: the version compared (usually the candidate).
        top: how many biggest movers and most frequent label changes to list per column.

    Raises:
        TableError: an unknown table or version, a version whose table is gone (retired or cleaned),
            or versions keyed by different columns.
        DatabaseError: the database refused a query.
    """
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise TableError(f"top must be a whole number of rows, 0 or more, got {top!r}")
    dialect = dialect_for(engine)
    with reading(engine) as conn:
        state.require_table(conn, table)
        old, new = (_usable(conn, table, v) for v in (a, b))
        if set(old.keys) != set(new.keys):
            raise TableError(f"{table}: version {a} is keyed by ({', '.join(old.keys)}) and version {b} by "
                             f"({', '.join(new.keys)}); versions with different keys cannot be compared")
        pair = _Pair(dialect, version_table(table, a), version_table(table, b), old.keys)
        only_in_a, in_both, only_in_b = _domain(conn, pair)
        kinds_a = dict(old.outputs)
        kinds_b = dict(new.outputs)
        shared = [c for c in kinds_a if c in kinds_b]
        numeric = [c for c in shared if kinds_a[c] in NUMERIC_TYPES and kinds_b[c] in NUMERIC_TYPES]
        others = [c for c in shared if c not in numeric]
        numeric_diffs = _numeric(conn, pair, numeric, in_both, top)
        label_diffs = tuple(_labels(conn, pair, c, kinds_a[c] != kinds_b[c], in_both, top) for c in others)
    return VersionDiff(
        table=table, a=a, b=b, keys=old.keys, only_in_a=only_in_a, only_in_b=only_in_b, in_both=in_both,
        numeric=numeric_diffs, labels=label_diffs,
        columns_only_in_a=tuple(c for c in kinds_a if c not in kinds_b),
        columns_only_in_b=tuple(c for c in kinds_b if c not in kinds_a),
    )


def _usable(conn: Connection, table: str, version: int) -> state.Version:
    """The metadata of a version whose table is still there to read."""
    found = state.get_version(conn, table, version)
    if found is None:
        raise TableError(f"{table} has no version {version} (see `pipeline versions {table}`)")
    physical = version_table(table, version)
    if not conn.dialect.has_table(conn, physical):
        why = "it was retired" if found.status == "retired" else f"it is {found.status}"
        raise TableError(f"{table} version {version} cannot be compared: {why} and its table {physical} is gone")
    if not found.columns:  # a table without recorded columns is still being written
        raise TableError(f"{table} version {version} cannot be compared: it is {found.status} and its columns "
                         "are not recorded yet")
    return found


@dataclass(frozen=True)
class _Pair:
    """The two physical tables and the SQL pieces every query joins them with (``a`` and ``b`` aliases)."""

    dialect: Dialect
    table_a: str
    table_b: str
    keys: tuple[str, ...]

    def q(self, name: str) -> str:
        return self.dialect.quote(name)

    @property
    def on(self) -> str:
        return " AND ".join(f"a.{self.q(k)} = b.{self.q(k)}" for k in self.keys)

    @property
    def join(self) -> str:
        return f"{self.q(self.table_a)} a JOIN {self.q(self.table_b)} b ON {self.on}"

    @property
    def key_order(self) -> str:
        return ", ".join(f"a.{self.q(k)}" for k in self.keys)

    def as_float(self, side: str, column: str) -> str:
        return f"CAST({side}.{self.q(column)} AS {self.dialect.type_sql('float')})"

    def as_text(self, side: str, column: str) -> str:
        return f"CAST({side}.{self.q(column)} AS {self.dialect.type_sql('text')})"

    @staticmethod
    def differs(x: str, y: str) -> str:
        """``x`` and ``y`` differ, NULL against a value included (IS DISTINCT FROM, spelt portably)."""
        return f"({x} <> {y} OR ({x} IS NULL AND {y} IS NOT NULL) OR ({x} IS NOT NULL AND {y} IS NULL))"


def _domain(conn: Connection, pair: _Pair) -> tuple[int, int, int]:
    """Keys only in A, in both, only in B: one LEFT JOIN over A and one NOT EXISTS over B."""
    q = pair.q
    first = q(pair.keys[0])  # key columns are never NULL in a version table, so one tells a missing match
    rows_a, only_a = conn.execute(text(
        f"SELECT COUNT(*), SUM(CASE WHEN b.{first} IS NULL THEN 1 ELSE 0 END) "
        f"FROM {q(pair.table_a)} a LEFT JOIN {q(pair.table_b)} b ON {pair.on}")).one()
    only_b = conn.execute(text(
        f"SELECT COUNT(*) FROM {q(pair.table_b)} b "
        f"WHERE NOT EXISTS (SELECT 1 FROM {q(pair.table_a)} a WHERE {pair.on})")).scalar_one()
    only_a = int(only_a or 0)
    return only_a, int(rows_a) - only_a, int(only_b)


def _numeric(conn: Connection, pair: _Pair, columns: Sequence[str], shared: int,
             top: int) -> tuple[NumericDiff, ...]:
    """The figures of every numeric column in one pass over the shared keys, then a histogram and movers each."""
    if not columns:
        return ()
    terms = []
    for column in columns:
        x, y = pair.as_float("a", column), pair.as_float("b", column)
        change = f"{y} - {x}"
        terms += [f"COUNT({change})", f"AVG({change})", f"AVG(ABS({change}))", f"MIN({change})",
                  f"MAX({change})", f"SUM(CASE WHEN {pair.differs(x, y)} THEN 1 ELSE 0 END)"]
    row = conn.execute(text(f"SELECT {', '.join(terms)} FROM {pair.join}")).one()
    diffs = []
    for i, column in enumerate(columns):
        compared, mean, mean_abs, low, high, changed = row[6 * i: 6 * i + 6]
        compared, changed = int(compared or 0), int(changed or 0)
        low, high = _float(low), _float(high)
        diffs.append(NumericDiff(
            column=column, shared=shared, compared=compared, changed=changed,
            changed_share=changed / shared if shared else 0.0,
            mean_change=_float(mean) if compared else None,
            mean_abs_change=_float(mean_abs) if compared else None,
            max_abs_change=max(abs(low), abs(high)) if compared else None,
            histogram=_histogram(conn, pair, column, low, high, compared),
            top=_movers(conn, pair, column, top),
        ))
    return tuple(diffs)


def _histogram(conn: Connection, pair: _Pair, column: str, low: float | None, high: float | None,
               compared: int) -> tuple[Bin, ...]:
    """Counts of B - A in equal-width bins between its extremes, bucketed by the database."""
    if not compared or low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return ()
    if low == high:
        return (Bin(low, high, compared),)
    width = (high - low) / HISTOGRAM_BINS
    change = f"{pair.as_float('b', column)} - {pair.as_float('a', column)}"
    bucket = (f"CASE WHEN {change} >= {high!r} THEN {HISTOGRAM_BINS - 1} "
              f"ELSE {pair.dialect.floor_sql(f'({change} - {low!r}) / {width!r}')} END")
    counts = [0] * HISTOGRAM_BINS
    for b, n in conn.execute(text(f"SELECT {bucket} AS bucket, COUNT(*) FROM {pair.join} "
                                  f"WHERE {change} IS NOT NULL GROUP BY 1")):
        counts[min(max(int(b), 0), HISTOGRAM_BINS - 1)] += int(n)
    edges = [low + i * width for i in range(HISTOGRAM_BINS)] + [high]
    return tuple(Bin(edges[i], edges[i + 1], counts[i]) for i in range(HISTOGRAM_BINS))


def _movers(conn: Connection, pair: _Pair, column: str, top: int) -> tuple[Mover, ...]:
    """The ``top`` shared keys with the largest |B - A|, ties in key order."""
    if not top:
        return ()
    q = pair.q
    change = f"{pair.as_float('b', column)} - {pair.as_float('a', column)}"
    rows = conn.execute(text(
        f"SELECT {pair.key_order}, a.{q(column)}, b.{q(column)}, {change} FROM {pair.join} "
        f"WHERE ABS({change}) > 0 ORDER BY ABS({change}) DESC, {pair.key_order} LIMIT {int(top)}"))
    width = len(pair.keys)
    return tuple(Mover(tuple(r[:width]), r[width], r[width + 1], float(r[width + 2])) for r in rows)


def _labels(conn: Connection, pair: _Pair, column: str, retyped: bool, shared: int, top: int) -> LabelDiff:
    """Changed count and the most frequent (A value, B value) pairs of a non-numeric column.

    A column whose type differs between the versions is compared as text.
    """
    q = pair.q
    if retyped:
        x, y = pair.as_text("a", column), pair.as_text("b", column)
    else:
        x, y = f"a.{q(column)}", f"b.{q(column)}"
    changed = conn.execute(text(
        f"SELECT SUM(CASE WHEN {pair.differs(x, y)} THEN 1 ELSE 0 END) FROM {pair.join}")).scalar_one()
    changed = int(changed or 0)
    pairs: tuple[LabelChange, ...] = ()
    if top and changed:
        nulls_last = f"CASE WHEN {x} IS NULL THEN 1 ELSE 0 END, {x}, CASE WHEN {y} IS NULL THEN 1 ELSE 0 END, {y}"
        rows = conn.execute(text(
            f"SELECT {x}, {y}, COUNT(*) FROM {pair.join} WHERE {pair.differs(x, y)} "
            f"GROUP BY {x}, {y} ORDER BY COUNT(*) DESC, {nulls_last} LIMIT {int(top)}"))
        pairs = tuple(LabelChange(r[0], r[1], int(r[2])) for r in rows)
    return LabelDiff(column=column, shared=shared, changed=changed,
                     changed_share=changed / shared if shared else 0.0, top=pairs)


def _float(value: Any) -> float | None:
    """A database number as a float (PostgreSQL hands back Decimal for some aggregates)."""
    return None if value is None else float(value)
