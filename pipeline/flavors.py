"""Model families: how each is loaded, what it records about its inputs, and how it is called.

A flavor wraps one loaded model (a scikit-learn estimator, a LightGBM or XGBoost booster, an
ONNX graph, an MLflow pyfunc model) behind the few questions a run asks: which features it
takes, which categories it was fitted on, which classes it tells apart, which methods it
has and how many columns each gives, and what it answers for a chunk. Each family is
loaded through its own library, imported only when a job uses it (optional extras).
Nothing here checks pins or reads job files: :mod:`pipeline.model` does, and hands the
bytes it checked to :func:`load`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import io
import json
import re
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
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


class Joblib(Flavor):
    """A joblib or pickle file: scikit-learn estimators and pipelines, LightGBM's and XGBoost's sklearn wrappers."""


class Booster(Flavor):
    """A gradient-boosting booster in its library's own format, which records its objective but not its classes.

    A classifier objective gives the methods of the library's scikit-learn wrapper for classes ``0..k-1``:
    ``predict_proba`` (a binary booster's ``p`` as ``1 - p, p``), ``predict`` (the most probable class, as
    ``LGBMClassifier`` and ``XGBClassifier`` do), ``decision_function`` (the raw scores). Any other objective
    (regression, ranking, a custom one) gives only ``predict``, the booster's own answer.
    """

    def __init__(self, obj: Any, objective: str, n_classes: int | None, trained_with: str | None = None) -> None:
        super().__init__(obj, trained_with)
        self.objective = objective
        #: 2 for a binary classifier, k for a multiclass one, None for any other objective.
        self.n_classes = n_classes

    @property
    def description(self) -> str:
        return f"a {self.library} booster with objective {self.objective!r}"

    def classes(self) -> list[Any] | None:
        return None if self.n_classes is None else list(range(self.n_classes))

    def has_method(self, method: str) -> bool:
        return method == "predict" or self.n_classes is not None

    def width(self, method: str) -> int:
        """One column per class for probabilities, and for a multiclass booster's raw scores; else one."""
        per_class = method == "predict_proba" or (method == "decision_function" and (self.n_classes or 0) > 2)
        return self.n_classes if per_class and self.n_classes else 1

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        answer = self.predict(inputs, raw=method == "decision_function")
        if method == "decision_function" or self.n_classes is None:
            return answer
        proba = np.column_stack([1 - answer, answer]) if answer.ndim == 1 else answer
        return proba if method == "predict_proba" else proba.argmax(axis=1)

    def predict(self, inputs: pd.DataFrame, raw: bool) -> np.ndarray:
        """The booster's own answer: probabilities (or a regression's values), or raw scores with ``raw``."""
        raise NotImplementedError


class LightGBM(Booster):
    """A LightGBM booster saved as text (``booster.save_model("m.txt")``).

    The file's ``version=v4`` line is the format's version, not LightGBM's, so ``trained_with`` stays None.
    """

    library = "lightgbm"
    extra = "lightgbm"
    format = "lightgbm"

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        lightgbm = cls._import("lightgbm", path)
        booster = lightgbm.Booster(model_str=data.decode())  # the bytes checked are the bytes loaded
        objective = str(booster.params.get("objective", "custom"))
        n_classes = {"binary": 2, "multiclass": booster.num_model_per_iteration(),
                     "multiclassova": booster.num_model_per_iteration()}.get(objective)
        return cls(booster, objective, n_classes)

    def features(self) -> tuple[str, ...] | None:
        names = tuple(self.obj.feature_name())
        unnamed = names == tuple(f"Column_{i}" for i in range(len(names)))  # LightGBM's names for an array's columns
        return None if unnamed else names

    def n_features(self) -> int | None:
        return self.obj.num_feature()

    def predict(self, inputs: pd.DataFrame, raw: bool) -> np.ndarray:
        return self.obj.predict(inputs, raw_score=raw)


class XGBoost(Booster):
    """An XGBoost booster saved as JSON or UBJSON (``booster.save_model("m.json")`` or ``"m.ubj"``).

    ``trained_with`` is read from the file: the booster's config names the installed XGBoost, not the writer.
    """

    library = "xgboost"
    extra = "xgboost"
    format = "xgboost"

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        xgboost = cls._import("xgboost", path)
        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        learner = json.loads(booster.save_config())["learner"]
        objective = learner["objective"]["name"]
        n_classes = {"binary:logistic": 2,
                     "multi:softprob": int(learner["learner_model_param"]["num_class"])}.get(objective)
        return cls(booster, objective, n_classes, _xgboost_version(data))

    def features(self) -> tuple[str, ...] | None:
        names = self.obj.feature_names
        return None if names is None else tuple(names)

    def n_features(self) -> int | None:
        return self.obj.num_features()

    def predict(self, inputs: pd.DataFrame, raw: bool) -> np.ndarray:
        import xgboost

        categorical = "c" in (self.obj.feature_types or [])
        return self.obj.predict(xgboost.DMatrix(inputs, enable_categorical=categorical), output_margin=raw)


