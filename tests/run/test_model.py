"""Loading a model file (pin first, then unpickle) and scoring chunks with it; no database needed."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from pipeline.errors import ModelError, PipelineError
from pipeline.jobspec import ModelSpec
from pipeline.run.model import Model, load_model

FEATURES = ["x1", "x2", "x3"]


# -- tiny estimators the tests pickle (module level, so that unpickling finds them) ---------

class WrongLength:
    """Looks fitted on x1, x2; predict returns one value fewer than it was given rows."""

    feature_names_in_ = np.array(["x1", "x2"], dtype=object)
    n_features_in_ = 2

    def predict(self, X):
        return np.zeros(len(X) - 1)


class TooWide:
    """predict returns two columns where one output is expected."""

    feature_names_in_ = np.array(["x1", "x2"], dtype=object)

    def predict(self, X):
        return np.zeros((len(X), 2))


class ColumnVector:
    """predict returns an (n, 1) column, as some regressors do."""

    feature_names_in_ = np.array(["x1", "x2"], dtype=object)

    def predict(self, X):
        return X[["x1"]].to_numpy() * 2


class Scalar:
    """predict returns one number for the whole chunk."""

    feature_names_in_ = np.array(["x1", "x2"], dtype=object)

    def predict(self, X):
        return 0.5


class Broken:
    feature_names_in_ = np.array(["x1", "x2"], dtype=object)

    def predict(self, X):
        raise RuntimeError("boom\nsecond line of the traceback text")


class ProbaWithoutClasses:
    feature_names_in_ = np.array(["x1", "x2"], dtype=object)

    def predict_proba(self, X):
        return np.full((len(X), 2), 0.5)


class MkdirOnLoad:
    """Unpickling this runs os.mkdir(marker): a stand-in for a tampered model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# -- data and models ----------------------------------------------------------------------

def frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({f: rng.normal(size=n) for f in FEATURES})


def binary_target(data: pd.DataFrame) -> np.ndarray:
    return (data.x1 + 0.5 * data.x2 > 0).to_numpy()


def save(estimator, path: Path) -> Path:
    joblib.dump(estimator, path)
    return path


@pytest.fixture
def data() -> pd.DataFrame:
    return frame()


@pytest.fixture
def logistic(tmp_path, data) -> tuple[LogisticRegression, Path]:
    model = LogisticRegression().fit(data[FEATURES], binary_target(data).astype(int))
    return model, save(model, tmp_path / "logistic.joblib")


def chunk(n: int = 7, seed: int = 1) -> pd.DataFrame:
    """A chunk the way the domain hands it over: keys, the features in another order, extra columns."""
    rng = np.random.default_rng(seed)
    features = frame(n, seed)
    return pd.DataFrame({"customer_id": np.arange(100, 100 + n), "x3": features.x3.to_numpy(), "note": ["n"] * n,
                         "x1": features.x1.to_numpy(), "x2": features.x2.to_numpy()},
                        index=rng.permutation(n) + 1000)


# -- the sha256 pin -------------------------------------------------------------------------

def file_sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_matching_pin_loads(logistic):
    model, path = logistic
    pin = hashlib.sha256(path.read_bytes()).hexdigest()
    loaded = load_model(ModelSpec(path=path, method="predict_proba", sha256=pin))
    assert loaded.sha256 == pin
    assert loaded.location == str(path)
    assert loaded.class_name == "sklearn.linear_model._logistic.LogisticRegression"


def test_without_a_pin_the_digest_is_still_recorded(logistic):
    _, path = logistic
    assert load_model(ModelSpec(path=path, method="predict")).sha256 == file_sha256(path)


def test_mismatching_pin_is_refused(logistic):
    _, path = logistic
    actual = file_sha256(path)
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict", sha256="0" * 64))
    assert str(info.value) == f"{path}: sha256 is {actual}, but the job pins {'0' * 64}; refusing to load it"


