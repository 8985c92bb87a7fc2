"""Models that misbehave on purpose, importable by name so that joblib can unpickle them (tests/ is on sys.path)."""

from __future__ import annotations

import numpy as np


class Scripted:
    """A regressor-like model whose ``predict`` is ``x1 * scale + shift``, with optional faults."""

    def __init__(self, features=("x1", "x2", "x3"), scale: float = 1.0, shift: float = 0.0,
                 nan_every: int = 0, rows_short: int = 0) -> None:
        self.feature_names_in_ = np.array(features, dtype=object)
        self.scale, self.shift, self.nan_every, self.rows_short = scale, shift, nan_every, rows_short

    def predict(self, frame):
        values = frame["x1"].to_numpy(dtype=float) * self.scale + self.shift
        if self.nan_every:
            values[:: self.nan_every] = np.nan
        return values[: len(values) - self.rows_short]
