"""Load a scikit-learn model file (checking its pin first) and score one chunk at a time.

No database code here: scoring is a pure function of a DataFrame.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ModelError
from pipeline.jobs import ModelSpec
from pipeline.versions import output_columns


def _unpickle(data: bytes, spec: ModelSpec) -> Any:
    """joblib runs whatever the pickle says; skops loads only the types the job trusts."""
    if spec.format == "joblib":
        import joblib

        return joblib.load(io.BytesIO(data))
    import skops.io

    needed = skops.io.get_untrusted_types(data=data)
    untrusted = [t for t in needed if t not in spec.trusted]
    if untrusted:
        raise ModelError(f"{spec.path}: the skops file holds types the job does not trust: {', '.join(untrusted)} "
                         "(review them, then list them in [model] trusted)")
    return skops.io.loads(data, trusted=needed)


@dataclass(frozen=True)
class Model:
    """A loaded model with everything a run needs to know about its inputs and outputs."""

    estimator: Any
    path: Path
    sha256: str
    method: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def class_name(self) -> str:
        cls = type(self.estimator)
        return f"{cls.__module__}.{cls.__qualname__}"

    def check_features(self, columns: list[str]) -> None:
        missing = [f for f in self.features if f not in columns]
        if missing:
            raise ModelError(
                f"model wants feature(s) the domain lacks: {', '.join(missing)} "
                f"(domain columns: {', '.join(columns)})"
            )

    def score(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The model's outputs for every row of ``chunk``, one named column per output."""
        inputs = chunk.loc[:, list(self.features)]
        if not hasattr(self.estimator, "feature_names_in_"):
            inputs = inputs.to_numpy()
        try:
            result = getattr(self.estimator, self.method)(inputs)
        except Exception as exc:  # the model's own code: any failure is the model's
            raise ModelError(f"{self.method} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        values = np.asarray(result)
        if values.ndim == 2 and values.shape[1] == 1 and len(self.outputs) == 1:
            values = values[:, 0]
        width = values.shape[1] if values.ndim == 2 else 1
        if values.ndim not in (1, 2) or values.shape[0] != len(chunk) or width != len(self.outputs):
            raise ModelError(
                f"{self.method} returned shape {values.shape} for {len(chunk)} rows; "
                f"expected {len(chunk)} x {len(self.outputs)} ({', '.join(self.outputs)})"
            )
        if values.ndim == 1:
            return pd.DataFrame({self.outputs[0]: values}, index=chunk.index)
        return pd.DataFrame(values, columns=list(self.outputs), index=chunk.index)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(spec: ModelSpec) -> Model:
    """Check the pin, unpickle, and work out features and output columns.

    The sha256 pin is checked before ``joblib.load``: unpickling runs code, so a
    tampered file must be refused before it is opened.
    """
    try:
        data = spec.path.read_bytes()  # read once: the bytes checked are the bytes loaded
    except OSError as exc:
        raise ModelError(f"{spec.path}: cannot read model file: {exc.strerror or exc}") from None
    sha256 = hashlib.sha256(data).hexdigest()
    if spec.sha256 is not None and sha256 != spec.sha256:
        raise ModelError(f"{spec.path}: sha256 is {sha256}, but the job pins {spec.sha256}; refusing to load it")
    try:
        estimator = _unpickle(data, spec)
    except ModelError:
        raise
    except Exception as exc:  # unpickling can raise anything
        raise ModelError(f"{spec.path}: cannot load model file: {type(exc).__name__}: {_first_line(exc)}") from None
    if not callable(getattr(estimator, spec.method, None)):
        raise ModelError(f"{spec.path}: a {type(estimator).__name__} has no {spec.method}() method")
    features = _features(estimator, spec)
    classes = getattr(estimator, "classes_", None)
    if spec.method == "predict_proba" and classes is None:
        raise ModelError(f"{spec.path}: predict_proba needs a fitted classifier with classes_")
    if spec.method == "predict_proba":
        width = len(classes)
    elif spec.method == "decision_function" and classes is not None and len(classes) > 2:
        width = len(classes)  # one score per class; binary classifiers give a single column
    else:
        width = 1
    try:
        outputs = output_columns(spec.method, None if classes is None else list(classes), width)
    except ValueError as exc:
        raise ModelError(f"{spec.path}: {exc}") from None
    return Model(estimator, spec.path, sha256, spec.method, features, tuple(outputs))


def _features(estimator: Any, spec: ModelSpec) -> tuple[str, ...]:
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None:
        fitted = tuple(str(f) for f in fitted)
        if spec.features is not None and tuple(spec.features) != fitted:
            raise ModelError(
                f"{spec.path}: [model] features {list(spec.features)} differ from the features the model was "
                f"fitted on {list(fitted)}; drop the key or make them match"
            )
        return fitted
    if spec.features is None:
        raise ModelError(
            f"{spec.path}: the model does not record its feature names (it was fitted on an array); "
            "list them in [model] features"
        )
    n = getattr(estimator, "n_features_in_", None)
    if n is not None and n != len(spec.features):
        raise ModelError(f"{spec.path}: the model takes {n} features but [model] features lists {len(spec.features)}")
    return tuple(spec.features)