def test_the_payload_runs_when_the_file_is_unpickled(tmp_path):
    """Control for the next test: without a pin (or with the right one) the tampered file does run its code."""
    marker = tmp_path / "marker"
    path = tmp_path / "tampered.joblib"
    path.write_bytes(pickle.dumps(MkdirOnLoad(marker)))
    with pytest.raises(ModelError, match="a NoneType has no predict"):
        load_model(ModelSpec(path=path, method="predict", sha256=file_sha256(path)))
    assert marker.is_dir()


def test_a_mismatching_pin_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "tampered.joblib"
    path.write_bytes(pickle.dumps(MkdirOnLoad(marker)))
    with pytest.raises(ModelError, match="refusing to load it"):
        load_model(ModelSpec(path=path, method="predict", sha256="a" * 64))
    assert not marker.exists()


# -- files that are not models ---------------------------------------------------------------

def test_a_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.joblib"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict"))
    assert str(info.value).startswith(f"{path}: cannot load model file: ")
    assert "\n" not in str(info.value)


def test_a_truncated_file(tmp_path, logistic):
    _, good = logistic
    path = tmp_path / "truncated.joblib"
    path.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict"))
    assert str(info.value).startswith(f"{path}: cannot load model file: ")


def test_an_empty_file(tmp_path):
    path = tmp_path / "empty.joblib"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match="cannot load model file"):
        load_model(ModelSpec(path=path, method="predict"))


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_a_pickled_dict_is_not_a_model(tmp_path, method):
    path = save({"coef": [1, 2, 3]}, tmp_path / "dict.joblib")
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method=method))
    assert str(info.value) == f"{path}: a dict has no {method}() method"


def test_a_regressor_has_no_predict_proba(tmp_path, data):
    path = save(LinearRegression().fit(data[FEATURES], data.x1), tmp_path / "reg.joblib")
    with pytest.raises(ModelError, match=r"a LinearRegression has no predict_proba\(\) method"):
        load_model(ModelSpec(path=path, method="predict_proba"))


def test_predict_proba_needs_classes(tmp_path):
    path = save(ProbaWithoutClasses(), tmp_path / "noclasses.joblib")
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict_proba"))
    assert str(info.value) == f"{path}: predict_proba needs a fitted classifier with classes_"


def test_a_model_file_that_went_missing_is_a_model_error(tmp_path):
    path = tmp_path / "gone.joblib"
    with pytest.raises(ModelError, match="gone.joblib"):
        load_model(ModelSpec(path=path, method="predict"))


# -- features -----------------------------------------------------------------------------------

def test_features_come_from_the_model(logistic):
    _, path = logistic
    assert load_model(ModelSpec(path=path, method="predict")).features == tuple(FEATURES)


def test_features_that_match_the_model_are_accepted(logistic):
    _, path = logistic
    assert load_model(ModelSpec(path=path, method="predict", features=tuple(FEATURES))).features == tuple(FEATURES)


@pytest.mark.parametrize("features", [
    pytest.param(("x1", "x2"), id="fewer"),
    pytest.param(("x3", "x2", "x1"), id="other-order"),
    pytest.param(("x1", "x2", "x4"), id="other-name"),
])
def test_features_that_differ_from_the_model_are_refused(logistic, features):
    _, path = logistic
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict", features=features))
    assert str(info.value) == (f"{path}: [model] features {list(features)} differ from the features the model "
                               f"was fitted on {FEATURES}; drop the key or make them match")


@pytest.fixture
def array_model(tmp_path, data) -> tuple[LogisticRegression, Path]:
    model = LogisticRegression().fit(data[FEATURES].to_numpy(), binary_target(data))
    assert not hasattr(model, "feature_names_in_")
    return model, save(model, tmp_path / "array.joblib")


def test_a_model_fitted_on_an_array_needs_features(array_model):
    _, path = array_model
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict_proba"))
    assert str(info.value) == (f"{path}: the model does not record its feature names (it was fitted on an array); "
                               "list them in [model] features")


