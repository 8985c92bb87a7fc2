"""Load a model (checking its pin first) from a file or a registry, and score one chunk at a time.

How each model family is loaded and called is in :mod:`pipeline.run.flavors`; this module pins
the bytes, works out features, categories and output columns, and casts each chunk to
what the model was fitted on. No database code here: scoring is a pure function of a DataFrame.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.errors import ModelError
from pipeline.jobspec import ModelSpec
from pipeline.names import output_columns, output_labels
from pipeline.run import flavors, registry

log = logging.getLogger("pipeline")


def _unpickle(data: bytes, spec: ModelSpec) -> flavors.Flavor:
    """joblib runs whatever the pickle says; skops loads only the types the job trusts."""
    if spec.format == "joblib":
        return flavors.unpickle(data)
    import skops.io

    needed = skops.io.get_untrusted_types(data=data)
    untrusted = [t for t in needed if t not in spec.trusted]
    if untrusted:
        raise ModelError(f"{spec.location}: the skops file holds types the job does not trust: {', '.join(untrusted)} "
                         "(review them, then list them in [model] trusted)")
    return flavors.from_estimator(skops.io.loads(data, trusted=needed))


@dataclass(frozen=True)
class Model:
    """A loaded model with everything a run needs to know about its inputs and outputs."""

    flavor: flavors.Flavor
    #: The model file's path, or the registry version's URI (``models:/NAME/VERSION``).
    location: str
    sha256: str
    method: str
    features: tuple[str, ...]
    outputs: tuple[str, ...]
    #: Where a registry model came from; None for a model file.
    source: registry.Source | None = None
    #: Which class each output column holds: ``((column, label), ...)``; empty for a single prediction.
    labels: tuple[tuple[str, Any], ...] = ()
    #: Features the model was fitted on as pandas ``category`` columns, with their categories.
    categories: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    #: Category features whose unseen values go to the library as categories of their own (it maps them itself).
    open_categories: frozenset[str] = frozenset()

    @property
    def estimator(self) -> Any:
        """The loaded object itself (an estimator, a booster, an ONNX session...)."""
        return self.flavor.obj

    @property
    def class_name(self) -> str:
        return self.flavor.class_name

    @property
    def library(self) -> dict[str, str | None]:
        """The model's library, the version it was trained with (where the file says) and the one installed."""
        return {"name": self.flavor.library, "trained_with": self.flavor.trained_with,
                "installed": self.flavor.installed}

    def check_features(self, columns: list[str]) -> None:
        missing = [f for f in self.features if f not in columns]
        if missing:
            raise ModelError(
                f"model wants feature(s) the domain lacks: {', '.join(missing)} "
                f"(domain columns: {', '.join(columns)})"
            )

    def inputs(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The features of ``chunk`` in the model's order, category features cast to their fitted categories.

        A value outside them is made missing, which is what LightGBM and HistGradientBoosting do
        with an unknown category themselves; for XGBoost, which re-codes categories by value, it
        stays a category of its own (:attr:`open_categories`), so each library answers (or refuses)
        as it would alone.
        """
        inputs = chunk.loc[:, list(self.features)]
        for column, categories in self.categories:
            inputs[column] = _as_categories(inputs[column], list(categories), column in self.open_categories)
        return inputs

    def input_schema(self, chunk: pd.DataFrame) -> list[list[Any]]:
        """What the model is handed, as recorded per version: ``[[feature, dtype, categories or None], ...]``,
        with the domain's dtype (see :mod:`pipeline.contract`) and the categories it is cast to, if any."""
        categories = dict(self.categories)
        return [[f, str(chunk[f].dtype), list(categories[f]) if f in categories else None] for f in self.features]

    def score(self, chunk: pd.DataFrame) -> pd.DataFrame:
        """The model's outputs for every row of ``chunk``, one named column per output."""
        try:
            result = self.flavor.call(self.method, self.inputs(chunk))
        except ModelError:
            raise
        except Exception as exc:  # the model's own code: any failure is the model's
            raise ModelError(f"{self.method} failed: {type(exc).__name__}: {model_message(exc)}") from exc
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
        if isinstance(result, pd.DataFrame):  # several named outputs (MLflow) keep each column's own dtype
            return result.set_axis(list(self.outputs), axis=1).set_axis(chunk.index, axis=0)
        return pd.DataFrame(values, columns=list(self.outputs), index=chunk.index)


def _as_categories(column: pd.Series, categories: list[Any], keep_unknown: bool) -> pd.Series:
    """``column`` as a ``category`` column whose first categories are ``categories``, in order; an unseen value is
    missing, or with ``keep_unknown`` a category of its own after them."""
    if isinstance(column.dtype, pd.CategoricalDtype) and list(column.dtype.categories) == categories:
        return column
    values = column.astype(object).where(column.notna(), None)
    known = values.isin(categories) | values.isna()
    if keep_unknown:
        categories = categories + sorted(set(values[~known]), key=str)
    else:
        values = values.where(known, None)
    return pd.Series(pd.Categorical(values, categories=categories), index=column.index, name=column.name)


#: At most this many lines of a model library's error are kept: enough for the one naming the column.
MESSAGE_LINES = 4


def model_message(exc: BaseException) -> str:
    """A model library's error in one line: its first few non-blank lines joined, no traceback.

    Libraries often name the column or dtype at fault on a later line (LightGBM's
    ``Fields with bad pandas dtypes: balance: object``), so the first line alone is not enough; a
    very long line keeps its start and its end, where such messages put the cause.
    """
    text = str(exc).strip().split("Stack trace:")[0]  # a native library's own backtrace (XGBoost) says nothing
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line if len(line) <= 300 else f"{line[:150]} ... {line[-145:]}" for line in lines[:MESSAGE_LINES]]
    return " | ".join(kept) if kept else type(exc).__name__


