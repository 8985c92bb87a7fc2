"""scikit-learn-compatible objects: joblib and pickle files, skops files and MLflow's sklearn flavor load into these."""

from __future__ import annotations

import io
import warnings
from typing import Any

from pipeline.run.flavors.base import Flavor


class Joblib(Flavor):
    """A joblib or pickle file: scikit-learn estimators and pipelines, LightGBM's and XGBoost's sklearn wrappers.

    Its library is the one the object's class comes from (``lightgbm`` for an ``LGBMClassifier``).
    """

    def __init__(self, obj: Any, trained_with: str | None = None) -> None:
        super().__init__(obj, trained_with)
        root = type(obj).__module__.split(".")[0]
        self.library = _DISTRIBUTIONS.get(root, root)


#: Distribution names of the libraries whose import name differs.
_DISTRIBUTIONS = {"sklearn": "scikit-learn"}


def unpickle(data: bytes) -> Flavor:
    """A joblib or pickle file, with the scikit-learn version it was written by (scikit-learn's own objects
    record it; other libraries' wrappers do not record theirs)."""
    import joblib

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = joblib.load(io.BytesIO(data))
    trained = next((str(getattr(w.message, "original_sklearn_version")) for w in caught
                    if hasattr(w.message, "original_sklearn_version")), None)
    return from_estimator(obj, trained)


def from_estimator(obj: Any, trained_with: str | None = None) -> Flavor:
    """A scikit-learn-compatible object; a scikit-learn one that says nothing was written by this release
    (unpickling warns when it was not, and skops and MLflow refuse other releases' files or say so)."""
    flavor = Joblib(obj)
    if flavor.library == "scikit-learn":
        flavor.trained_with = trained_with or flavor.installed
    return flavor
