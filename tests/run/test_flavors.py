"""Model families beyond scikit-learn pickles: LightGBM and XGBoost boosters in their own formats, ONNX, MLflow.

Each test trains a small real model (scikit-learn's bundled data sets, or generated data), saves it the
way its library documents, loads it through ``load_model`` and checks that ``Model.score`` is what the
library itself answers for the same rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sys
from pathlib import Path
from typing import Callable

import lightgbm
import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import skl2onnx
import xgboost
from mlflow.models import infer_signature
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from pipeline import load_job, run_job
from pipeline.errors import ModelError, PipelineError
from pipeline.jobspec import ModelSpec
from pipeline.run import flavors
from pipeline.run.model import Model, load_model

from helpers import MlflowRegistry, view_rows, write_table

# MLflow suggests an input example for every model saved with a signature; these tests need none.
pytestmark = pytest.mark.filterwarnings("ignore:.*An input example was not provided:UserWarning")

# -- data -------------------------------------------------------------------------------------


def bundled(loader: Callable, columns: int | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """A scikit-learn data set's first ``columns`` features, named as SQL identifiers, and its target."""
    data = loader(as_frame=True)
    features = data.data.iloc[:, :columns]
    return features.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_")), data.target.to_numpy()


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, np.ndarray]:
    return bundled(load_breast_cancer, 6)


@pytest.fixture(scope="module")
def iris() -> tuple[pd.DataFrame, np.ndarray]:
    return bundled(load_iris)


@pytest.fixture(scope="module")
def diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    return bundled(load_diabetes)


CITIES = ["lyon", "nice", "paris"]


def city_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A number and a city (text), with a binary target that depends on both."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.normal(size=n), "city": rng.choice(CITIES, n)})
    target = (frame.x + 1.5 * (frame.city == "paris") - (frame.city == "nice")) > 0.3
    return frame, target.to_numpy().astype(int)


def text_rows(n: int = 40) -> pd.DataFrame:
    """Rows as the domain hands them over: a key, plain text cities, one the model never saw, and missing ones
    (every city of rows 7 to 13, a whole chunk of 7 in a run)."""
    frame, _ = city_frame(n, seed=5)
    frame.loc[3, "city"] = "rome"
    frame.loc[7:13, "city"] = None
    return frame.assign(id=np.arange(n))


def as_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """The city as its training categories, an unknown one missing: how the library is handed it directly."""
    return frame[["x", "city"]].assign(city=pd.Categorical(frame.city.where(frame.city.isin(CITIES)),
                                                           categories=CITIES))


def loaded(path: Path, method: str = "predict", **spec) -> Model:
    return load_model(ModelSpec(path=path, method=method, **spec))


def refused(spec: ModelSpec) -> str:
    """The one-line message ``load_model(spec)`` refuses with."""
    with pytest.raises(ModelError) as info:
        load_model(spec)
    assert isinstance(info.value, PipelineError) and "\n" not in str(info.value)
    return str(info.value)


def sha256(path: Path) -> str:
    return hashlib.sha256(flavors.read_bytes(path)).hexdigest()


# -- LightGBM and XGBoost boosters -------------------------------------------------------------

SUFFIX = {"lightgbm": "txt", "xgboost": "json"}
REGRESSION = {"lightgbm": "regression", "xgboost": "reg:squarederror"}
BINARY = {"lightgbm": "binary", "xgboost": "binary:logistic"}
#: What ``load_model`` says of a model that takes an unnamed array, when the job lists no features.
UNNAMED = "the model does not record its feature names (it was fitted on an array); list them in [model] features"
WRAPPERS = {"lightgbm": lambda: lightgbm.LGBMClassifier(n_estimators=10, num_leaves=7, verbose=-1),
            "xgboost": lambda: xgboost.XGBClassifier(n_estimators=10, max_depth=3)}


def train_booster(fmt: str, features, target, objective: str, **params):
    """A booster of family ``fmt`` trained with the library's own ``train`` (pandas categories kept)."""
    if fmt == "lightgbm":
        params = {"objective": objective, "verbose": -1, "num_leaves": 7, "min_data_per_group": 5, **params}
        return lightgbm.train(params, lightgbm.Dataset(features, target), 10)
    return xgboost.train({"objective": objective, "max_depth": 3, **params},
                         xgboost.DMatrix(features, target, enable_categorical=True), 10)


def save_booster(booster, path: Path) -> Path:
    booster.save_model(str(path))
    return path


