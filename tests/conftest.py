"""Shared fixtures: a clean database per test on SQLite and on PostgreSQL (and on MariaDB, as a domain source),
job files, MLflow registries; the server checks and the summary lines. Helpers that are not fixtures live in
``helpers.py``."""

from __future__ import annotations

# isort: off
from blas import pin_batch_invariant_kernels

pin_batch_invariant_kernels()  # before anything loads numpy (see tests/blas.py)
# isort: on

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import joblib
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from pipeline.database.engines import make_engine, normalize_url

from helpers import MlflowRegistry, report_lines, train_model

POSTGRES_URL = os.environ.get("PIPELINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("PIPELINE_REQUIRE_POSTGRES") == "1"
_postgres_state: dict[str, str | None] = {}
MYSQL_URL = os.environ.get("PIPELINE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_MYSQL = os.environ.get("PIPELINE_REQUIRE_MYSQL") == "1"
_mysql_state: dict[str, str | None] = {}


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


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    for line in report_lines:
        terminalreporter.write_line(line)
    error = _postgres_state.get("error")
    if error:
        terminalreporter.write_sep("!", f"PostgreSQL tests SKIPPED: no server at {POSTGRES_URL} ({error})",
                                   red=True, bold=True)
    error = _mysql_state.get("error")
    if error:
        terminalreporter.write_sep("!", f"MySQL/MariaDB tests SKIPPED: no server at {MYSQL_URL} ({error})",
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
        yield f"{POSTGRES_URL}{separator}options=-c%20search_path%3D{schema}"  # libpq's own spelling
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg(postgresql_url: str) -> Iterator[Engine]:
    """An engine on :func:`postgresql_url`'s fresh schema."""
    engine = make_engine(postgresql_url)
    yield engine
    engine.dispose()


def mysql_error() -> str | None:
    """None when the MySQL/MariaDB test server answers, else why not (checked once per session)."""
    if "error" not in _mysql_state:
        try:
            engine = create_engine(normalize_url(MYSQL_URL), connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _mysql_state["error"] = None
        except Exception as exc:  # any failure to connect (or a missing driver) means: no server for the tests
            _mysql_state["error"] = str(exc).strip().splitlines()[0]
    return _mysql_state["error"]


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A URL of a fresh database on the MySQL/MariaDB test server, dropped afterwards; skipped without a server
    unless ``PIPELINE_REQUIRE_MYSQL=1``."""
    error = mysql_error()
    if error is not None:
        if REQUIRE_MYSQL:
            pytest.fail(f"PIPELINE_REQUIRE_MYSQL=1 but MySQL/MariaDB at {MYSQL_URL} does not answer: {error}")
        pytest.skip(f"no MySQL/MariaDB at {MYSQL_URL}: {error}")
    database = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalize_url(MYSQL_URL))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{database}`")
    try:
        yield make_url(MYSQL_URL).set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE `{database}`")
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'predictions.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs three times: on SQLite, on PostgreSQL and on MariaDB."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    """SQLite, then PostgreSQL: what MariaDB's reads are compared with."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()



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



@pytest.fixture(scope="session")
def empty_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables made once (MLflow's migrations take seconds); each test copies it."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


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





PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class PrivateServer:
    """A PostgreSQL server of one test's own, which the test may restart (never the machine's shared one)."""

    directory: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"),
                        "-l", str(self.directory / "log"), "-w", *args], check=True, capture_output=True)

    def restart(self) -> None:
        self.ctl("-m", "fast", "restart")


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    """initdb into a temporary folder as user postgres and start it on a free port; stopped and removed after."""
    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip("needs PostgreSQL 15's server binaries and runuser")
    directory = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    shutil.chown(directory, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PrivateServer(directory, port)
    subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "initdb"), "-D", str(directory / "data"),
                    "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    server.ctl("-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield server
    finally:
        server.ctl("-m", "immediate", "stop")
        shutil.rmtree(directory, ignore_errors=True)