def _xgboost_version(data: bytes) -> str | None:
    """The XGBoost release that wrote a JSON or UBJSON model file: its last key (keys are sorted), ``version``."""
    text = re.search(rb'"version":\s*\[(\d+),(\d+),(\d+)\]\s*}\s*\Z', data[-64:])
    if text:
        return ".".join(part.decode() for part in text.groups())
    binary = re.search(rb"version\[#L.{8}i(.)i(.)i(.)}\Z", data[-64:], re.DOTALL)  # a UBJSON array of 3 int8
    return ".".join(str(part[0]) for part in binary.groups()) if binary else None


#: The ONNX input types a chunk is converted to (anything else is refused when the model is loaded).
_ONNX_TYPES: dict[str, Any] = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                               "tensor(int64)": np.int64, "tensor(string)": object}


class Onnx(Flavor):
    """An ONNX graph, run by onnxruntime: the safe format, since loading one runs no code.

    Features: a graph with one ``[rows, 1]`` input per column (what skl2onnx makes of a pipeline on mixed
    columns) names them; a graph with a single ``[rows, n]`` input does not, and takes the
    ``[model] features`` in that order.
    ``predict`` is the graph's first output (skl2onnx's ``label``, or a regressor's ``variable``) and
    ``predict_proba`` its second (``probabilities``, a ZipMap of ``{class: p}`` or a ``[rows, k]`` tensor),
    whose classes are the ``classlabels_*`` of the classifier nearest the outputs. The file names the
    converter that wrote it (``trained_with``, e.g. "skl2onnx 1.20.0"), not an onnxruntime release, so
    nothing is compared with the installed onnxruntime.
    """

    library = "onnxruntime"
    extra = "onnx"
    format = "onnx"
    compares_versions = False

    def __init__(self, data: bytes, proto: Any, path: Path) -> None:
        super().__init__(_onnx_session(data), f"{proto.producer_name} {proto.producer_version}".strip() or None)
        #: Kept to rebuild the session after unpickling (Dask sends the model to its workers).
        self.data = data
        self.inputs = [(i.name, i.type, i.shape) for i in self.obj.get_inputs()]
        self.outputs = [(o.name, o.shape) for o in self.obj.get_outputs()]
        self.class_labels = _onnx_classes(proto)
        per_column = len(self.inputs) > 1
        for name, kind, shape in self.inputs:
            if kind not in _ONNX_TYPES:
                raise ModelError(f"{path}: ONNX input {name!r} is a {kind}; the pipeline feeds "
                                 f"{', '.join(_ONNX_TYPES)}")
            if len(shape) != 2 or (per_column and shape[1] != 1):
                raise ModelError(f"{path}: ONNX input {name!r} has shape {shape}; the pipeline feeds one "
                                 "[rows, features] input, or one [rows, 1] input per column")

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        onnx = cls._import("onnx", path)
        cls._import("onnxruntime", path)
        return cls(data, onnx.load_model_from_string(data), path)

    @functools.cached_property
    def obj(self) -> Any:
        """The inference session, rebuilt from the bytes on first use after unpickling (it cannot be pickled)."""
        return _onnx_session(self.data)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "obj"}

    @property
    def description(self) -> str:
        return f"an ONNX graph with output(s) {', '.join(name for name, _ in self.outputs)}"

    def features(self) -> tuple[str, ...] | None:
        return tuple(name for name, _, _ in self.inputs) if len(self.inputs) > 1 else None

    def n_features(self) -> int | None:
        if len(self.inputs) > 1:
            return len(self.inputs)
        columns = self.inputs[0][2][1]
        return columns if isinstance(columns, int) else None

    def classes(self) -> list[Any] | None:
        return self.class_labels

    def has_method(self, method: str) -> bool:
        return method == "predict" or (method == "predict_proba" and len(self.outputs) > 1)

    def width(self, method: str) -> int:
        shape = self.outputs[0 if method == "predict" else 1][1]
        columns = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        if method == "predict":
            return columns or 1
        if columns is None and self.class_labels is None:
            raise ModelError(f"predict_proba: cannot tell how many classes output {self.outputs[1][0]!r} holds")
        return columns or len(self.class_labels)

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        feeds = {name: _onnx_tensor(inputs if len(self.inputs) == 1 else inputs[[name]], kind)
                 for name, kind, _ in self.inputs}
        result = self.obj.run([self.outputs[0 if method == "predict" else 1][0]], feeds)[0]
        if isinstance(result, list):  # a ZipMap: one {class: probability} per row, in float32
            return np.array([[row[c] for c in self.class_labels] for row in result], dtype=np.float32)
        return result


