"""Model families: how each is loaded, what it records about its inputs, and how it is called.

A flavor wraps one loaded model (a scikit-learn estimator, a LightGBM or XGBoost booster, an
ONNX graph, an MLflow pyfunc model) behind the few questions a run asks: which features it
takes, which categories it was fitted on, which classes it tells apart, which methods it
has and how many columns each gives, and what it answers for a chunk. Each family is
loaded through its own library, imported only when a job uses it (optional extras).
Nothing here checks pins or reads job files: :mod:`pipeline.run.model` does, and hands the
bytes it checked to :func:`load`.

``base`` holds the interface and the category look-ups; ``pickled`` the scikit-learn-compatible
objects; ``boosters`` LightGBM and XGBoost in their own formats; ``onnxgraph`` ONNX; ``pyfunc``
MLflow models.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.run.flavors.base import Flavor, pip_install, read_bytes
from pipeline.run.flavors.boosters import LightGBM, XGBoost
from pipeline.run.flavors.onnxgraph import Onnx
from pipeline.run.flavors.pickled import Joblib, from_estimator, unpickle
from pipeline.run.flavors.pyfunc import Pyfunc, from_mlflow

#: ``[model] format`` values besides joblib and skops, and the flavor that loads each.
NATIVE: dict[str, type[Flavor]] = {f.format: f for f in (LightGBM, XGBoost, Onnx, Pyfunc)}


def load(fmt: str, data: bytes, path: Path) -> Flavor:
    """A model file (or MLflow model directory) of format ``fmt`` other than joblib/skops, through its library."""
    return NATIVE[fmt].from_file(data, path)


__all__ = ["NATIVE", "Flavor", "Joblib", "from_estimator", "from_mlflow", "load", "pip_install", "read_bytes",
           "unpickle"]