def read_booster(fmt: str, path: Path):
    """The booster in ``path``, read by its library itself."""
    return lightgbm.Booster(model_file=str(path)) if fmt == "lightgbm" else xgboost.Booster(model_file=str(path))


def direct(booster, rows, raw: bool = False) -> np.ndarray:
    """What the booster itself answers for ``rows``."""
    if isinstance(booster, xgboost.Booster):
        return booster.predict(xgboost.DMatrix(rows, enable_categorical=True), output_margin=raw)
    return booster.predict(rows, raw_score=raw)


@pytest.mark.parametrize("fmt, suffix", [("lightgbm", "txt"), ("xgboost", "ubj")])
@pytest.mark.parametrize("data", ["cancer", "iris"])
def test_a_classifier_booster_answers_what_its_sklearn_wrapper_does(tmp_path, request, fmt, suffix, data):
    features, target = request.getfixturevalue(data)
    classifier = WRAPPERS[fmt]().fit(features, target)
    booster = classifier.booster_ if fmt == "lightgbm" else classifier.get_booster()
    path = save_booster(booster, tmp_path / f"m.{suffix}")
    classes = sorted(set(target.tolist()))
    rows = features.iloc[::7]
    proba = loaded(path, "predict_proba", format=fmt)
    assert proba.features == tuple(features.columns) and proba.categories == ()
    assert proba.labels == tuple((f"proba_{c}", c) for c in classes)
    np.testing.assert_array_equal(proba.score(rows).to_numpy(), classifier.predict_proba(rows))
    np.testing.assert_array_equal(loaded(path, format=fmt).score(rows).prediction, classifier.predict(rows))
    raw = loaded(path, "decision_function", format=fmt)
    assert raw.outputs == (("score",) if len(classes) == 2 else tuple(f"score_{c}" for c in classes))
    expected = direct(booster, rows, raw=True)
    np.testing.assert_array_equal(raw.score(rows).to_numpy().reshape(expected.shape), expected)


@pytest.mark.parametrize("fmt, objective, data, params", [
    ("lightgbm", REGRESSION["lightgbm"], "diabetes", {}),
    ("xgboost", REGRESSION["xgboost"], "diabetes", {}),
    ("xgboost", "multi:softmax", "iris", {"num_class": 3}),
])
def test_a_booster_that_is_no_probabilistic_classifier_only_predicts(tmp_path, request, fmt, objective, data, params):
    features, target = request.getfixturevalue(data)
    booster = train_booster(fmt, features, target, objective, **params)
    path = save_booster(booster, tmp_path / f"m.{SUFFIX[fmt]}")
    model = loaded(path, format=fmt)
    assert (model.outputs, model.labels) == (("prediction",), ())
    np.testing.assert_array_equal(model.score(features).prediction, direct(booster, features))
    for method in ("predict_proba", "decision_function"):
        assert refused(ModelSpec(path=path, method=method, format=fmt)) == (
            f"{path}: a {fmt} booster with objective {objective!r} has no {method}() method")


@pytest.mark.parametrize("fmt", ["lightgbm", "xgboost"])
def test_a_booster_fitted_on_pandas_categories_is_handed_text_as_those_categories(tmp_path, fmt):
    path, _ = saved(fmt, tmp_path)
    booster = read_booster(fmt, path)
    model = loaded(path, "predict_proba", format=fmt)
    assert model.categories == (("city", tuple(CITIES)),)
    rows = text_rows()
    if fmt == "xgboost":  # it re-codes by value itself, refusing a category it never saw: so does the run
        with pytest.raises(ModelError, match="Found a category not in the training set .*`rome`$"):
            model.score(rows)
        rows = rows[rows.city.ne("rome")]
    p = direct(booster, as_categories(rows))
    for text in (rows, rows.astype({"city": object})):  # pandas' str dtype, and plain objects
        np.testing.assert_array_equal(model.score(text).to_numpy(), np.column_stack([1 - p, p]))


