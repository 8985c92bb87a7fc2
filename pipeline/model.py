"""Load a scikit-learn model (checking its pin first) from a file or a registry, and score one chunk at a time.

No database code here: scoring is a pure function of a DataFrame.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.errors import ModelError
from pipeline.jobs import ModelSpec
from pipeline import registry
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
        raise ModelError(f"{spec.location}: the skops file holds types the job does not trust: {', '.join(untrusted)} "
                         "(review them, then list them in [model] trusted)")
    return skops.io.loads(data, trusted=needed)


@dataclass(frozen=True)
class Model:
    """A loaded model with everything a run needs to know about its inputs and outputs."""

    estimator: Any
    #: The model file's path, or the registry version's URI (``models:/NAME/VERSION``).
    location: str
    sha256: str
    method: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    #: Where a registry model came from; None for a model file.
    source: registry.Source | None = None

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
    """Check the pin, load the estimator, and work out features and output columns.

    The sha256 pin is checked before the estimator is loaded: unpickling runs code, so a
    tampered file must be refused before it is opened. A registry model (``spec.uri``) is
    pinned on the bytes of its serialized estimator, in the directory MLflow downloaded.
    """
    if spec.uri is None:
        data = _read(spec.path, spec)  # read once: the bytes checked are the bytes loaded
        sha256 = _check_pin(data, spec)
        return _inspect(_load(lambda: _unpickle(data, spec), spec), spec, sha256, None)
    with registry.download(spec) as found:
        sha256 = _check_pin(_read(found.file, spec), spec)
        estimator = _load(found.load, spec)
    return _inspect(estimator, spec, sha256, found.source)


def _read(path: Path, spec: ModelSpec) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{spec.location}: cannot read model file: {exc.strerror or exc}") from None


def _check_pin(data: bytes, spec: ModelSpec) -> str:
    """The digest of ``data``, which must be the one the job pins (if it pins one)."""
    sha256 = hashlib.sha256(data).hexdigest()
    if spec.sha256 is not None and sha256 != spec.sha256:
        raise ModelError(f"{spec.location}: sha256 is {sha256}, but the job pins {spec.sha256}; refusing to load it")
    return sha256


def _load(load: Callable[[], Any], spec: ModelSpec) -> Any:
    try:
        return load()
    except ModelError:
        raise
    except Exception as exc:  # unpickling can raise anything
        raise ModelError(f"{spec.location}: cannot load model file: {type(exc).__name__}: {_first_line(exc)}") from None


def _inspect(estimator: Any, spec: ModelSpec, sha256: str, source: registry.Source | None) -> Model:
    """The loaded estimator as a :class:`Model`, once it proved it can do what the job asks."""
    if not callable(getattr(estimator, spec.method, None)):
        raise ModelError(f"{spec.location}: a {type(estimator).__name__} has no {spec.method}() method")
    features = _features(estimator, spec)
    classes = getattr(estimator, "classes_", None)
    if spec.method == "predict_proba" and classes is None:
        raise ModelError(f"{spec.location}: predict_proba needs a fitted classifier with classes_")
    if spec.method == "predict_proba":
        width = len(classes)
    elif spec.method == "decision_function" and classes is not None and len(classes) > 2:
        width = len(classes)  # one score per class; binary classifiers give a single column
    else:
        width = 1
    try:
        outputs = output_columns(spec.method, None if classes is None else list(classes), width)
    except ValueError as exc:
        raise ModelError(f"{spec.location}: {exc}") from None
    location = str(spec.path) if source is None else source.resolved
    return Model(estimator, location, sha256, spec.method, features, tuple(outputs), source)


def _features(estimator: Any, spec: ModelSpec) -> tuple[str, ...]:
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is not None:
        fitted = tuple(str(f) for f in fitted)
        if spec.features is not None and tuple(spec.features) != fitted:
            raise ModelError(
                f"{spec.location}: [model] features {list(spec.features)} differ from the features the model was "
                f"fitted on {list(fitted)}; drop the key or make them match"
            )
        return fitted
    if spec.features is None:
        raise ModelError(
            f"{spec.location}: the model does not record its feature names (it was fitted on an array); "
            "list them in [model] features"
        )
    n = getattr(estimator, "n_features_in_", None)
    if n is not None and n != len(spec.features):
        raise ModelError(f"{spec.location}: the model takes {n} features but [model] features lists {len(spec.features)}")
    return tuple(spec.features)
