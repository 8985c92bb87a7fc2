"""The input contract: one pandas dtype per source column type, decided once per run, never per chunk.

A model must see the same dtypes and the same missing value for a column whatever chunk a
row falls in and whatever database it came from; otherwise an encoder fitted on NaN meets
``None``, or a strict library refuses one chunk and not the next. Every reader hands its
rows to a :class:`Contract`, which decides each column's *kind* from the source's own
column types (result metadata, the Arrow schema, SQLite's declared types, MySQL's field types), or, where a
column has none (an expression in SQLite, a CSV file), from its first non-NULL values,
and then keeps it for the whole run.

============  =========================  =============  =========================================
kind          pandas dtype               missing value  from
============  =========================  =============  =========================================
integer       ``Int64``                  ``pd.NA``      smallint, integer, bigint (MySQL: also year)
float         ``float64``                ``NaN``        real, double precision, float
numeric       ``float64``                ``NaN``        numeric, decimal (as ``read_sql`` does)
boolean       ``boolean``                ``pd.NA``      boolean (MySQL: tinyint(1), which BOOLEAN is)
text          ``str``                    ``NaN``        text, varchar, char
date          ``object`` (datetime.date) ``None``       date
timestamp     ``datetime64[us]``         ``NaT``        timestamp without time zone
timestamptz   ``datetime64[us, UTC]``    ``NaT``        timestamp with time zone
============  =========================  =============  =========================================

Other types (bytes, JSON, UUID...) are passed on as the driver gives them, with ``None``; arrays and values
pandas cannot hold (a time of 24:00) fail naming the column.
A column whose kind is not known yet because every value so far was NULL arrives as
``float64`` NaN, which numeric and text encoders alike take as missing.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import SourceError

#: The pandas dtype each kind is delivered as.
DTYPES: dict[str, Any] = {
    "integer": "Int64",
    "float": "float64",
    "numeric": "float64",
    "boolean": "boolean",
    "text": "str",
    "date": "object",
    "timestamp": "datetime64[us]",
    "timestamptz": "datetime64[us, UTC]",
}


def sqlite_kind(declared: str | None) -> str | None:
    """A kind from a SQLite declared column type, by SQLite's own affinity rules plus the names
    SQLAlchemy declares (BOOLEAN, DATE, DATETIME); None where nothing is declared."""
    d = (declared or "").upper()
    if not d:
        return None
    if "BOOL" in d:
        return "boolean"
    if "TIMESTAMP" in d or "DATETIME" in d:
        return "timestamptz" if "TIME ZONE" in d and "WITHOUT" not in d else "timestamp"
    if "DATE" in d:
        return "date"
    if "INT" in d:
        return "integer"
    if any(t in d for t in ("CHAR", "CLOB", "TEXT")):
        return "text"
    if any(t in d for t in ("REAL", "FLOA", "DOUB")):
        return "float"
    if "NUMERIC" in d or "DECIMAL" in d:
        return "numeric"
    return None


#: MySQL/MariaDB field type codes (the protocol's, which every driver reports in ``cursor.description``) -> kinds.
_MYSQL_KINDS: dict[int, str | None] = {
    0: "numeric", 246: "numeric",  # DECIMAL, NEWDECIMAL
    1: "integer", 2: "integer", 3: "integer", 8: "integer", 9: "integer", 13: "integer",  # TINY...LONGLONG, YEAR
    4: "float", 5: "float",
    6: None,  # the type of a bare NULL: told from values
    7: "timestamp", 12: "timestamp",  # TIMESTAMP (in the session's time zone, without it), DATETIME
    10: "date", 14: "date",
    15: "text", 245: "text", 247: "text", 248: "text",  # VARCHAR, JSON, ENUM, SET
    249: "text", 250: "text", 251: "text", 252: "text", 253: "text", 254: "text",  # TEXT/BLOB, VAR_STRING, STRING
}


def mysql_kind(type_code: int, length: int | None, binary: bool) -> str | None:
    """A kind from a MySQL/MariaDB result column: its field type, display length and BINARY flag.

    TINYINT(1) is boolean, as MySQL's BOOLEAN is declared (SQLAlchemy and Connector/J read it so too). A string
    type with the BINARY flag may hold bytes (VARBINARY, BLOB) or text (JSON on some servers): told from values.
    TIME, BIT and spatial types are passed on as the driver gives them."""
    kind = _MYSQL_KINDS.get(type_code, "other")
    if type_code == 1 and length == 1:
        return "boolean"
    if kind == "text" and binary and type_code != 245:
        return None
    return kind


def arrow_kind(arrow_type: Any) -> str | None:
    """A kind from an Arrow type (ADBC result sets, Parquet files)."""
    import pyarrow as pa
    import pyarrow.types as t

    if t.is_integer(arrow_type):
        return "integer"
    if t.is_floating(arrow_type):
        return "float"
    if t.is_decimal(arrow_type):
        return "numeric"
    if t.is_boolean(arrow_type):
        return "boolean"
    if t.is_string(arrow_type) or t.is_large_string(arrow_type) or t.is_string_view(arrow_type):
        return "text"
    if t.is_date(arrow_type):
        return "date"
    if t.is_timestamp(arrow_type):
        return "timestamptz" if arrow_type.tz else "timestamp"
    if isinstance(arrow_type, pa.BaseExtensionType) and getattr(arrow_type, "type_name", "") == "numeric":
        return "numeric"  # ADBC's PostgreSQL NUMERIC: an opaque extension holding the digits as text
    if t.is_null(arrow_type):
        return None
    return "other"


def value_kind(values: pd.Series) -> str | None:
    """A kind told from values, for a column whose source declares no type; None while all are NULL."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float" if values.notna().any() else None
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "timestamptz" if getattr(dtype, "tz", None) is not None else "timestamp"
    if pd.api.types.is_string_dtype(dtype) and not pd.api.types.is_object_dtype(dtype):
        return "text"
    present = values.dropna()
    if present.empty:
        return None
    first = present.iloc[0]
    for kind, types in _PYTHON_TYPES:
        if isinstance(first, types):
            if kind == "timestamp" and getattr(first, "tzinfo", None) is not None:
                return "timestamptz"
            return kind
    return "other"