def load_model(spec: ModelSpec) -> Model:
    """Check the pin, load the model through its family's library, and work out features and outputs.

    The sha256 pin is checked before the model is loaded: unpickling runs code, so a
    tampered file must be refused before it is opened. An MLflow model directory is pinned on
    the manifest of its files (:func:`flavors.read_bytes`); a registry model (``spec.uri``) on its
    serialized estimator (``model.pkl``) when it has a scikit-learn flavor, else on the manifest of
    the directory MLflow downloaded.
    """
    if spec.uri is None:
        data = _read(spec.path, spec)  # read once: the bytes checked are the bytes loaded
        sha256 = _check_pin(data, spec)
        return _inspect(_load(lambda: _open(data, spec), spec), spec, sha256, None)
    with registry.download(spec) as found:
        sha256 = _check_pin(_read(found.file, spec), spec)
        flavor = _load(found.load, spec)
    return _inspect(flavor, spec, sha256, found.source)


def _open(data: bytes, spec: ModelSpec) -> flavors.Flavor:
    """The model file's bytes as a flavor, by ``[model] format``."""
    if spec.format in ("joblib", "skops"):
        return _unpickle(data, spec)
    return flavors.load(spec.format, data, spec.path)


def _read(path: Path, spec: ModelSpec) -> bytes:
    try:
        return flavors.read_bytes(path)
    except OSError as exc:
        raise ModelError(f"{spec.location}: cannot read model file: {exc.strerror or exc}") from None


def _check_pin(data: bytes, spec: ModelSpec) -> str:
    """The digest of ``data``, which must be the one the job pins (if it pins one)."""
    sha256 = hashlib.sha256(data).hexdigest()
    if spec.sha256 is not None and sha256 != spec.sha256:
        raise ModelError(f"{spec.location}: sha256 is {sha256}, but the job pins {spec.sha256}; refusing to load it")
    return sha256


def _load(load: Callable[[], flavors.Flavor], spec: ModelSpec) -> flavors.Flavor:
    try:
        return load()
    except ModelError:
        raise
    except Exception as exc:  # unpickling can raise anything
        raise ModelError(f"{spec.location}: cannot load model file: {type(exc).__name__}: "
                         f"{model_message(exc)}{_format_hint(spec)}") from None


#: Native model files whose suffix does not tell their format, which ``[model] format`` must then name.
_AMBIGUOUS_SUFFIXES = {".txt": "lightgbm", ".json": "xgboost"}


def _format_hint(spec: ModelSpec) -> str:
    """For a .txt or .json file that failed to load as a pickle: the ``[model] format`` it may need."""
    guessed = spec.path is not None and spec.format == "joblib"
    fmt = _AMBIGUOUS_SUFFIXES.get(spec.path.suffix.lower()) if guessed else None
    return "" if fmt is None else f" (if it is a {fmt} model file, set [model] format = \"{fmt}\")"


def _inspect(flavor: flavors.Flavor, spec: ModelSpec, sha256: str, source: registry.Source | None) -> Model:
    """The loaded model as a :class:`Model`, once it proved it can do what the job asks."""
    if not flavor.has_method(spec.method):
        raise ModelError(f"{spec.location}: {flavor.description} has no {spec.method}() method")
    features = _features(flavor, spec)
    classes = flavor.labels(spec.method)
    try:
        width = flavor.width(spec.method)
    except ModelError as exc:
        raise ModelError(f"{spec.location}: {exc}") from None
    outputs = output_columns(spec.method, classes, width)
    categories = flavor.categories()
    unknown = [c for c in categories if c not in features]
    if unknown:
        raise ModelError(f"{spec.location}: category feature(s) {', '.join(unknown)} are not among the model's "
                         f"features {list(features)}")
    _warn_version(flavor, spec)
    location = str(spec.path) if source is None else source.resolved
    return Model(flavor, location, sha256, spec.method, features, tuple(outputs), source,
                 labels=tuple(output_labels(spec.method, classes, outputs)),
                 categories=tuple((c, tuple(v)) for c, v in categories.items()),
                 open_categories=frozenset(flavor.open_categories()))


def _warn_version(flavor: flavors.Flavor, spec: ModelSpec) -> None:
    """A model written by another release of its library may score differently: say so, loudly."""
    installed = flavor.installed
    if flavor.compares_versions and flavor.trained_with and installed and flavor.trained_with != installed:
        log.warning("%s: the model was written by %s %s, but %s %s is installed; its predictions may differ "
                    "(retrain it, or install %s==%s)", spec.location, flavor.library, flavor.trained_with,
                    flavor.library, installed, flavor.library, flavor.trained_with)


def _features(flavor: flavors.Flavor, spec: ModelSpec) -> tuple[str, ...]:
    fitted = flavor.features()
    if fitted is not None:
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
    n = flavor.n_features()
    if n is not None and n != len(spec.features):
        raise ModelError(f"{spec.location}: the model takes {n} features but [model] features lists {len(spec.features)}")
    return tuple(spec.features)
