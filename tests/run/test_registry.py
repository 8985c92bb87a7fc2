"""Registry models ([model] uri = "models:/NAME@ALIAS"): a local MLflow registry in a SQLite file, no server."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import joblib
import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.models import infer_signature

from pipeline.cli import main
from pipeline.database import state
from pipeline.database.engines import make_engine
from pipeline.errors import ModelError, PipelineError
from pipeline.jobs import load_job
from pipeline.jobspec import ModelSpec
from pipeline.run.materialize import run_job
from pipeline.run.model import load_model

from helpers import FEATURES, MlflowRegistry, customers_frame, train_model, view_rows, write_table


@dataclass
class Registry:
    tracking_uri: str
    client: MlflowClient
    name: str
    estimators: dict[int, object]   # by registry version

    def model_file(self, version: int) -> Path:
        """The serialized estimator of a version, as MLflow stored it."""
        location = Path(self.client.get_model_version_download_uri(self.name, str(version)).removeprefix("file://"))
        return location / mlflow.models.Model.load(str(location)).flavors["sklearn"]["pickled_model"]


@pytest.fixture
def registry(tmp_path: Path, mlflow_registry: MlflowRegistry) -> Registry:
    """A private registry holding model 'churn' at versions 1 and 2 (two trainings), alias champion on 1."""
    sample = customers_frame(20)[FEATURES]
    estimators = {}
    for version, seed in ((1, 0), (2, 4)):
        estimator = joblib.load(train_model(tmp_path / "trained" / f"{seed}.joblib", seed=seed))
        info = mlflow_registry.log(lambda: mlflow.sklearn.log_model(
            estimator, name="model", registered_model_name="churn",
            signature=infer_signature(sample, estimator.predict_proba(sample)), pip_requirements=[]))
        assert int(info.registered_model_version) == version
        estimators[version] = estimator
    mlflow_registry.client.set_registered_model_alias("churn", "champion", "1")
    return Registry(mlflow_registry.tracking_uri, mlflow_registry.client, "churn", estimators)


def registry_job(registry: Registry, uri: str = "models:/churn@champion", extra: str = "") -> str:
    return f"""
        [domain]
        keys = ["customer_id"]
        query = "SELECT customer_id, x1, x2, x3 FROM customers"
        [model]
        uri = "{uri}"
        tracking_uri = "{registry.tracking_uri}"
        method = "predict_proba"
        {extra}
        [output]
        table = "scores"
    """


def recorded(engine, version: int) -> state.Version:
    with engine.connect() as conn:
        return state.get_version(conn, "scores", version)


def test_a_run_scores_with_the_version_the_alias_names_and_records_it(engine, write_job, registry):
    customers = customers_frame(200)
    write_table(engine, "customers", customers)
    job = load_job(write_job(registry_job(registry)))
    assert run_job(job, engine).version == 1
    first = view_rows(engine)
    np.testing.assert_allclose(first[["proba_false", "proba_true"]].to_numpy(),
                               registry.estimators[1].predict_proba(customers[FEATURES]), rtol=1e-12)
    v1 = recorded(engine, 1)
    run_id = registry.client.get_model_version("churn", "1").run_id
    assert (v1.model_path, v1.model_sha256) == ("models:/churn/1", sha256(registry.model_file(1)))
    assert v1.model_class == "sklearn.linear_model._logistic.LogisticRegression"
    assert {k: v1.model_source[k] for k in ("uri", "name", "version", "alias", "run_id")} == dict(
        uri="models:/churn@champion", name="churn", version=1, alias="champion", run_id=run_id)
    assert json.loads(v1.model_source["signature"]["inputs"])[0]["name"] == "x1"

    registry.client.set_registered_model_alias("churn", "champion", "2")
    assert run_job(job, engine).version == 2  # a new model digest: not skipped as done
    second = view_rows(engine)
    np.testing.assert_allclose(second[["proba_false", "proba_true"]].to_numpy(),
                               registry.estimators[2].predict_proba(customers[FEATURES]), rtol=1e-12)
    assert not np.allclose(first.proba_true, second.proba_true)
    v2 = recorded(engine, 2)
    assert (v2.model_path, v2.model_source["version"], v2.model_source["alias"]) == ("models:/churn/2", 2, "champion")
    assert v2.model_source["run_id"] != run_id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_numbered_version_and_the_sha256_pin(registry):
    spec = ModelSpec(uri="models:/churn/2", tracking_uri=registry.tracking_uri, method="predict_proba")
    model = load_model(spec)
    assert (model.location, model.source.version, model.source.alias) == ("models:/churn/2", 2, None)
    assert model.features == tuple(FEATURES) and model.outputs == ("proba_false", "proba_true")
    rows = customers_frame(5)
    pd.testing.assert_frame_equal(model.score(rows), pd.DataFrame(
        registry.estimators[2].predict_proba(rows[FEATURES]), columns=["proba_false", "proba_true"]))
    pin = sha256(registry.model_file(2))
    assert model.sha256 == pin
    assert load_model(ModelSpec(**{**vars(spec), "sha256": pin})).sha256 == pin
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(**{**vars(spec), "sha256": "0" * 64}))
    assert str(info.value) == f"models:/churn/2: sha256 is {pin}, but the job pins {'0' * 64}; refusing to load it"


@pytest.mark.parametrize("uri, says", [
    ("models:/churn@gone", "Registered model alias gone not found"),
    ("models:/churn/9", "Model Version (name=churn, version=9) not found"),
    ("models:/nothing@champion", "Registered Model with name=nothing not found"),
])
def test_what_the_registry_does_not_hold_is_a_model_error_naming_the_uri(registry, uri, says):
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(uri=uri, tracking_uri=registry.tracking_uri, method="predict_proba"))
    assert str(info.value).startswith(f"{uri}: cannot resolve it in the MLflow registry: ")
    assert says in str(info.value) and "\n" not in str(info.value)


def test_without_mlflow_a_registry_model_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets when it is not installed
    with pytest.raises(ModelError) as info:
        load_model(ModelSpec(uri="models:/churn@champion", method="predict"))
    assert str(info.value) == ("models:/churn@champion: registry models need MLflow: "
                               "pip install 'prediction-pipeline[mlflow]'")
    assert isinstance(info.value, PipelineError)


def test_plan_and_versions_show_where_the_model_came_from(sqlite_url, write_job, registry):
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(10))
    engine.dispose()
    write_job(registry_job(registry))
    run_id = registry.client.get_model_version("churn", "1").run_id
    runner = CliRunner()
    result = runner.invoke(main, ["--quiet", "plan", "scores", "--db", sqlite_url])
    assert result.exit_code == 0, result.output
    assert f"source:    models:/churn/1 (from models:/churn@champion), run {run_id}\n" in result.output
    assert runner.invoke(main, ["--quiet", "run", "scores", "--db", sqlite_url]).exit_code == 0
    result = runner.invoke(main, ["--quiet", "versions", "scores", "--db", sqlite_url])
    assert result.output.splitlines()[0].split()[:6] == ["version", "status", "logical_date", "rows",
                                                         "model_sha256", "model"]
    assert result.output.splitlines()[1].split()[6] == "models:/churn/1"