def test_a_model_fitted_on_an_array_scores_with_the_listed_features(array_model):
    model, path = array_model
    loaded = load_model(ModelSpec(path=path, method="predict_proba", features=tuple(FEATURES)))
    assert loaded.features == tuple(FEATURES)
    rows = chunk()
    scores = loaded.score(rows)
    expected = model.predict_proba(rows[FEATURES].to_numpy())
    assert list(scores.columns) == ["proba_false", "proba_true"]
    np.testing.assert_array_equal(scores.to_numpy(), expected)
    assert scores.index.equals(rows.index)


def test_a_model_fitted_on_an_array_with_the_wrong_number_of_features(array_model):
    _, path = array_model
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(path=path, method="predict", features=("x1", "x2")))
    assert str(info.value) == f"{path}: the model takes 3 features but [model] features lists 2"


def test_check_features_names_what_the_domain_lacks(logistic):
    _, path = logistic
    loaded = load_model(ModelSpec(path=path, method="predict"))
    loaded.check_features(["customer_id", "x1", "x2", "x3"])
    with pytest.raises(ModelError) as info:
        loaded.check_features(["customer_id", "x2"])
    assert str(info.value) == "model wants feature(s) the domain lacks: x1, x3 (domain columns: customer_id, x2)"


# -- output columns and values --------------------------------------------------------------------

@pytest.mark.parametrize("target, columns", [
    pytest.param(lambda y: y.astype(int), ["proba_0", "proba_1"], id="int"),
    pytest.param(lambda y: y, ["proba_false", "proba_true"], id="bool"),
    pytest.param(lambda y: np.where(y, "Will Churn", "stays"), ["proba_will_churn", "proba_stays"], id="string-in-classes_-order"),
    pytest.param(lambda y: np.where(y, 7, -3), ["proba_neg3", "proba_7"], id="negative-int"),
])
def test_predict_proba_is_one_column_per_class_with_the_models_own_values(tmp_path, data, target, columns):
    model = LogisticRegression().fit(data[FEATURES], target(binary_target(data)))
    path = save(model, tmp_path / "m.joblib")
    loaded = load_model(ModelSpec(path=path, method="predict_proba"))
    assert loaded.outputs == tuple(columns)
    rows = chunk()
    scores = loaded.score(rows)
    expected = pd.DataFrame(model.predict_proba(rows[FEATURES]), columns=columns, index=rows.index)
    pd.testing.assert_frame_equal(scores, expected)


def test_predict_of_a_regressor(tmp_path, data):
    model = LinearRegression().fit(data[FEATURES], 3 * data.x1 - data.x3)
    loaded = load_model(ModelSpec(path=save(model, tmp_path / "reg.joblib"), method="predict"))
    assert loaded.outputs == ("prediction",)
    rows = chunk()
    scores = loaded.score(rows)
    pd.testing.assert_frame_equal(scores, pd.DataFrame({"prediction": model.predict(rows[FEATURES])},
                                                       index=rows.index))


def test_predict_of_a_classifier_gives_its_labels(tmp_path, data):
    model = LogisticRegression().fit(data[FEATURES], np.where(binary_target(data), "yes", "no"))
    loaded = load_model(ModelSpec(path=save(model, tmp_path / "clf.joblib"), method="predict"))
    rows = chunk(20)
    scores = loaded.score(rows)
    assert list(scores.columns) == ["prediction"]
    assert scores.prediction.tolist() == model.predict(rows[FEATURES]).tolist()
    assert set(scores.prediction) <= {"yes", "no"}


def test_decision_function_binary_is_one_score(logistic):
    model, path = logistic
    loaded = load_model(ModelSpec(path=path, method="decision_function"))
    assert loaded.outputs == ("score",)
    rows = chunk()
    scores = loaded.score(rows)
    pd.testing.assert_frame_equal(scores, pd.DataFrame({"score": model.decision_function(rows[FEATURES])},
                                                       index=rows.index))


