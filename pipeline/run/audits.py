"""The checks a version must pass before it may be published (write, audit, publish).

Built in: the row count equals the domain size, keys are present and unique, numeric
outputs are finite (no NULL, NaN or infinity), optional bounds per output column, and
drift against the active version. Users add SQL audits: queries that must return no rows.
Every audit reads the version table in the database; nothing is pulled into memory.
:func:`audit_version` runs them on a version and stores the results (a run, or `pipeline audit` later).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Callable, Sequence

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.database import schema, state
from pipeline.database.dialects import Dialect, dialect_for
from pipeline.database.dialects.base import bind_run_date
from pipeline.database.transactions import reading, transaction
from pipeline.errors import AuditError, first_line
from pipeline.jobspec import AuditSpec, DriftSpec, OutputSpec
from pipeline.names import RANK, outputs_of, version_table

PSI_BINS = 10
_FLOAT_MAX = "1.7976931348623157e308"  # anything beyond is infinite; NaN sorts above it on PostgreSQL


@dataclass(frozen=True)
class AuditResult:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Subject:
    """The version under audit and what it is compared with."""

    table: str                              # the physical version table
    keys: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...]    # (column, portable type) of the model outputs
    expected_rows: int | None               # the domain size the run listed
    baseline: str | None = None             # the active version's table, for drift
    logical_date: date | None = None
    top_k: tuple[tuple[str, ...], int] | None = None  # (group_by, K) of a top-k version


def failures(results: Sequence[AuditResult]) -> str:
    """One line naming every failed audit and why."""
    return "; ".join(f"{r.name}: {r.detail}" for r in results if not r.passed)


def planned_audits(spec: AuditSpec, top_k: bool = False) -> list[str]:
    """The names of the audits :func:`run_audits` will report for ``spec``, in its order."""
    return (["row_count", "keys_not_null", "outputs_finite"] + [f"bounds:{c}" for c, _, _ in spec.bounds]
            + (["top_k"] if top_k else []) + ["keys_unique"] + [f"drift:{d.column}" for d in spec.drift] + [f"sql:{a.name}" for a in spec.sql])


def run_audits(conn: Connection, dialect: Dialect, subject: Subject, spec: AuditSpec,
               check_unique: bool = True) -> list[AuditResult]:
    """Run every audit on ``subject``. A failing custom query is a failed audit, not a crash."""
    results = _scan(conn, dialect, subject, spec)
    if subject.top_k is not None:
        results.append(_top_k(conn, dialect, subject))
    if check_unique:
        results.append(_unique(conn, dialect, subject))
    else:
        results.append(AuditResult("keys_unique", True, "enforced by the table's unique key"))
    for drift in spec.drift:
        results.append(_drift(conn, dialect, subject, drift))
    for audit in spec.sql:
        results.append(_sql(conn, dialect, subject, audit.name, audit.query))
    return results


def _scan(conn: Connection, dialect: Dialect, subject: Subject, spec: AuditSpec) -> list[AuditResult]:
    """Row count, NULL keys, non-finite outputs and bounds, all in one pass over the table."""
    q = dialect.quote
    outputs = dict(subject.outputs)
    for column, _, _ in spec.bounds:
        if column not in outputs:
            return [AuditResult(f"bounds:{column}", False,
                                f"no output column {column!r} (outputs: {', '.join(outputs)})")]
    any_null_key = " OR ".join(f"{q(k)} IS NULL" for k in subject.keys)
    terms = ["COUNT(*)", f"SUM(CASE WHEN {any_null_key} THEN 1 ELSE 0 END)"]
    for column, kind in subject.outputs:
        bad = f"{q(column)} IS NULL"
        if kind in ("float", "integer", "numeric"):
            bad += f" OR {q(column)} > {_FLOAT_MAX} OR {q(column)} < -{_FLOAT_MAX}"
        terms.append(f"SUM(CASE WHEN {bad} THEN 1 ELSE 0 END)")
    for column, _, _ in spec.bounds:
        terms += [f"MIN({q(column)})", f"MAX({q(column)})"]
    row = conn.execute(text(f"SELECT {', '.join(terms)} FROM {q(subject.table)}")).one()
    rows, null_keys, rest = row[0], row[1] or 0, list(row[2:])
    results = []
    if subject.expected_rows is None:
        results.append(AuditResult("row_count", True, f"{rows} rows"))
    else:
        results.append(AuditResult("row_count", rows == subject.expected_rows,
                                   f"{rows} rows, the domain listed {subject.expected_rows}"))
    results.append(AuditResult("keys_not_null", null_keys == 0,
                               "no NULL key" if not null_keys else f"{null_keys} row(s) with a NULL key"))
    bad = {c: n or 0 for (c, _), n in zip(subject.outputs, rest)}
    rest = rest[len(subject.outputs):]
    offenders = [f"{c}: {n} row(s)" for c, n in bad.items() if n]
    results.append(AuditResult("outputs_finite", not offenders,
                               "every output is a finite value" if not offenders else
                               "NULL, NaN or infinite predictions in " + ", ".join(offenders)))
    for (column, low, high), (found_low, found_high) in zip(spec.bounds, zip(rest[::2], rest[1::2])):
        problems = []
        if low is not None and found_low is not None and found_low < low:
            problems.append(f"min {found_low:g} < {low:g}")
        if high is not None and found_high is not None and found_high > high:
            problems.append(f"max {found_high:g} > {high:g}")
        span = f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
        results.append(AuditResult(f"bounds:{column}", not problems,
                                   f"values within {span}" if not problems else f"outside {span}: "
                                   + ", ".join(problems)))
    return results


def _top_k(conn: Connection, dialect: Dialect, subject: Subject) -> AuditResult:
    """Every group holds at most K rows, ranked 1..n with no gap or tie (fewer than K only for small groups,
    which the row count against the run's expected rows checks)."""
    assert subject.top_k is not None
    group_by, k = subject.top_k
    q = dialect.quote
    groups = dialect.column_list(group_by)
    bad = conn.execute(text(
        f"SELECT COUNT(*) FROM (SELECT COUNT(*) AS n, MIN({q(RANK)}) AS lo, MAX({q(RANK)}) AS hi, "
        f"COUNT(DISTINCT {q(RANK)}) AS ranks FROM {q(subject.table)} GROUP BY {groups}) g "
        f"WHERE n > {int(k)} OR lo <> 1 OR hi <> n OR ranks <> n")).scalar_one()
    return AuditResult("top_k", bad == 0, f"every group holds its best rows ranked 1..n (n <= {k})" if not bad
                       else f"{bad} group(s) with more than {k} rows or ranks other than 1..n")


def duplicate_keys(conn: Connection, dialect: Dialect, table: str, keys: Sequence[str],
                   limit: int = 3) -> list[tuple[object, ...]]:
    """Up to ``limit`` keys that appear more than once in ``table``."""
    cols = dialect.column_list(keys)
    rows = conn.execute(text(
        f"SELECT {cols} FROM {dialect.quote(table)} GROUP BY {cols} HAVING COUNT(*) > 1 LIMIT {limit}"))
    return [tuple(r) for r in rows]


def describe_keys(keys: Sequence[str], rows: Sequence[tuple[object, ...]]) -> str:
    return "; ".join(", ".join(f"{k}={v!r}" for k, v in zip(keys, row)) for row in rows)


def _unique(conn: Connection, dialect: Dialect, subject: Subject) -> AuditResult:
    found = duplicate_keys(conn, dialect, subject.table, subject.keys)
    return AuditResult("keys_unique", not found,
                       "every key once" if not found else f"keys listed more than once, e.g. "
                       f"{describe_keys(subject.keys, found)}")


def _drift(conn: Connection, dialect: Dialect, subject: Subject, spec: DriftSpec) -> AuditResult:
    name = f"drift:{spec.column}"
    kinds = dict(subject.outputs)
    if kinds.get(spec.column) not in ("float", "integer", "numeric"):
        return AuditResult(name, False, f"{spec.column!r} is not a numeric output column")
    if subject.baseline is None:
        return AuditResult(name, True, "no other version is active to compare with")
    q, c = dialect.quote, dialect.quote(spec.column)
    details, passed = [], True
    if spec.max_psi is not None:
        psi = population_stability(conn, dialect, subject.baseline, subject.table, spec.column)
        passed &= psi <= spec.max_psi
        details.append(f"PSI {psi:.4f} (max {spec.max_psi:g})")
    if spec.max_moved_share is not None:
        on = " AND ".join(f"n.{q(k)} = o.{q(k)}" for k in subject.keys)
        shared, moved = conn.execute(text(
            f"SELECT COUNT(*), SUM(CASE WHEN ABS(n.{c} - o.{c}) > {float(spec.moved_by)!r} THEN 1 ELSE 0 END) "
            f"FROM {q(subject.table)} n JOIN {q(subject.baseline)} o ON {on}")).one()
        share = (moved or 0) / shared if shared else 0.0
        passed &= share <= spec.max_moved_share
        details.append(f"{share:.2%} of {shared} shared keys moved by more than {spec.moved_by:g} "
                       f"(max {spec.max_moved_share:.2%})")
    return AuditResult(name, passed, "; ".join(details))


def histogram(conn: Connection, dialect: Dialect, tables: Sequence[str], column: str,
              bins: int) -> tuple[list[float], list[list[int]]]:
    """Counts of ``column`` per table in ``bins`` equal-width bins spanning all ``tables``, counted in SQL.

    Returns the bin edges and one row of counts per table; no edges when the column holds only NULLs.
    """
    q, c = dialect.quote, dialect.quote(column)
    bounds = [conn.execute(text(f"SELECT MIN({c}), MAX({c}) FROM {q(t)}")).one() for t in tables]
    lows = [float(low) for low, _ in bounds if low is not None]
    highs = [float(high) for _, high in bounds if high is not None]
    if not lows:
        return [], []
    low, high = min(lows), max(highs)
    width = (high - low) / bins or 1.0
    bucket = f"CASE WHEN {c} >= {high!r} THEN {bins - 1} ELSE {dialect.floor_sql(f'({c} - {low!r}) / {width!r}')} END"
    counts = []
    for table in tables:
        row = [0] * bins
        for b, n in conn.execute(text(f"SELECT {bucket}, COUNT(*) FROM {q(table)} WHERE {c} IS NOT NULL GROUP BY 1")):
            row[min(max(int(b), 0), bins - 1)] += n
        counts.append(row)
    return [low + i * width for i in range(bins + 1)], counts


def population_stability(conn: Connection, dialect: Dialect, old: str, new: str, column: str) -> float:
    """PSI of ``column`` between two tables, over equal-width bins spanning both (0 when either is all NULL)."""
    _, counts = histogram(conn, dialect, [old, new], column, PSI_BINS)
    return psi(*counts) if counts else 0.0


def psi(before: Sequence[float], after: Sequence[float]) -> float:
    """The population stability index between two binnings of one variable (counts or shares per bin; an empty
    bin counts as 0.01%); 0 when either side is empty. Output drift and the input gates both use it."""
    if not sum(before) or not sum(after):
        return 0.0
    old, new = ([max(n / sum(row), 1e-4) for n in row] for row in (before, after))
    return sum((n - o) * math.log(n / o) for o, n in zip(old, new))


def _sql(conn: Connection, dialect: Dialect, subject: Subject, name: str, query: str) -> AuditResult:
    statement, params = bind_run_date(query.replace("{table}", dialect.quote(subject.table)), subject.logical_date)
    try:
        with conn.begin_nested():
            found = conn.execute(statement, params).fetchmany(3)
    except SQLAlchemyError as exc:
        return AuditResult(f"sql:{name}", False, f"query failed: {first_line(exc)}")
    if not found:
        return AuditResult(f"sql:{name}", True, "no rows")
    return AuditResult(f"sql:{name}", False, f"returned rows, e.g. {tuple(found[0])}")


def audit_version(engine: Engine, table: str, version: int, spec: AuditSpec = AuditSpec(), *,
                  expected_rows: int | None = None, columns: list[tuple[str, str]] | None = None,
                  keys: tuple[str, ...] | None = None, logical_date: date | None = None,
                  check_unique: bool = True, clock: Callable[[], datetime] = state.utcnow,
                  output: OutputSpec | None = None) -> list[AuditResult]:
    """Run ``spec``'s audits (and the built-in ones) on a version, store the results and return them.

    Drift compares with the active version, unless ``version`` is the active one. With
    ``output.top_k``, each group must hold its K best rows ranked 1..n; the row count of a
    top-k version is known only to the run that made it (``expected_rows``).
    """
    dialect = dialect_for(engine)
    with reading(engine) as conn:
        found = state.get_version(conn, table, version) if schema.has_schema(conn) else None
        if found is None:
            raise AuditError(f"{table} has no version {version}")
        if found.status == "retired" or not conn.dialect.has_table(conn, version_table(table, version)):
            raise AuditError(f"{table} version {version} has no table any more ({found.status})")
        columns = columns or list(found.columns)
        keys = keys or found.keys
        pointer = state.get_pointer(conn, table)
        baseline = None
        if pointer is not None and pointer.version != version:
            baseline = version_table(table, pointer.version)
        top_k = (output.group_by, output.top_k) if output is not None and output.top_k else None
        if expected_rows is None and top_k is None and RANK not in dict(columns):
            expected_rows = found.domain_size
        outputs = tuple(outputs_of(columns, (*keys, *found.passthrough)))
        subject = Subject(version_table(table, version), tuple(keys), outputs, expected_rows, baseline,
                          logical_date or found.logical_date, top_k)
        results = run_audits(conn, dialect, subject, spec, check_unique=check_unique)
    with transaction(engine) as conn:
        state.save_audits(conn, table, version, results, clock())
    return results