_PYTHON_TYPES: list[tuple[str, type | tuple[type, ...]]] = [
    ("boolean", (bool, np.bool_)), ("integer", (int, np.integer)), ("float", (float, np.floating)),
    ("numeric", decimal.Decimal), ("text", str), ("timestamp", dt.datetime), ("date", dt.date),
]


class Contract:
    """The kinds of one source's columns for a whole run, and the conversion of each chunk to them.

    The first :meth:`declare` wins: the kinds a source declares are fixed before its first
    chunk. A column it leaves undeclared is decided from the first chunk with a non-NULL
    value in it, and kept from then on.
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        """``keys``: the columns stored as read (the domain's keys), whose values must survive their dtype."""
        self.kinds: dict[str, str | None] = {}
        self.declared = False
        self.keys = frozenset(keys)

    def declare(self, columns: Sequence[str], kinds: Iterable[str | None]) -> None:
        """Fix the kinds the source declares for ``columns`` (position by position); later calls do nothing."""
        if not self.declared:
            self.kinds = dict(zip(columns, kinds))
            self.declared = True

    def conform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` with every column in its kind's dtype and missing value."""
        self.declared = True
        out = {}
        for column in frame.columns:
            series = frame[column]
            kind = self.kinds.get(column)
            if kind is None:
                kind = self.kinds[column] = value_kind(series)
            if kind == "numeric" and column in self.keys:
                _refuse_inexact(series, str(column))
            out[column] = convert(series, kind, str(column))
        return pd.DataFrame(out, index=frame.index)

    def arrow(self, table: Any) -> pd.DataFrame:
        """An Arrow table or record batch as a conformed frame (its schema declares the kinds)."""
        import pyarrow as pa

        self.declare(table.schema.names, [arrow_kind(f.type) for f in table.schema])
        columns = {}
        for name, array in zip(table.schema.names, table.columns):
            if pa.types.is_nested(array.type):
                raise nested_values(name)
            try:
                columns[name] = _arrow_series(array, self.kinds.get(name))
            except (ValueError, OverflowError, pa.ArrowException) as exc:  # a time of 24:00, a date in 4713 BC
                raise SourceError(f"domain column {name!r} holds a value pandas cannot hold ({exc}): "
                                  "cast the column in the query") from None
        return self.conform(pd.DataFrame(columns))

    def records(self, rows: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> pd.DataFrame:
        """Rows of plain Python values (a DB-API cursor's) as a conformed frame, built column by column."""
        if not rows:
            return self.conform(pd.DataFrame({c: pd.Series([], dtype=object) for c in columns}))
        values = _columns(rows, len(columns))
        out = {}
        for i, column in enumerate(columns):
            kind = self.kinds.get(column)
            exact = kind == "numeric" and column in self.keys  # kept as read, for conform to check
            out[column] = _from_python(values[i], None if exact else kind)
        return self.conform(pd.DataFrame(out))


def nested_values(column: str) -> SourceError:
    """The refusal of a column of arrays or other nested values (composites, records): pandas would hold numpy
    arrays or dicts, which no hash or model takes."""
    return SourceError(f"domain column {column!r} holds arrays or other nested values, which a model does not "
                       "take: pick elements or unnest them in the query")


def _arrow_series(array: Any, kind: str | None) -> pd.Series:
    """One Arrow column in the dtype of ``kind``; a UUID as :class:`uuid.UUID`, as a DB-API driver gives it
    (pandas would give the UUID's 16 bytes)."""
    import pyarrow as pa

    if kind == "integer":
        return array.to_pandas(types_mapper={array.type: pd.Int64Dtype()}.get)
    if kind == "boolean":
        return array.to_pandas(types_mapper={array.type: pd.BooleanDtype()}.get)
    if kind == "numeric" and hasattr(array.type, "storage_type"):
        return pd.Series(array.cast(array.type.storage_type).to_pandas(), dtype=object)
    if isinstance(array.type, pa.UuidType):
        return pd.Series(array.to_pylist(), dtype=object)
    return array.to_pandas()


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> Sequence[Sequence[Any]]:
    """The rows' values column by column, through one 2-D object array: transposing with ``zip(*rows)`` made
    a tuple per column and cost 0.8 s per 1M SQLite rows in garbage collection (measured in ``make bench``).
    Values that are sequences themselves (arrays, from another database) take the slow way."""
    try:
        grid = np.array(rows, dtype=object)
    except ValueError:
        grid = None
    if grid is None or grid.shape != (len(rows), width):
        return list(zip(*rows))
    return [grid[:, i] for i in range(width)]


def _from_python(values: Sequence[Any], kind: str | None) -> pd.Series:
    """The fast paths from plain Python values (objects as they are for a kind not known yet);
    :func:`convert` finishes the job and checks."""
    try:
        if kind in ("float", "numeric"):
            return pd.Series(np.array(values, dtype=np.float64))
        if kind == "integer":
            return pd.Series(pd.array(values, dtype="Int64"))
        if kind == "text":
            return pd.Series(pd.array(values, dtype="str"))
    except (TypeError, ValueError, OverflowError):
        pass  # a value of another type (SQLite stores what it is given) or range: convert says which
    return pd.Series(values, dtype=object)


def convert(series: pd.Series, kind: str | None, column: str) -> pd.Series:
    """``series`` in the dtype of ``kind`` (see the module's table); a value that does not fit its column's
    declared type is a :class:`SourceError` naming the column."""
    try:
        return _convert(series, kind)
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation):
        bad = next((v for v in series.dropna() if not _fits(v, kind)), None)
        raise SourceError(f"domain column {column!r} is {kind} but holds {bad!r}; "
                          "fix the value or cast the column in the query") from None


def _refuse_inexact(series: pd.Series, column: str) -> None:
    """Refuse a numeric key a float64 does not hold exactly (2**53 + 1 would be stored as 2**53, another key):
    a feature is handed over as ``read_sql`` gives it, but a key is written back as read."""
    if series.dtype != object:
        return  # floats already: what the source holds
    for value in series:
        if value is None or isinstance(value, float):
            continue
        try:
            exact = decimal.Decimal(str(value))
            held = float(exact)
        except (decimal.InvalidOperation, ValueError):
            return  # not a number: convert says so
        if exact.is_finite() and decimal.Decimal(repr(held)) != exact:
            raise SourceError(f"key column {column!r} is numeric and holds {value}, which float64 cannot hold "
                              f"exactly (it would be stored as {held!r}): cast it in the query to an integer or "
                              "text type")


def _fits(value: Any, kind: str | None) -> bool:
    try:
        _convert(pd.Series([value], dtype=object), kind)
    except (TypeError, ValueError, OverflowError, decimal.InvalidOperation):
        return False
    return True


def _convert(series: pd.Series, kind: str | None) -> pd.Series:
    if kind is None:
        return series if series.dtype == np.float64 else pd.Series(np.nan, index=series.index, dtype=np.float64)
    if kind == "other":
        return series.astype(object).where(series.notna(), None) if series.dtype != object else series
    if kind != "date" and series.dtype == DTYPES[kind]:
        return series
    if kind == "integer":
        return _to_int(series)
    if kind in ("float", "numeric"):
        if series.dtype != object:
            return series.astype(np.float64)
        return pd.Series(np.array([np.nan if v is None else float(v) for v in series], dtype=np.float64),
                         index=series.index)
    if kind == "boolean":
        return series.astype("boolean")
    if kind == "text":
        return series.astype("str")
    if kind == "date":
        return _to_date(series)
    return _to_timestamp(series, kind)


def _to_int(series: pd.Series) -> pd.Series:
    if series.dtype == bool or series.dtype == "boolean":
        return series.astype("Int64")
    if series.dtype == object:
        values = [v for v in series if v is not None and not (isinstance(v, float) and np.isnan(v))]
        if any(isinstance(v, (str, bytes)) for v in values):
            raise ValueError("text in an integer column")
        return pd.Series(pd.array(series.where(series.notna(), None).tolist(), dtype="Int64"), index=series.index)
    return series.astype("Int64")


def _to_date(series: pd.Series) -> pd.Series:
    """``datetime.date`` objects, ``None`` where missing; ISO text (SQLite's way of storing dates) is parsed, and
    one with a time of day other than midnight (which SQLite lets a DATE column hold) refused, not cut off."""
    if series.dtype == object and all(v is None or type(v) is dt.date for v in series):
        return series
    parsed = pd.to_datetime(series, format="ISO8601") if not pd.api.types.is_datetime64_any_dtype(series.dtype) \
        else series
    if (parsed.dropna() != parsed.dropna().dt.normalize()).any():
        raise ValueError("a time of day in a date column")
    return pd.Series([None if pd.isna(v) else v.date() for v in parsed], index=series.index, dtype=object)


def _to_timestamp(series: pd.Series, kind: str) -> pd.Series:
    parsed = pd.to_datetime(series, format="ISO8601", utc=kind == "timestamptz") \
        if not pd.api.types.is_datetime64_any_dtype(series.dtype) else series
    if kind == "timestamptz" and getattr(parsed.dtype, "tz", None) is None:
        parsed = parsed.dt.tz_localize("UTC")
    return parsed.astype(DTYPES[kind])


def type_changes(before: Sequence[Sequence[Any]], after: Sequence[Sequence[Any]]) -> list[str]:
    """The features whose dtype differs between two recorded input schemas (``[[feature, dtype, ...], ...]``),
    as ``"feature: before -> after"``; features only one of them has are the model's business, not a change."""
    old = {row[0]: row[1] for row in before}
    return [f"{name}: {old[name]} -> {dtype}" for name, dtype, *_ in after if name in old and old[name] != dtype]
