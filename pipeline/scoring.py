"""Turn a chunk of the domain into the rows a version table receives: its keys, then the model's outputs.

Every executor (this process, or a Dask worker) builds its rows here, so the version
tables they write are the same row for row.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from pipeline.errors import ModelError
from pipeline.jobs import Job
from pipeline.model import Model


def check_inputs(model: Model, keys: Sequence[str], columns: list[str]) -> None:
    """The domain's first chunk holds the model's features, and no key is named like an output."""
    model.check_features(columns)
    clash = sorted(set(keys) & set(model.outputs))
    if clash:
        raise ModelError(f"key column(s) {', '.join(clash)} have the name of a model output; rename them")


def check_default(job: Job, model: Model) -> None:
    """``[output] default`` may only name columns the model outputs."""
    unknown = [c for c, _ in job.output.default if c not in model.outputs]
    if unknown:
        raise ModelError(f"[output] default names column(s) the model does not output: {', '.join(unknown)} "
                         f"(outputs: {', '.join(model.outputs)})")


def score_chunk(model: Model, keys: Sequence[str], chunk: pd.DataFrame) -> pd.DataFrame:
    """The rows a version table receives for ``chunk``: its keys, then the model's outputs."""
    scores = model.score(chunk)
    return pd.concat([chunk[list(keys)].reset_index(drop=True), scores.reset_index(drop=True)], axis=1)


class Scorer:
    """:func:`score_chunk` for a stream of chunks, checking the inputs on the first one."""

    def __init__(self, model: Model, keys: Sequence[str]) -> None:
        self.model = model
        self.keys = list(keys)
        self.checked = False

    def __call__(self, chunk: pd.DataFrame) -> pd.DataFrame:
        if not self.checked:
            check_inputs(self.model, self.keys, list(map(str, chunk.columns)))
            self.checked = True
        return score_chunk(self.model, self.keys, chunk)
