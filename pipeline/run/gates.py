"""Upstream gates: what must hold before a run scores anything (``[gates]`` in the job file).

The commonest way a scheduled job publishes a table that looks valid but is wrong is partial or stale input.
So before scoring, a run (1) polls each ``wait_for`` query until it returns a true value, with backoff, up to
``wait_timeout``; (2) reads its domain once and compares it with the active version's: its size
(``max_rows_change``) and, per feature, the share of NULLs (``max_null_change``) and the PSI of numeric
features (``max_psi``) against the inputs the active version recorded. Every result is kept with the run; a
failed gate fails the run before a version exists, so nothing changes for readers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine
from tenacity import Retrying, retry_if_result, stop_after_delay, wait_exponential

from pipeline.database import state
from pipeline.database.dialects.base import bind_run_date
from pipeline.database.engines import make_engine
from pipeline.database.transactions import reading
from pipeline.errors import DatabaseError, GateError
from pipeline.jobspec import GateSpec, Job, WaitFor
from pipeline.run.audits import psi
from pipeline.run.domain import Domain

log = logging.getLogger("pipeline")

#: Numeric values kept per feature to find its deciles: bounded memory whatever the domain's size.
SAMPLE = 10_000
DECILES = [i / 10 for i in range(1, 10)]


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    detail: str


def duration(seconds: float) -> str:
    """``7200`` -> ``2h``, ``90`` -> ``1m30s``: how an operator writes a wait."""
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{v}{unit}" for v, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if v) or "0s"


def wait_for(gate: WaitFor, engine: Engine, logical_date: date, spec: GateSpec,
             sleep: Callable[[float], None] = time.sleep) -> GateResult:
    """Poll ``gate``'s query until its first value is true, waiting 1 s, 2 s, 4 s... (at most ``poll_interval``)
    between tries, up to ``wait_timeout``. A query that fails is not retried: it is a mistake, not a wait.

    Raises:
        GateError: the query failed.
    """
    statement, params = bind_run_date(gate.query, logical_date)
    started = time.monotonic()

    def probe() -> bool:
        try:
            with reading(engine) as conn:
                return bool(conn.execute(statement, params).scalar())
        except DatabaseError as exc:
            raise GateError(f"gate {gate.name!r}: query failed: {exc}") from None

    def waiting(retry_state: Any) -> None:
        log.info("gate %r is still false; asking again in %s", gate.name,
                 duration(retry_state.next_action.sleep if retry_state.next_action else 0))

    poll = Retrying(retry=retry_if_result(lambda ok: not ok), stop=stop_after_delay(spec.wait_timeout),
                    wait=wait_exponential(multiplier=1, max=spec.poll_interval), sleep=sleep,
                    before_sleep=waiting, retry_error_callback=lambda retry_state: False)
    if poll(probe):
        return GateResult(f"wait_for:{gate.name}", True, f"true after {duration(time.monotonic() - started)}")
    return GateResult(f"wait_for:{gate.name}", False,
                      f"gate {gate.name!r} still false after {duration(spec.wait_timeout)}")


class Profile:
    """What the model is handed, per feature: rows, NULLs and a deterministic sample of the numeric values
    (priority sampling: the values with the smallest of a seeded random key), read chunk by chunk."""

    def __init__(self, features: Sequence[str]) -> None:
        self.features = list(features)
        self.rows = 0
        self.nulls = dict.fromkeys(self.features, 0)
        self._samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._random = np.random.default_rng(0)

    def update(self, frame: pd.DataFrame) -> None:
        if not self.rows:  # the first chunk shows which features the domain holds (the run checks the rest)
            self.features = [f for f in self.features if f in frame.columns]
            self.nulls = dict.fromkeys(self.features, 0)
        self.rows += len(frame)
        priority = self._random.random(len(frame))
        for feature in self.features:
            column = frame[feature]
            missing = column.isna().to_numpy()
            self.nulls[feature] += int(missing.sum())
            if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
                continue
            values = column.to_numpy(dtype="float64", na_value=np.nan)[~missing]
            keys, kept = self._samples.get(feature, (np.empty(0), np.empty(0)))
            keys, kept = np.concatenate([keys, priority[~missing]]), np.concatenate([kept, values])
            if len(keys) > SAMPLE:
                best = np.argpartition(keys, SAMPLE)[:SAMPLE]
                keys, kept = keys[best], kept[best]
            self._samples[feature] = (keys, kept)

    def null_share(self, feature: str) -> float:
        return self.nulls[feature] / self.rows if self.rows else 0.0

    def shares(self, feature: str, edges: Sequence[float]) -> list[float]:
        """The share of the sampled values in each bin the ``edges`` make (below the first, ..., above the last)."""
        sample = self._samples.get(feature, (None, np.empty(0)))[1]
        if not len(sample):
            return []
        bins = np.bincount(np.searchsorted(np.asarray(edges, dtype="float64"), sample, side="right"),
                           minlength=len(edges) + 1)
        return (bins / len(sample)).tolist()

    def summary(self) -> dict[str, Any]:
        """What a version records, for the next run to compare with: NULL shares, and the deciles of numeric
        features with the share of values in each bin they make."""
        features: dict[str, Any] = {}
        for feature in self.features:
            entry: dict[str, Any] = {"nulls": self.null_share(feature)}
            sample = self._samples.get(feature, (None, np.empty(0)))[1]
            if len(sample):
                edges = np.unique(np.quantile(sample, DECILES)).tolist()
                entry.update(edges=edges, shares=self.shares(feature, edges))
            features[feature] = entry
        return {"rows": self.rows, "features": features}


def compare(spec: GateSpec, profile: Profile, active: state.Version | None) -> list[GateResult]:
    """The size and input gates: this run's domain against the active version's."""
    if active is None:
        return [GateResult(name, True, "no active version to compare with") for name in _compared(spec)]
    results = []
    if spec.max_rows_change is not None:
        results.append(_rows(spec.max_rows_change, profile.rows, active))
    if spec.profiles:
        recorded = (active.input_profile or {}).get("features")
        if recorded is None:
            return [*results, GateResult("inputs", True, f"version {active.version} recorded no inputs to compare "
                                                         "with (a version records them when its job has input gates)")]
        for feature in profile.features:
            baseline = recorded.get(feature)
            if baseline is None:
                results.append(GateResult(f"inputs:{feature}", True, f"new feature: version {active.version} had none"))
                continue
            results.extend(_feature(spec, profile, feature, baseline, active.version))
    return results


def _compared(spec: GateSpec) -> list[str]:
    return (["rows"] if spec.max_rows_change is not None else []) + (["inputs"] if spec.profiles else [])


def _rows(limit: float, rows: int, active: state.Version) -> GateResult:
    before = active.domain_size
    if not before:
        return GateResult("rows", True, f"version {active.version} recorded no domain size")
    change = (rows - before) / before
    return GateResult("rows", abs(change) <= limit,
                      f"the domain has {rows:,} rows against {before:,} for version {active.version} "
                      f"({change:+.1%}, max {limit:.0%})")


def _feature(spec: GateSpec, profile: Profile, feature: str, baseline: dict[str, Any],
             version: int) -> list[GateResult]:
    results = []
    if spec.max_null_change is not None:
        now, before = profile.null_share(feature), baseline["nulls"]
        results.append(GateResult(f"nulls:{feature}", abs(now - before) <= spec.max_null_change,
                                  f"{feature} is {now:.1%} NULL against {before:.1%} for version {version} "
                                  f"(max change {spec.max_null_change:.1%})"))
    if spec.max_psi is not None and baseline.get("edges") is not None:
        value = psi(baseline["shares"], profile.shares(feature, baseline["edges"]))
        results.append(GateResult(f"psi:{feature}", value <= spec.max_psi,
                                  f"{feature} has PSI {value:.4f} against version {version}'s inputs "
                                  f"(max {spec.max_psi:g})"))
    return results


def check(job: Job, engine: Engine, logical_date: date, features: Sequence[str],
          sleep: Callable[[float], None] = time.sleep) -> tuple[list[GateResult], dict[str, Any] | None]:
    """Every gate of ``job`` for ``logical_date``, in order, stopping at the first wait that stays false; and
    the profile of the domain's ``features`` when the job compares inputs (for the version to record).

    Raises:
        GateError: a gate's query failed.
        SourceError: the domain could not be read.
    """
    spec = job.gates
    results = []
    for gate in spec.wait_for:
        source = make_engine(gate.source) if gate.source else engine
        try:
            results.append(wait_for(gate, source, logical_date, spec, sleep))
        finally:
            if source is not engine:
                source.dispose()
        if not results[-1].passed:
            return results, None
    if not _compared(spec):
        return results, None
    domain = Domain(job.domain, engine, logical_date)
    profile = Profile(features)
    try:
        for chunk in domain.chunks():
            profile.update(chunk)
    finally:
        domain.close()
    with reading(engine) as conn:
        active = state.active_version(conn, job.output.table)
    results += compare(spec, profile, active)
    return results, profile.summary() if spec.profiles else None


def failed(results: Sequence[GateResult]) -> str:
    """The failed gates, for the run's error."""
    return "; ".join(r.detail if r.name.startswith("wait_for:") else f"gate {r.name!r}: {r.detail}"
                     for r in results if not r.passed)
