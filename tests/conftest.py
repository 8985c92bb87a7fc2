"""Shared fixtures: a clean database per test on SQLite and on PostgreSQL, jobs, models, data."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import joblib
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from pipeline.database.engines import make_engine, normalize_url

POSTGRES_URL = os.environ.get("PIPELINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("PIPELINE_REQUIRE_POSTGRES") == "1"
FEATURES = ["x1", "x2", "x3"]

_postgres_state: dict[str, str | None] = {}


def postgres_error() -> str | None:
    """None when the test server answers, else why not (checked once per session)."""
    if "error" not in _postgres_state:
        try:
            engine = create_engine(normalize_url(POSTGRES_URL), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _postgres_state["error"] = None
        except Exception as exc:  # any failure to connect means: no server for the tests
            _postgres_state["error"] = str(exc).strip().splitlines()[0]
    return _postgres_state["error"]


_report_lines: list[str] = []


def report(line: str) -> None:
    """A figure worth seeing in every run's summary (latencies, counts), not only on failure."""
    _report_lines.append(line)


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    for line in _report_lines:
        terminalreporter.write_line(line)
    error = _postgres_state.get("error")
    if error:
        terminalreporter.write_sep("!", f"PostgreSQL tests SKIPPED: no server at {POSTGRES_URL} ({error})",
                                   red=True, bold=True)


def _require_postgres() -> None:
    error = postgres_error()
    if error is None:
        return
    if REQUIRE_POSTGRES:
        pytest.fail(f"PIPELINE_REQUIRE_POSTGRES=1 but PostgreSQL at {POSTGRES_URL} does not answer: {error}")
    pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {error}")


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A URL whose connections work in a fresh, private schema, dropped afterwards."""
    _require_postgres()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs twice: on SQLite and on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


# -- data and models ------------------------------------------------------------

def customers_frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"customer_id": np.arange(1, n + 1), **{f: rng.normal(size=n) for f in FEATURES}})


def write_table(engine: Engine, name: str, frame: pd.DataFrame) -> None:
    """Create a source table the way a user's warehouse would hold it."""
    with engine.begin() as conn:
        conn.execute(text(f'DROP TABLE IF EXISTS "{name}"'))
    frame.to_sql(name, engine, index=False)


def train_model(path: Path, seed: int = 0, kind: str = "logistic") -> Path:
    """Fit a small classifier (or regressor) on generated data and save it with joblib."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    frame = customers_frame(300, seed=100 + seed)
    rng = np.random.default_rng(seed)
    y = (frame.x1 + 0.5 * frame.x2 + rng.normal(scale=0.5, size=len(frame))) > 0
    if kind == "logistic":
        model = LogisticRegression(C=0.1 + seed).fit(frame[FEATURES], y)
    else:
        model = LinearRegression().fit(frame[FEATURES], frame.x1 * (1 + seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    return path


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file into tmp_path/jobs; ``body`` is TOML, ``{model}`` expands to a trained model."""

    def write(body: str, name: str = "scores", seed: int = 0, kind: str = "logistic", model: object = None) -> Path:
        """``model``, when given, is saved as the job's model instead of a freshly trained one."""
        jobs = tmp_path / "jobs"
        if model is None:
            model = train_model(jobs / "models" / f"{name}.joblib", seed=seed, kind=kind)
        else:
            (jobs / "models").mkdir(parents=True, exist_ok=True)
            joblib.dump(model, jobs / "models" / f"{name}.joblib")
            model = jobs / "models" / f"{name}.joblib"
        path = jobs / f"{name}.toml"
        path.write_text(textwrap.dedent(body).replace("{model}", model.name), encoding="utf-8")
        return path

    return write


CUSTOMERS_JOB = """
    [domain]
    keys = ["customer_id"]
    query = "SELECT customer_id, x1, x2, x3 FROM customers"
    [model]
    path = "models/{model}"
    method = "predict_proba"
    [output]
    table = "scores"
"""

#: A users x items product domain over the tables :func:`write_users_items` makes.
PRODUCT_JOB = """
    [domain]
    keys = ["user_id", "item_id"]
    [[domain.product]]
    query = "SELECT user_id, x1 FROM users"
    [[domain.product]]
    query = "SELECT item_id, x2, x3 FROM items"
    [model]
    path = "models/{model}"
    method = "predict_proba"
    [output]
    table = "scores"
"""


