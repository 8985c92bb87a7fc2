"""What every model family answers (:class:`Flavor`), and where the pandas categories a model was fitted on live.

The generic answers are scikit-learn's (``feature_names_in_``, ``classes_``, its three methods);
a family overrides only what it does differently.
"""

from __future__ import annotations

import hashlib
import importlib
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from pipeline.errors import ModelError


class Flavor:
    """The generic flavor: any object with scikit-learn's ``predict``/``predict_proba``/``decision_function``.

    Subclasses override what their family does differently.
    """

    #: The library's distribution name (for ``pip``, messages and the recorded version).
    library: ClassVar[str] = "scikit-learn"
    #: The ``pip install`` extra that brings the library, for the message when it is missing.
    extra: ClassVar[str | None] = None
    #: The ``[model] format`` that loads this family through :func:`load` (None: joblib and skops, loaded apart).
    format: ClassVar[str | None] = None
    #: Whether ``trained_with`` is a version of ``library`` itself, worth comparing with the installed one.
    compares_versions: ClassVar[bool] = True

    def __init__(self, obj: Any, trained_with: str | None = None) -> None:
        self.obj = obj
        #: The library version the file says it was written by, where it says so.
        self.trained_with = trained_with

    # -- what the model records ---------------------------------------------

    @property
    def class_name(self) -> str:
        cls = type(self.obj)
        return f"{cls.__module__}.{cls.__qualname__}"

    @property
    def description(self) -> str:
        """What the model is, for a message such as "a LinearRegression has no predict_proba() method"."""
        return f"a {type(self.obj).__name__}"

    def features(self) -> tuple[str, ...] | None:
        """The feature names the model was fitted on, in order; None if it was fitted on an unnamed array."""
        fitted = getattr(self.obj, "feature_names_in_", None)
        return None if fitted is None else tuple(str(f) for f in fitted)

    def n_features(self) -> int | None:
        return getattr(self.obj, "n_features_in_", None)

    def classes(self) -> list[Any] | None:
        classes = getattr(self.obj, "classes_", None)
        return None if classes is None else list(classes)

    def labels(self, method: str) -> list[Any] | None:
        """What each output column of ``method`` holds, where there are several: the model's classes."""
        return self.classes()

    def has_method(self, method: str) -> bool:
        return callable(getattr(self.obj, method, None))

    def width(self, method: str) -> int:
        """How many columns ``method`` gives: one per class for probabilities (and multiclass scores)."""
        classes = self.classes()
        if method == "predict_proba":
            if classes is None:
                raise ModelError("predict_proba needs a fitted classifier with classes_")
            return len(classes)
        if method == "decision_function" and classes is not None and len(classes) > 2:
            return len(classes)
        return 1

    def categories(self) -> dict[str, list[Any]]:
        """Features the model was fitted on as pandas ``category`` columns, with their categories in order.

        A chunk's column is cast to exactly these categories before the model sees it, so the
        library maps values to its training codes itself and an unknown value is missing.
        """
        found: dict[str, list[Any]] = {}
        for step in _steps(self.obj):
            found.update(_lightgbm_categories(step) or _xgboost_categories(step) or _hgb_categories(step))
        return found

    def open_categories(self) -> set[str]:
        """Category features whose library judges a value it never saw by itself: XGBoost (3.1 and later)
        keeps its categories and re-codes by value (refusing a value it never saw), so such a value is
        handed on as a category of its own rather than made missing behind the library's back."""
        found: set[str] = set()
        for step in _steps(self.obj):
            found.update(_xgboost_categories(step))
        return found

    @property
    def installed(self) -> str | None:
        """The version of the library installed here."""
        try:
            return metadata.version(self.library)
        except metadata.PackageNotFoundError:
            return None

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        """Load the model whose pinned bytes are ``data`` (``path`` is where they came from)."""
        raise NotImplementedError

    @classmethod
    def _import(cls, module: str, path: Path) -> Any:
        """``module`` of the family's library, imported only now: a missing extra names what to install."""
        try:
            return importlib.import_module(module)
        except ImportError:
            library = module.split(".")[0]
            raise ModelError(f"{path}: format = {cls.format!r} needs {library}: {pip_install(cls.extra)}") from None

    # -- calling it ---------------------------------------------------------

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        """The raw answer of ``method`` for ``inputs`` (the features, in order, already cast)."""
        given: Any = inputs if self.features() is not None else inputs.to_numpy()
        return getattr(self.obj, method)(given)


def _steps(obj: Any) -> list[Any]:
    """``obj`` and, for a scikit-learn Pipeline, its final estimator (where native categories live)."""
    steps = getattr(obj, "steps", None)
    return [obj] if not steps else [obj, steps[-1][1]]


def _lightgbm_categories(obj: Any) -> dict[str, list[Any]]:
    """LightGBM keeps the categories of the pandas ``category`` columns it was fitted on (``pandas_categorical``)."""
    booster = getattr(obj, "booster_", None) if not hasattr(obj, "pandas_categorical") else obj
    if booster is None or not hasattr(booster, "pandas_categorical") or not booster.pandas_categorical:
        return {}
    import lightgbm

    params = lightgbm.Booster(model_str=booster.model_to_string()).params  # the in-memory params may lack it
    indices = params.get("categorical_feature") or []
    names = booster.feature_name()
    return {names[i]: list(cats) for i, cats in zip(indices, booster.pandas_categorical)}


def _xgboost_categories(obj: Any) -> dict[str, list[Any]]:
    """XGBoost (3.1 and later) stores the categories of its categorical features in the model."""
    getter = getattr(obj, "get_booster", None)
    booster = getter() if callable(getter) else obj
    if not hasattr(booster, "feature_types") or "c" not in (booster.feature_types or []):
        return {}
    try:
        found = booster.get_categories(export_to_arrow=True).to_arrow()
    except (AttributeError, TypeError, ValueError):
        return {}
    return {name: array.to_pylist() for name, array in (found or []) if array is not None}


def _hgb_categories(obj: Any) -> dict[str, list[Any]]:
    """HistGradientBoosting with ``categorical_features="from_dtype"`` encodes its category columns itself."""
    pre = getattr(obj, "_preprocessor", None)
    names = getattr(obj, "feature_names_in_", None)
    if pre is None or names is None or not hasattr(pre, "transformers_"):
        return {}
    for name, encoder, mask in pre.transformers_:
        if name == "encoder" and hasattr(encoder, "categories_"):
            columns = [str(c) for c, m in zip(names, mask) if m]
            # the encoder lists a missing value seen in training as a category of its own; pandas has no such thing
            return {c: [v for v in cats if not pd.isna(v)] for c, cats in zip(columns, encoder.categories_)}
    return {}


def read_bytes(path: Path) -> bytes:
    """The bytes a model's sha256 pin covers: a file's own, or for a directory (an MLflow model) a manifest
    of every file's relative path and sha256, in order."""
    if not path.is_dir():
        return path.read_bytes()
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(path).as_posix()}"
             for f in sorted(path.rglob("*")) if f.is_file()]
    return ("\n".join(lines) + "\n").encode()


def pip_install(extra: str | None) -> str:
    """What installs an optional extra."""
    return f"pip install 'prediction-pipeline[{extra}]'"