def _onnx_session(data: bytes) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])


def _onnx_classes(proto: Any) -> list[Any] | None:
    """The class labels of the classifier (or ZipMap) nearest the graph's outputs, or None."""
    from onnx.helper import get_attribute_value

    for node in reversed(proto.graph.node):
        for attribute in node.attribute:
            if attribute.name in ("classlabels_int64s", "classlabels_ints", "classlabels_strings"):
                values = get_attribute_value(attribute)
                if values:
                    return [v.decode() if isinstance(v, bytes) else int(v) for v in values]
    return None


def _onnx_tensor(frame: pd.DataFrame, kind: str) -> np.ndarray:
    """``frame`` as an ONNX input of type ``kind``.

    ONNX string tensors cannot hold a missing value, so a missing text becomes ``""`` (what a
    converted OneHotEncoder treats as an unknown category); int64 tensors cannot either, so a
    missing value there is refused, naming the column.
    """
    if kind == "tensor(string)":
        return frame.astype("string").fillna("").to_numpy(dtype=object)
    if kind == "tensor(int64)":
        missing = [str(c) for c in frame.columns if frame[c].isna().any()]
        if missing:
            raise ModelError(f"column(s) {', '.join(missing)} hold a missing value, which the ONNX model's "
                             "int64 input cannot take")
        return frame.to_numpy(dtype=np.int64)
    return frame.to_numpy(dtype=_ONNX_TYPES[kind], na_value=np.nan)


class Pyfunc(Flavor):
    """An MLflow model through ``mlflow.pyfunc``: only ``predict``, features and outputs from its signature.

    A signature naming several output columns gives one output column each; anything else is one
    ``prediction``. ``trained_with`` is the MLflow release that saved it (``mlflow_version`` in MLmodel).
    """

    library = "mlflow"
    extra = "mlflow"
    format = "mlflow"

    @classmethod
    def from_file(cls, data: bytes, path: Path) -> "Flavor":
        """The directory at ``path`` (``data`` is the manifest the pin covered); see :func:`from_mlflow`."""
        cls._import("mlflow.pyfunc", path)
        return from_mlflow(path)

    @property
    def description(self) -> str:
        return "an MLflow pyfunc model"

    def features(self) -> tuple[str, ...] | None:
        schema = self.obj.metadata.get_input_schema()
        return tuple(schema.input_names()) if schema is not None and schema.has_input_names() else None

    def labels(self, method: str) -> list[Any] | None:
        """The signature's output columns when it names several, each an output column of its own."""
        schema = self.obj.metadata.get_output_schema()
        names = schema.input_names() if schema is not None and schema.has_input_names() else []
        return list(names) if len(names) > 1 else None

    def width(self, method: str) -> int:
        names = self.labels(method)
        return len(names) if names else 1

    def call(self, method: str, inputs: pd.DataFrame) -> Any:
        result = self.obj.predict(inputs)
        names = self.labels(method)
        return result[names] if names and isinstance(result, pd.DataFrame) else result


def from_mlflow(directory: Path) -> Flavor:
    """An MLflow model directory: through ``mlflow.sklearn`` when it has that flavor (so ``predict_proba`` and
    the estimator's own features work), else through ``mlflow.pyfunc``."""
    import mlflow.pyfunc
    import mlflow.sklearn
    from mlflow.models import Model as MlflowModel

    if "sklearn" in MlflowModel.load(str(directory)).flavors:
        return from_estimator(mlflow.sklearn.load_model(str(directory)))
    model = mlflow.pyfunc.load_model(str(directory))
    return Pyfunc(model, model.metadata.mlflow_version)


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
            return {c: list(cats) for c, cats in zip(columns, encoder.categories_)}
    return {}


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


#: ``[model] format`` values besides joblib and skops, and the flavor that loads each.
NATIVE: dict[str, type[Flavor]] = {f.format: f for f in (LightGBM, XGBoost, Onnx, Pyfunc)}


def load(fmt: str, data: bytes, path: Path) -> Flavor:
    """A model file (or MLflow model directory) of format ``fmt`` other than joblib/skops, through its library."""
    return NATIVE[fmt].from_file(data, path)