def test_decision_function_multiclass_is_one_score_per_class(tmp_path, data):
    y = np.select([data.x1 < -0.4, data.x1 > 0.4], ["low", "high"], default="mid")
    model = LogisticRegression().fit(data[FEATURES], y)
    assert list(model.classes_) == ["high", "low", "mid"]
    loaded = load_model(ModelSpec(path=save(model, tmp_path / "multi.joblib"), method="decision_function"))
    assert loaded.outputs == ("score_high", "score_low", "score_mid")
    rows = chunk()
    scores = loaded.score(rows)
    expected = pd.DataFrame(model.decision_function(rows[FEATURES]), columns=list(loaded.outputs), index=rows.index)
    pd.testing.assert_frame_equal(scores, expected)


def test_classes_that_collide_as_column_names_are_numbered_and_recorded(tmp_path, data):
    model = LogisticRegression().fit(data[FEATURES], np.where(binary_target(data), "a b", "a_b"))
    path = save(model, tmp_path / "collide.joblib")
    loaded = load_model(ModelSpec(path=path, method="predict_proba"))
    assert loaded.outputs == ("proba_0", "proba_1")
    assert loaded.labels == (("proba_0", "a b"), ("proba_1", "a_b"))


def test_accented_labels_are_transliterated_and_recorded(tmp_path, data):
    labels = np.where(binary_target(data), "Élevé", "faible")
    path = save(LogisticRegression().fit(data[FEATURES], labels), tmp_path / "accents.joblib")
    loaded = load_model(ModelSpec(path=path, method="predict_proba"))
    assert loaded.outputs == ("proba_faible", "proba_eleve")  # classes_ order: "faible" < "Élevé"
    assert dict(loaded.labels) == {"proba_eleve": "Élevé", "proba_faible": "faible"}


def test_an_n_by_1_prediction_becomes_one_column(tmp_path):
    loaded = load_model(ModelSpec(path=save(ColumnVector(), tmp_path / "col.joblib"), method="predict"))
    rows = chunk(4)
    scores = loaded.score(rows)
    pd.testing.assert_frame_equal(scores, pd.DataFrame({"prediction": rows.x1 * 2}, index=rows.index))


def test_a_one_row_chunk(logistic):
    model, path = logistic
    loaded = load_model(ModelSpec(path=path, method="predict_proba"))
    row = chunk(5).iloc[2:3]
    scores = loaded.score(row)
    assert scores.shape == (1, 2) and scores.index.tolist() == row.index.tolist()
    np.testing.assert_array_equal(scores.to_numpy(), model.predict_proba(row[FEATURES]))


# -- models that misbehave ---------------------------------------------------------------------------

def test_a_model_returning_the_wrong_number_of_rows(tmp_path):
    loaded = load_model(ModelSpec(path=save(WrongLength(), tmp_path / "wrong.joblib"), method="predict"))
    assert loaded.features == ("x1", "x2")
    with pytest.raises(ModelError) as info:
        loaded.score(chunk(5))
    assert str(info.value) == "predict returned shape (4,) for 5 rows; expected 5 x 1 (prediction)"


def test_a_model_returning_too_many_columns(tmp_path):
    loaded = load_model(ModelSpec(path=save(TooWide(), tmp_path / "wide.joblib"), method="predict"))
    with pytest.raises(ModelError, match=r"predict returned shape \(3, 2\) for 3 rows; expected 3 x 1"):
        loaded.score(chunk(3))


def test_a_model_that_fails_while_scoring(tmp_path):
    loaded = load_model(ModelSpec(path=save(Broken(), tmp_path / "broken.joblib"), method="predict"))
    with pytest.raises(ModelError) as info:
        loaded.score(chunk(3))
    assert str(info.value) == "predict failed: RuntimeError: boom | second line of the traceback text"
    assert isinstance(info.value, PipelineError) and isinstance(info.value.__cause__, RuntimeError)