@pytest.mark.parametrize("fmt", ["lightgbm", "xgboost"])
def test_a_booster_fitted_on_an_array_takes_the_listed_features(tmp_path, fmt):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(200, 3))
    booster = train_booster(fmt, values, values @ [1.0, -2.0, 0.5], REGRESSION[fmt])
    path = save_booster(booster, tmp_path / f"m.{SUFFIX[fmt]}")
    assert refused(ModelSpec(path=path, format=fmt)) == f"{path}: {UNNAMED}"
    assert refused(ModelSpec(path=path, format=fmt, features=("a", "b"))) == (
        f"{path}: the model takes 3 features but [model] features lists 2")
    rows = pd.DataFrame(values[:9], columns=["a", "b", "c"])
    model = loaded(path, format=fmt, features=("a", "b", "c"))
    np.testing.assert_array_equal(model.score(rows).prediction, direct(booster, values[:9]))


def test_the_boosters_record_what_their_files_say_of_the_library_that_wrote_them(tmp_path, diabetes, caplog):
    features, target = diabetes
    text = save_booster(train_booster("lightgbm", features, target, REGRESSION["lightgbm"]), tmp_path / "m.txt")
    assert loaded(text, format="lightgbm").library["trained_with"] is None  # its version=v4 is the format's
    booster = train_booster("xgboost", features, target, REGRESSION["xgboost"])
    for suffix in ("json", "ubj"):
        path = save_booster(booster, tmp_path / f"m.{suffix}")
        assert loaded(path, format="xgboost").library == {"name": "xgboost", "trained_with": xgboost.__version__,
                                                          "installed": xgboost.__version__}
    older = json.loads((tmp_path / "m.json").read_text())
    older["version"] = [2, 1, 0]
    (tmp_path / "older.json").write_text(json.dumps(older, separators=(",", ":")))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert loaded(tmp_path / "older.json", format="xgboost").library["trained_with"] == "2.1.0"
    assert f"the model was written by xgboost 2.1.0, but xgboost {xgboost.__version__} is installed" in caplog.text


def test_a_native_file_loaded_as_a_pickle_says_which_format_to_set(tmp_path, diabetes):
    features, target = diabetes
    path = save_booster(train_booster("lightgbm", features, target, REGRESSION["lightgbm"]), tmp_path / "m.txt")
    message = refused(ModelSpec(path=path))
    assert message.startswith(f"{path}: cannot load model file: ")
    assert message.endswith('(if it is a lightgbm model file, set [model] format = "lightgbm")')


# -- ONNX ------------------------------------------------------------------------------------------

#: One input per column, as skl2onnx converts a pipeline on mixed columns.
COLUMN_INPUTS = [("age", FloatTensorType([None, 1])), ("visits", Int64TensorType([None, 1])),
                 ("city", StringTensorType([None, 1]))]


def visits_frame(n: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Ages (some missing), visit counts and cities; accented class labels."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"age": rng.normal(40, 12, n).round(1), "visits": rng.integers(0, 10, n),
                          "city": rng.choice(CITIES, n)})
    frame.loc[::9, "age"] = np.nan
    return frame, np.where((frame.city == "paris") | (frame.visits > 6), "Élevé", "faible")


def visits_rows(n: int = 40) -> pd.DataFrame:
    frame, _ = visits_frame(n, seed=1)
    frame.loc[3, "city"] = "rome"
    frame.loc[7:13, "city"] = None  # a whole chunk of 7 in a run
    return frame.assign(id=np.arange(n))


def onnx_pipeline(path: Path, zipmap: bool = True) -> Pipeline:
    """OneHotEncoder on text, imputer and scaler on numbers, LogisticRegression: fitted, converted, saved."""
    frame, target = visits_frame()
    columns = ColumnTransformer([("text", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                                 ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "visits"])])
    pipeline = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(frame, target)
    save_onnx(convert_sklearn(pipeline, initial_types=COLUMN_INPUTS, options={id(pipeline): {"zipmap": zipmap}}),
              path)
    return pipeline