def write_users_items(engine: Engine, users: int, items: int, seed: int = 0, first_item: int = 0) -> None:
    """Tables users (user_id, x1) and items (item_id, x2, x3) of random features, for PRODUCT_JOB."""
    rng = np.random.default_rng(seed)
    write_table(engine, "users", pd.DataFrame({"user_id": np.arange(users), "x1": rng.normal(size=users)}))
    write_table(engine, "items", pd.DataFrame({"item_id": np.arange(first_item, first_item + items),
                                               "x2": rng.normal(size=items), "x3": rng.normal(size=items)}))


SCRIPTED_JOB = CUSTOMERS_JOB.replace('method = "predict_proba"', 'method = "predict"')


def view_rows(engine: Engine, table: str = "scores", key: str = "customer_id") -> pd.DataFrame:
    """Everything the stable view serves, in key order."""
    with engine.connect() as conn:
        return pd.read_sql(text(f'SELECT * FROM "{table}" ORDER BY "{key}"'), conn)


def version_rows(engine: Engine, version: int, order: str = "customer_id", table: str = "scores") -> pd.DataFrame:
    """A version table's rows as the run wrote them: without the ``model_version`` column by which PostgreSQL
    serves it as a partition."""
    with engine.connect() as conn:
        frame = pd.read_sql(text(f'SELECT * FROM "{table}__v{version}" ORDER BY {order}'), conn)
    return frame.drop(columns=["model_version"], errors="ignore")


def reference_query(number: int, table: str = "scores") -> str:
    """Query ``number`` of sql/queries.sql (what applications copy), for ``table``, without its comments."""
    text_ = (Path(__file__).resolve().parent.parent / "sql" / "queries.sql").read_text()
    body = text_.split(f"-- {number}.")[1].split(f"-- {number + 1}.")[0]
    sql = "\n".join(line for line in body.splitlines()[1:] if not line.lstrip().startswith("--"))
    return sql.strip().rstrip(";").replace("churn_scores", table)


# -- MLflow registries ----------------------------------------------------------------

@pytest.fixture(scope="session")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables made once (MLflow's migrations take seconds); each test copies it."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@dataclass
class MlflowRegistry:
    """A private MLflow registry in a SQLite file, with one experiment; no server."""

    tracking_uri: str
    client: Any  # mlflow.MlflowClient, imported only by the tests that use a registry
    experiment: str
    monkeypatch: pytest.MonkeyPatch

    def log(self, log_model: Callable[[], Any]) -> Any:
        """``log_model()`` (an ``mlflow.<flavor>.log_model`` with ``registered_model_name``) in a run of its own.

        Models are logged the usual way, through the process's tracking URI; afterwards none is left, so a
        job's ``tracking_uri`` is what must find the registry.
        """
        import mlflow

        with self.monkeypatch.context() as patch:
            patch.setenv("MLFLOW_TRACKING_URI", self.tracking_uri)
            with mlflow.start_run(experiment_id=self.experiment):
                return log_model()


@pytest.fixture
def mlflow_registry(tmp_path: Path, empty_registry: Path, monkeypatch: pytest.MonkeyPatch) -> MlflowRegistry:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # whatever MLflow would write by default lands here, not in the repository
    # Not ./mlflow.db, MLflow's default: a run that ignored the job's tracking_uri would find no model.
    shutil.copy(empty_registry, tmp_path / "registry.db")
    tracking_uri = f"sqlite:///{tmp_path / 'registry.db'}"
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.create_experiment("models", artifact_location=(tmp_path / "artifacts").as_uri())
    return MlflowRegistry(tracking_uri, client, experiment, monkeypatch)


# -- child runs -------------------------------------------------------------------

def start_run(tmp_path: Path, db_url: str, pause: str, *args: str) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    """``pipeline run scores --force`` in a child process that pauses at phase ``pause``; its stderr lines."""
    env = {**os.environ, "PIPELINE_PAUSE_AT": pause}
    env.pop("PIPELINE_DATABASE_URL", None)
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "scores", "--force", "--db", db_url, *args],
                             cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    def pump() -> None:
        for line in child.stderr:
            lines.put(line)
        lines.put("")  # end of output

    threading.Thread(target=pump, daemon=True).start()
    return child, lines


def rest(lines: "queue.Queue[str]") -> str:
    """Everything the child printed after what was already read, up to its end."""
    out = []
    while (line := lines.get(timeout=60)) != "":
        out.append(line)
    return "".join(out)


def wait_for(lines: "queue.Queue[str]", marker: str, timeout: float = 60) -> str:
    """Read the child's lines up to the first that holds ``marker``, and return that one."""
    seen = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the run never printed {marker!r}; it printed: {''.join(seen)}") from None
        seen.append(line)
        if marker in line:
            return line