def test_a_chunk_with_values_the_model_rejects(logistic):
    _, path = logistic
    loaded = load_model(ModelSpec(path=path, method="predict"))
    rows = chunk(3)
    rows["x2"] = ["a", "b", "c"]
    with pytest.raises(ModelError, match=r"^predict failed: ValueError: "):
        loaded.score(rows)


def test_a_model_returning_a_scalar(tmp_path):
    loaded = load_model(ModelSpec(path=save(Scalar(), tmp_path / "scalar.joblib"), method="predict"))
    with pytest.raises(ModelError, match=r"predict returned shape \(\) for 3 rows"):
        loaded.score(chunk(3))


def test_model_is_frozen(logistic):
    _, path = logistic
    loaded = load_model(ModelSpec(path=path, method="predict"))
    assert isinstance(loaded, Model)
    with pytest.raises(AttributeError):
        loaded.method = "predict_proba"  # type: ignore[misc]


# -- skops, the safe format ---------------------------------------------------------------

class Doubler:
    """Not a scikit-learn type: skops must refuse it unless the job trusts it."""

    feature_names_in_ = np.array(["a"], dtype=object)

    def predict(self, frame):
        return np.asarray(frame)[:, 0] * 2


def test_skops_file_loads_without_pickle(tmp_path):
    import skops.io

    model = LogisticRegression().fit(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]}), [0, 0, 1, 1])
    path = tmp_path / "m.skops"
    skops.io.dump(model, path)
    loaded = load_model(ModelSpec(path=path, method="predict_proba", format="skops"))
    assert type(loaded.estimator) is LogisticRegression and loaded.outputs == ("proba_0", "proba_1")


def test_skops_refuses_untrusted_types_until_the_job_lists_them(tmp_path):
    import skops.io

    path = tmp_path / "m.skops"
    skops.io.dump(Doubler(), path)
    name = f"{__name__}.Doubler"
    with pytest.raises(ModelError, match=f"holds types the job does not trust: {name}"):
        load_model(ModelSpec(path=path, method="predict", format="skops"))
    loaded = load_model(ModelSpec(path=path, method="predict", format="skops", trusted=(name,)))
    assert loaded.score(pd.DataFrame({"a": [1.5]})).prediction.tolist() == [3.0]


def test_a_pickle_from_another_scikit_learn_release_is_recorded_and_warned_about(tmp_path, data, monkeypatch,
                                                                                 caplog):
    import logging

    import sklearn
    import sklearn.base

    model = LogisticRegression().fit(data[FEATURES], binary_target(data))
    with monkeypatch.context() as patched:
        patched.setattr(sklearn.base, "__version__", "1.0.2")  # what BaseEstimator.__getstate__ writes down
        path = save(model, tmp_path / "old.joblib")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        loaded = load_model(ModelSpec(path=path, method="predict_proba"))
    assert loaded.library == {"name": "scikit-learn", "trained_with": "1.0.2", "installed": sklearn.__version__}
    assert (f"the model was written by scikit-learn 1.0.2, but scikit-learn {sklearn.__version__} is installed"
            in caplog.text)


def test_a_model_of_this_release_records_it_without_a_warning(logistic, caplog):
    import logging

    import sklearn

    _, path = logistic
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        loaded = load_model(ModelSpec(path=path, method="predict_proba"))
    assert loaded.library["trained_with"] == sklearn.__version__ and "written by" not in caplog.text


def test_a_wrapper_pickle_names_its_own_library(tmp_path, data):
    import lightgbm

    model = lightgbm.LGBMClassifier(n_estimators=5, verbose=-1).fit(data[FEATURES], binary_target(data))
    loaded = load_model(ModelSpec(path=save(model, tmp_path / "lgbm.joblib"), method="predict_proba"))
    assert loaded.library == {"name": "lightgbm", "trained_with": None, "installed": lightgbm.__version__}