def save_onnx(proto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def run_session(path: Path, feeds: dict[str, np.ndarray]) -> list:
    """onnxruntime called directly."""
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def unzip(zipmap: list[dict[str, float]]) -> np.ndarray:
    """skl2onnx's ZipMap output (one {class: probability} per row) as columns faible, Élevé."""
    return np.array([[p["faible"], p["Élevé"]] for p in zipmap], dtype=np.float32)


def column_feeds(rows: pd.DataFrame) -> dict[str, np.ndarray]:
    """The pipeline's inputs written out by hand; a missing city is "" (ONNX strings cannot be missing)."""
    return {"age": rows[["age"]].to_numpy(np.float32), "visits": rows[["visits"]].to_numpy(np.int64),
            "city": rows[["city"]].fillna("").to_numpy(object)}


@pytest.mark.parametrize("zipmap", [True, False])
def test_an_onnx_pipeline_with_one_input_per_column(tmp_path, zipmap):
    path = tmp_path / "m.onnx"
    pipeline = onnx_pipeline(path, zipmap)
    model = loaded(path, "predict_proba", format="onnx")
    assert model.features == ("age", "visits", "city")
    assert model.outputs == ("proba_faible", "proba_eleve")
    assert model.labels == (("proba_faible", "faible"), ("proba_eleve", "Élevé"))
    assert model.library == {"name": "onnxruntime", "trained_with": f"skl2onnx {skl2onnx.__version__}",
                             "installed": onnxruntime.__version__}
    rows = visits_rows()
    label, proba = run_session(path, column_feeds(rows))
    if zipmap:
        proba = unzip(proba)
    got = model.score(rows)
    np.testing.assert_array_equal(got.to_numpy(), proba)
    known = rows.city.notna()  # scikit-learn itself, on the rows it can take, within float32 rounding
    np.testing.assert_allclose(got[known].to_numpy(), pipeline.predict_proba(rows[known]), atol=1e-6)
    assert loaded(path, format="onnx").score(rows).prediction.tolist() == label.tolist()


def test_an_onnx_model_pickles_and_rebuilds_its_session(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_pipeline(path)
    model = loaded(path, "predict_proba", format="onnx")
    rows = visits_rows()
    again = pickle.loads(pickle.dumps(model))
    assert "obj" not in vars(again.flavor)  # no session travels: it is rebuilt from the bytes when first used
    pd.testing.assert_frame_equal(again.score(rows), model.score(rows))


def test_a_missing_value_for_an_onnx_int64_input_is_refused_naming_the_column(tmp_path):
    path = tmp_path / "m.onnx"
    onnx_pipeline(path)
    rows = visits_rows().astype({"visits": "Int64"})
    rows.loc[2, "visits"] = pd.NA
    with pytest.raises(ModelError) as info:
        loaded(path, format="onnx").score(rows)
    assert str(info.value) == "column(s) visits hold a missing value, which the ONNX model's int64 input cannot take"


def test_an_onnx_graph_with_one_tensor_input_takes_the_listed_features(tmp_path, iris):
    features, target = iris
    classifier = LogisticRegression(max_iter=500).fit(features.to_numpy(np.float32), target)
    path = save_onnx(convert_sklearn(classifier, initial_types=[("X", FloatTensorType([None, 4]))],
                                     options={id(classifier): {"zipmap": False}}), tmp_path / "iris.onnx")
    assert refused(ModelSpec(path=path, method="predict_proba", format="onnx")) == f"{path}: {UNNAMED}"
    assert refused(ModelSpec(path=path, format="onnx", features=tuple(features.columns[:3]))) == (
        f"{path}: the model takes 4 features but [model] features lists 3")
    model = loaded(path, "predict_proba", format="onnx", features=tuple(features.columns))
    assert model.outputs == ("proba_0", "proba_1", "proba_2")
    _, proba = run_session(path, {"X": features.to_numpy(np.float32)})
    np.testing.assert_array_equal(model.score(features).to_numpy(), proba)
    np.testing.assert_allclose(proba, classifier.predict_proba(features.to_numpy(np.float32)), atol=1e-5)


def test_an_onnx_regressor_predicts_and_has_no_other_method(tmp_path, diabetes):
    features, target = diabetes
    regressor = LinearRegression().fit(features, target)
    path = save_onnx(convert_sklearn(regressor, initial_types=[("X", FloatTensorType([None, 10]))]),
                     tmp_path / "reg.onnx")
    model = loaded(path, format="onnx", features=tuple(features.columns))
    (variable,) = run_session(path, {"X": features.to_numpy(np.float32)})
    np.testing.assert_array_equal(model.score(features).prediction, variable[:, 0])
    np.testing.assert_allclose(variable[:, 0], regressor.predict(features), rtol=1e-4)
    for method in ("predict_proba", "decision_function"):
        assert refused(ModelSpec(path=path, method=method, format="onnx", features=tuple(features.columns))) == (
            f"{path}: an ONNX graph with output(s) variable has no {method}() method")


# -- MLflow ------------------------------------------------------------------------------------------

class Banded(mlflow.pyfunc.PythonModel):
    """A pyfunc model with two named outputs: a score and its band (text)."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        score = model_input["x1"] * 2.0 - model_input["x2"]
        return pd.DataFrame({"score": score, "band": np.where(score > 0, "high", "low")})


class Doubled(mlflow.pyfunc.PythonModel):
    """A pyfunc model with one unnamed output."""

    def predict(self, context, model_input: pd.DataFrame, params=None):
        return model_input["x1"].to_numpy() * 2.0


def pyfunc_rows(n: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})


def signature(python_model: mlflow.pyfunc.PythonModel):
    sample = pyfunc_rows(5)
    return infer_signature(sample, python_model.predict(None, sample))


def save_pyfunc(python_model: mlflow.pyfunc.PythonModel, path: Path) -> Path:
    mlflow.pyfunc.save_model(str(path), python_model=python_model, signature=signature(python_model),
                             pip_requirements=[])
    return path


def test_an_mlflow_pyfunc_directory_with_named_outputs(tmp_path):
    path = save_pyfunc(Banded(), tmp_path / "banded")
    model = loaded(path, format="mlflow")
    assert model.features == ("x1", "x2")
    assert model.outputs == ("prediction_score", "prediction_band")
    assert model.labels == (("prediction_score", "score"), ("prediction_band", "band"))
    assert model.sha256 == sha256(path)
    assert model.library == {"name": "mlflow", "trained_with": mlflow.__version__, "installed": mlflow.__version__}
    rows = pyfunc_rows(seed=1).assign(id=range(30))
    expected = mlflow.pyfunc.load_model(str(path)).predict(rows[["x1", "x2"]])
    pd.testing.assert_frame_equal(model.score(rows), expected.set_axis(list(model.outputs), axis=1))
    assert refused(ModelSpec(path=path, method="predict_proba", format="mlflow")) == (
        f"{path}: an MLflow pyfunc model has no predict_proba() method")


def test_an_mlflow_pyfunc_model_with_one_output_gives_a_prediction(tmp_path):
    model = loaded(save_pyfunc(Doubled(), tmp_path / "doubled"), format="mlflow")
    rows = pyfunc_rows()
    assert (model.outputs, model.labels) == (("prediction",), ())
    np.testing.assert_array_equal(model.score(rows).prediction, rows.x1 * 2.0)


def test_an_mlflow_directory_with_a_sklearn_flavor_loads_the_estimator(tmp_path):
    rows = pyfunc_rows()
    estimator = LogisticRegression().fit(rows, rows.x1 > 0)
    path = tmp_path / "sk"
    mlflow.sklearn.save_model(estimator, str(path), pip_requirements=[])
    model = loaded(path, "predict_proba", format="mlflow")
    assert model.class_name == "sklearn.linear_model._logistic.LogisticRegression" and model.sha256 == sha256(path)
    np.testing.assert_array_equal(model.score(rows).to_numpy(), estimator.predict_proba(rows))


def test_a_registry_model_without_a_sklearn_flavor_loads_through_pyfunc_pinned_on_its_directory(
        mlflow_registry: MlflowRegistry):
    mlflow_registry.log(lambda: mlflow.pyfunc.log_model(name="model", python_model=Banded(), pip_requirements=[],
                                                        signature=signature(Banded()), registered_model_name="banded"))
    spec = ModelSpec(uri="models:/banded/1", tracking_uri=mlflow_registry.tracking_uri)
    model = load_model(spec)
    stored = mlflow_registry.client.get_model_version_download_uri("banded", "1").removeprefix("file://")
    assert model.sha256 == sha256(Path(stored))
    assert (model.location, model.source.version) == ("models:/banded/1", 1)
    rows = pyfunc_rows(seed=2)
    pd.testing.assert_frame_equal(model.score(rows), Banded().predict(None, rows).set_axis(list(model.outputs), axis=1))
    assert "refusing to load it" in refused(ModelSpec(**{**vars(spec), "sha256": "0" * 64}))


# -- what every family shares ---------------------------------------------------------------------

def saved(fmt: str, tmp_path: Path) -> tuple[Path, Path]:
    """A model of format ``fmt`` saved in ``tmp_path``: its path, and the file in it to tamper with."""
    if fmt == "onnx":
        onnx_pipeline(tmp_path / "m.onnx")
        return tmp_path / "m.onnx", tmp_path / "m.onnx"
    if fmt == "mlflow":
        path = save_pyfunc(Banded(), tmp_path / "banded")
        return path, path / "python_model.pkl"
    frame, target = city_frame()
    path = save_booster(train_booster(fmt, as_categories(frame), target, BINARY[fmt]), tmp_path / f"m.{SUFFIX[fmt]}")
    return path, path


class Unloadable(flavors.Flavor):
    @classmethod
    def from_file(cls, data: bytes, path: Path) -> flavors.Flavor:
        raise AssertionError("a model whose pin does not match was loaded")


@pytest.mark.parametrize("fmt", ["lightgbm", "xgboost", "onnx", "mlflow"])
def test_a_tampered_model_is_refused_before_it_is_loaded(tmp_path, monkeypatch, fmt):
    path, part = saved(fmt, tmp_path)
    pin = sha256(path)
    assert loaded(path, format=fmt, sha256=pin).sha256 == pin
    part.write_bytes(part.read_bytes() + b"\n")
    monkeypatch.setitem(flavors.NATIVE, fmt, Unloadable)
    assert refused(ModelSpec(path=path, format=fmt, sha256=pin)) == (
        f"{path}: sha256 is {sha256(path)}, but the job pins {pin}; refusing to load it")


@pytest.mark.parametrize("fmt, module", [("lightgbm", "lightgbm"), ("xgboost", "xgboost"), ("onnx", "onnxruntime"),
                                         ("onnx", "onnx"), ("mlflow", "mlflow.pyfunc")])
def test_a_missing_library_names_the_extra_to_install(tmp_path, monkeypatch, fmt, module):
    path = tmp_path / "model"
    path.write_bytes(b"the library is imported before the file is read as a model")
    monkeypatch.setitem(sys.modules, module, None)  # what `import <module>` meets when it is not installed
    assert refused(ModelSpec(path=path, format=fmt)) == (
        f"{path}: format = {fmt!r} needs {module.split('.')[0]}: pip install 'prediction-pipeline[{fmt}]'")


# -- end to end: a run on SQLite and PostgreSQL reads what the library answers ------------------

def run_scores(engine, tmp_path: Path, rows: pd.DataFrame, model: str) -> pd.DataFrame:
    """Run a job over ``rows`` (table customers, key id, chunks of 7) with this ``[model]`` section; the view."""
    write_table(engine, "customers", rows)
    job = tmp_path / "scores.toml"
    job.write_text(f'[domain]\nkeys = ["id"]\nquery = "SELECT * FROM customers"\nchunk_size = 7\n'
                   f'[model]\n{model}\n[output]\ntable = "scores"\n', encoding="utf-8")
    run_job(load_job(job), engine)
    return view_rows(engine, "scores", "id")


@pytest.mark.parametrize("fmt", ["lightgbm", "xgboost"])
def test_a_run_with_a_booster_on_native_categories(engine, tmp_path, fmt):
    path, _ = saved(fmt, tmp_path)
    rows = text_rows()
    if fmt == "xgboost":  # XGBoost refuses a category it never saw, as it does when called directly
        with pytest.raises(ModelError, match="Found a category not in the training set .*`rome`$"):
            run_scores(engine, tmp_path, rows, f'path = "{path}"\nformat = "{fmt}"\nmethod = "predict_proba"')
        rows = rows[rows.city.ne("rome")]
    view = run_scores(engine, tmp_path, rows, f'path = "{path}"\nformat = "{fmt}"\nmethod = "predict_proba"')
    booster = read_booster(fmt, path)
    p = direct(booster, as_categories(rows))
    np.testing.assert_array_equal(view[["proba_0", "proba_1"]].to_numpy(), np.column_stack([1 - p, p]))


def test_a_run_with_an_onnx_pipeline(engine, tmp_path):
    path, _ = saved("onnx", tmp_path)
    rows = visits_rows()
    view = run_scores(engine, tmp_path, rows, f'path = "{path}"\nmethod = "predict_proba"')
    _, proba = run_session(path, column_feeds(rows))
    expected = unzip(proba)
    np.testing.assert_array_equal(view[["proba_faible", "proba_eleve"]].to_numpy(), expected)


def test_a_run_with_an_mlflow_pyfunc_directory(engine, tmp_path):
    path, _ = saved("mlflow", tmp_path)
    rows = pyfunc_rows().assign(id=range(30))
    view = run_scores(engine, tmp_path, rows, f'path = "{path}"')
    expected = Banded().predict(None, rows)
    np.testing.assert_array_equal(view.prediction_score, expected.score)
    assert view.prediction_band.tolist() == expected.band.tolist()
