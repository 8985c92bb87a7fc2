"""Turn a chunk of the domain into the rows a version table receives.

A row is its keys, any domain columns the job passes through (``[output] include``), the
model's outputs, the key's A/B bucket and a hash of its inputs;
with ``[output] top_k`` only each group's best rows are kept, ranked. Every executor (this
process, or a Dask worker) builds its rows here, so the version tables they write are
the same row for row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from pipeline.contract import type_changes
from pipeline.errors import AuditError, ModelError, SourceError
from pipeline.jobspec import Job, OutputSpec
from pipeline.names import BUCKET, INPUT_HASH, RANK, SYSTEM_COLUMNS
from pipeline.run.model import Model
from pipeline.run.stages import closing

#: siphash key for text keys: fixed, so a key's bucket never changes between runs or machines.
_BUCKET_KEY = "pipeline-ab-keys"
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def check_inputs(model: Model, keys: Sequence[str], columns: list[str], include: Sequence[str] = ()) -> None:
    """The domain's first chunk holds the model's features and the columns passed through, and no key or
    passed-through column is named like an output."""
    model.check_features(columns)
    missing = [c for c in include if c not in columns]
    if missing:
        raise SourceError(f"[output] include names column(s) the domain does not have: {', '.join(missing)} "
                          f"(domain columns: {', '.join(columns)})")
    clash = sorted((set(keys) | set(include)) & set(model.outputs))
    if clash:
        raise ModelError(f"domain column(s) {', '.join(clash)} have the name of a model output; rename them")
    reserved = sorted((set(keys) | set(include) | set(model.outputs)) & {*SYSTEM_COLUMNS, RANK})
    if reserved:
        raise ModelError(f"column(s) {', '.join(reserved)} are the pipeline's own; rename them")


def check_output(job: Job, model: Model) -> None:
    """``[output] default`` and ``rank_by``, and the bounds and drift audits, may only name columns the model
    outputs (or ``rank`` with top_k): checked before anything is scored."""
    named = [c for c, _ in job.output.default] + ([job.output.rank_by] if job.output.rank_by else [])
    unknown = [c for c in named if c not in model.outputs]
    if unknown:
        raise ModelError(f"[output] names column(s) the model does not output: {', '.join(unknown)} "
                         f"(outputs: {', '.join(model.outputs)})")
    audited = [("bounds", c) for c, _, _ in job.audits.bounds] + [("drift", d.column) for d in job.audits.drift]
    known = set(model.outputs) | ({RANK} if job.output.top_k else set())
    unknown = [f"{kind} {column}" for kind, column in audited if column not in known]
    if unknown:
        raise AuditError(f"[audits] names column(s) the model does not output: {', '.join(unknown)} "
                         f"(outputs: {', '.join(model.outputs)})")


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a stable, well-spread 64-bit hash of 64-bit integers."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK


def key_buckets(keys: pd.DataFrame) -> np.ndarray:
    """Each row's A/B bucket, 0..99: a hash of its key values, the same on every database and run.

    Integer keys are hashed as integers (splitmix64), others as text (siphash with a fixed key). A NULL key (a
    nullable integer column's NA) hashes as 0: the key check refuses its row in one line afterwards.
    """
    total = np.zeros(len(keys), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for _, column in keys.items():
            if pd.api.types.is_integer_dtype(column.dtype):
                part = _mix(column.to_numpy(dtype=np.int64, na_value=0).view(np.uint64))
            else:
                text = column.astype(str).to_numpy(dtype=object)
                part = pd.util.hash_array(text, hash_key=_BUCKET_KEY, categorize=False)
            total = _mix(total * np.uint64(31) + part)
    return (total % np.uint64(100)).astype(np.int64)


def input_hashes(frame: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's values (as a signed integer, which every database stores)."""
    return pd.util.hash_pandas_object(frame, index=False).to_numpy().view(np.int64)


def hashed(model: Model, include: Sequence[str] = ()) -> list[str]:
    """The columns a row's ``input_hash`` covers: the features, and what it passes through, so a top-up
    copies a row only when everything it stores is unchanged."""
    return [*model.features, *(c for c in include if c not in model.features)]


def score_chunk(model: Model, keys: Sequence[str], chunk: pd.DataFrame, include: Sequence[str] = ()) -> pd.DataFrame:
    """The rows a version table receives for ``chunk``: keys, passed-through columns, outputs, bucket and input
    hash."""
    scores = model.score(chunk)
    rows = pd.concat([chunk[[*keys, *include]].reset_index(drop=True), scores.reset_index(drop=True)], axis=1)
    rows[BUCKET] = key_buckets(rows[list(keys)])
    rows[INPUT_HASH] = input_hashes(chunk[hashed(model, include)])
    return rows


class TopK:
    """Each group's ``top_k`` best rows of a stream of scored chunks.

    The best rows seen so far are kept per chunk and merged again whenever they outgrow
    twice what the last merge left, so the work stays linear in the rows streamed, and
    memory follows the groups times K. When the stream is ``grouped`` (each group's rows
    arrive together, as a product's do when ``group_by`` is its first factor's key), every
    group but the last one seen is complete: :meth:`finished` hands those out at once, so
    memory follows the chunk size and K instead. Ties in ``rank_by`` go to the smaller key.
    """

    def __init__(self, output: OutputSpec, keys: Sequence[str], grouped: bool = False) -> None:
        assert output.top_k is not None and output.rank_by is not None
        self.k = output.top_k
        self.group_by = list(output.group_by)
        self.order = [*self.group_by, output.rank_by, *[k for k in keys if k not in output.group_by]]
        self.ascending = [True] * len(self.group_by) + [output.ascending] + [True] * (len(self.order) - 1 -
                                                                                        len(self.group_by))
        self.parts: list[pd.DataFrame] = []
        self.counts: list[pd.Series] = []
        self.held = 0
        self.merged = 0
        self.grouped = grouped
        #: Rows of the groups :meth:`finished` handed out, which the table must hold.
        self.handed_out = 0
        self.last: tuple[Any, ...] = ()

    def add(self, frame: pd.DataFrame) -> None:
        if len(frame):
            self.last = tuple(frame[self.group_by].iloc[-1])
        self.counts.append(frame.groupby(self.group_by, sort=False).size())
        self.parts.append(self._best(frame))
        self.held += len(self.parts[-1])
        if self.held > max(2 * self.merged, 100_000):
            self._merge()

    def finished(self) -> Iterator[pd.DataFrame]:
        """The ranked rows of the groups that are complete: in a grouped stream, all but the last one added."""
        if not self.grouped or not self.parts:
            return
        self._merge()
        best, counts = self.parts[0], self.counts[0]
        open_rows = (best[self.group_by] == pd.Series(self.last, index=self.group_by)).all(axis=1).to_numpy()
        if open_rows.all():
            return
        done = best[~open_rows]
        open_groups = counts.index.isin([self.last if len(self.group_by) > 1 else self.last[0]])
        self.handed_out += int(counts[~open_groups].clip(upper=self.k).sum())
        self.parts, self.counts = [best[open_rows]], [counts[open_groups]]
        self.held = self.merged = len(self.parts[0])
        yield self._ranked(done)

    def _best(self, frame: pd.DataFrame) -> pd.DataFrame:
        ordered = frame.sort_values(self.order, ascending=self.ascending, kind="stable")
        return ordered.groupby(self.group_by, sort=False).head(self.k)

    def _merge(self) -> None:
        if len(self.parts) > 1:
            self.parts = [self._best(pd.concat(self.parts, ignore_index=True))]
            self.counts = [pd.concat(self.counts).groupby(level=list(range(len(self.group_by)))).sum()]
        self.held = self.merged = len(self.parts[0]) if self.parts else 0

    def take(self) -> pd.DataFrame | None:
        """The best rows held, unranked, and nothing held any more: for a caller that ranks them elsewhere."""
        self._merge()
        best = self.parts[0] if self.parts else None
        self.parts, self.counts = [], []
        self.held = self.merged = 0
        return best

    @property
    def expected_rows(self) -> int:
        """What the table must hold: for each group, K rows or all its candidates if fewer."""
        self._merge()
        return self.handed_out + (int(self.counts[0].clip(upper=self.k).sum()) if self.counts else 0)

    def frames(self, size: int) -> Iterator[pd.DataFrame]:
        """The kept rows with their ``rank`` (1 = best), in chunks of ``size`` rows."""
        self._merge()
        if not self.parts:
            return
        best = self._ranked(self.parts[0])
        for start in range(0, len(best), size):
            yield best.iloc[start:start + size].reset_index(drop=True)

    def _ranked(self, best: pd.DataFrame) -> pd.DataFrame:
        best = best.reset_index(drop=True)
        best[RANK] = best.groupby(self.group_by, sort=False).cumcount() + 1
        return best


def first_rows(scorer: Scorer, job: Job, chunk: pd.DataFrame) -> pd.DataFrame:
    """The rows the version table receives for a first ``chunk`` (ranked with top_k), to tell its columns
    before a run writes anything."""
    rows = scorer(chunk)
    if job.output.top_k:
        top = TopK(job.output, job.domain.keys)
        top.add(rows)
        rows = next(top.frames(len(rows)))
    return rows


@dataclass
class TypeGuard:
    """The input types of the active version, which a run must keep unless its job allows them to change."""

    expected: list[list[Any]] | None = None
    version: int | None = None
    allow: bool = False
    #: The changes found (and allowed), as ``"feature: before -> after"``.
    changes: list[str] = field(default_factory=list)

    def check(self, schema: list[list[Any]]) -> None:
        """Raises:
            SourceError: a feature's type differs from the active version's and the job does not allow it.
        """
        if self.expected is None:
            return
        self.changes = type_changes(self.expected, schema)
        if self.changes and not self.allow:
            raise SourceError(f"the domain's types differ from active version {self.version}'s: "
                              f"{'; '.join(self.changes)} (cast them back in the domain query, or set "
                              "[domain] allow_type_changes = true to publish with the new types)")


class Scorer:
    """:func:`score_chunk` for a stream of chunks, checking the inputs (and their types) on the first one."""

    def __init__(self, model: Model, keys: Sequence[str], guard: TypeGuard | None = None,
                 include: Sequence[str] = ()) -> None:
        self.model = model
        self.keys = list(keys)
        self.guard = guard
        self.include = list(include)
        #: The first chunk's input schema (see :meth:`Model.input_schema`), once it was seen.
        self.schema: list[list[Any]] | None = None

    def check(self, chunk: pd.DataFrame) -> None:
        """On the first chunk only: the features are there and their types are the active version's."""
        if self.schema is None:
            check_inputs(self.model, self.keys, list(map(str, chunk.columns)), self.include)
            schema = self.model.input_schema(chunk)
            if self.guard is not None:
                self.guard.check(schema)
            self.schema = schema

    def checking(self, chunks: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """``chunks``, the first one checked before anything downstream sees it."""
        with closing(chunks):
            for chunk in chunks:
                self.check(chunk)
                yield chunk

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        self.check(chunk)
        return score_chunk(self.model, self.keys, chunk, self.include)
