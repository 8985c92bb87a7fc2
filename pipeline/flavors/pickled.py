"""scikit-learn-compatible objects: joblib and pickle files, skops files and MLflow's sklearn flavor load into these."""

from __future__ import annotations

import io
import warnings
from typing import Any

from pipeline.flavors.base import Flavor


class Joblib(Flavor):
    """A joblib or pickle file: scikit-learn estimators and pipelines, LightGBM's and XGBoost's sklearn wrappers."""


def unpickle(data: bytes) -> Flavor:
    """A joblib or pickle file, with the scikit-learn version it was written by when that differs from ours."""
    import joblib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = joblib.load(io.BytesIO(data))
    trained = next((str(getattr(w.message, "original_sklearn_version")) for w in caught
                    if hasattr(w.message, "original_sklearn_version")), None)
    flavor = Joblib(obj)
    flavor.trained_with = trained or (flavor.installed if _is_sklearn(obj) else None)
    return flavor


def _is_sklearn(obj: Any) -> bool:
    return type(obj).__module__.startswith("sklearn.")


def from_estimator(obj: Any) -> Flavor:
    """A scikit-learn-compatible object loaded by someone else (skops, MLflow's sklearn flavor)."""
    flavor = Joblib(obj)
    flavor.trained_with = flavor.installed if _is_sklearn(obj) else None
    return flavor


