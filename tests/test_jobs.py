"""Job files: every documented key read into a Job, and one exact message per mistake."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import JobFileError, PipelineError
from pipeline.jobs import find_job, iter_jobs, load_job
from pipeline.jobspec import (DEFAULT_CHUNK_SIZE, DomainSpec, ExecutorSpec, Factor, Job, ModelSpec, OutputSpec,
                              with_executor)

SHA = "0123456789abcdef" * 4


def q(value: str) -> str:
    """A TOML basic string holding ``value`` (JSON strings are valid TOML for these values)."""
    return json.dumps(value)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    """tmp_path/jobs with a model file and a domain CSV next to where the job files go."""
    jobs = tmp_path / "jobs"
    (jobs / "models").mkdir(parents=True)
    (jobs / "models" / "m.joblib").write_bytes(b"load_job only checks that the model file exists")
    (jobs / "data").mkdir()
    (jobs / "data" / "months.csv").write_text("month\n2026-01\n2026-02\n", encoding="utf-8")
    return jobs


def write(directory: Path, body: str, stem: str = "scores") -> Path:
    path = directory / f"{stem}.toml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


# The sections of a minimal valid job; a bad case replaces or drops some of them.
BASE = {
    "top": "",
    "domain": 'keys = ["id"]\nquery = "SELECT id, x1 FROM t"',
    "model": 'path = "models/m.joblib"',
    "output": 'table = "scores"',
}


def compose(top: str | None = None, domain: str | None = None, model: str | None = None,
            output: str | None = None, drop: tuple[str, ...] = ()) -> str:
    given = {"top": top, "domain": domain, "model": model, "output": output}
    parts = []
    for section, default in BASE.items():
        if section in drop:
            continue
        text = given[section] if given[section] is not None else default
        parts.append(text if section == "top" else f"[{section}]\n{text}")
    return "\n".join(parts) + "\n"


# -- valid files ---------------------------------------------------------------------

def test_executor_section_and_overrides(jobs_dir):
    body = compose(output='table = "scores"\n[executor]\nkind = "dask"\naddress = "${SCHED}"\npartitions = 16')
    job = load_job(write(jobs_dir, body), environ={"SCHED": "tcp://10.0.0.5:8786"})
    assert job.executor == ExecutorSpec("dask", "tcp://10.0.0.5:8786", None, 16)
    assert with_executor(job, kind="local").executor.kind == "local"
    assert with_executor(job, workers=None) is job  # None keeps the file's setting
    plain = load_job(write(jobs_dir, compose()), environ={})
    assert plain.executor == ExecutorSpec()  # local: the default
    assert with_executor(plain, workers=3).executor == ExecutorSpec("dask", workers=3)  # a worker count means dask


def test_minimal_job_gets_the_defaults(jobs_dir):
    path = write(jobs_dir, compose(), stem="nightly_scores")
    job = load_job(path, environ={})
    assert job == Job(
        name="nightly_scores",
        path=path.resolve(),
        domain=DomainSpec(keys=("id",), factors=(Factor(query="SELECT id, x1 FROM t"),),
                          chunk_size=DEFAULT_CHUNK_SIZE),
        model=ModelSpec(path=(jobs_dir / "models" / "m.joblib").resolve(), method="predict"),
        output=OutputSpec(table="scores"),
    )
    assert (job.target, job.schedule, job.timezone, job.description) == (None, None, "UTC", "")
    assert job.model.sha256 is None and job.model.features is None
    assert job.domain.factors[0].source is None and job.domain.chunk_size == 100_000


def test_full_job_file(jobs_dir):
    body = f"""
        name = "churn_nightly"
        description = "Churn probability per customer and month"
        schedule = "30 2 * * 1-5"
        timezone = "Europe/Paris"
        target = "postgresql://${{DB_USER}}@${{DB_HOST:-localhost}}:${{DB_PORT:-5432}}/${{DB_NAME:-warehouse}}"

        [domain]
        keys = ["customer_id", "month"]
        source = "sqlite:///${{DATA_DIR}}/source.db"
        chunk_size = 500

        [[domain.product]]
        query = "SELECT customer_id FROM customers"

        [[domain.product]]
        file = "data/months.csv"

        [[domain.product]]
        query = "SELECT 1 AS one"
        source = "${{OTHER_DB:-sqlite:///other.db}}"

        [model]
        path = "models/m.joblib"
        sha256 = "{SHA.upper()}"
        method = "predict_proba"
        features = ["tenure", "charges"]

        [output]
        table = "churn_scores"
    """
    environ = {"DB_USER": "app", "DB_NAME": "prod", "DATA_DIR": "/srv/data"}
    path = write(jobs_dir, body, stem="other_stem")
    job = load_job(path, environ=environ)

    assert job.name == "churn_nightly"
    assert job.path == path.resolve()
    assert job.description == "Churn probability per customer and month"
    assert job.schedule == "30 2 * * 1-5"
    assert job.timezone == "Europe/Paris"
    # ${VAR} from environ, ${VAR:-default} falls back when VAR is unset, and is ignored when set.
    assert job.target == "postgresql://app@localhost:5432/prod"
    assert job.domain == DomainSpec(
        keys=("customer_id", "month"),
        factors=(
            Factor(query="SELECT customer_id FROM customers", source="sqlite:////srv/data/source.db"),
            Factor(file=(jobs_dir / "data" / "months.csv").resolve()),
            Factor(query="SELECT 1 AS one", source="sqlite:///other.db"),
        ),
        chunk_size=500,
    )
    assert job.model == ModelSpec(path=(jobs_dir / "models" / "m.joblib").resolve(), method="predict_proba",
                                  sha256=SHA, features=("tenure", "charges"))
    assert job.output == OutputSpec(table="churn_scores")


@pytest.mark.parametrize("uri", ["models:/churn@champion", "models:/churn/3", "models:/main.ml.churn@best-1"])
def test_a_registry_model(jobs_dir, uri):
    model = f'uri = "{uri}"\nmethod = "predict_proba"\nsha256 = "{SHA}"\ntracking_uri = "${{MLFLOW_AT}}/x"'
    job = load_job(write(jobs_dir, compose(model=model)), environ={"MLFLOW_AT": "http://mlflow:5000"})
    assert job.model == ModelSpec(uri=uri, tracking_uri="http://mlflow:5000/x", method="predict_proba", sha256=SHA)
    assert job.model.location == uri


@pytest.mark.parametrize("name, given, expected", [
    ("m.joblib", None, "joblib"), ("m.pkl", None, "joblib"), ("m.skops", None, "skops"), ("m.onnx", None, "onnx"),
    ("m.ubj", None, "xgboost"), ("m.json", "xgboost", "xgboost"), ("m.txt", "lightgbm", "lightgbm"),
    ("m.txt", None, "joblib"),  # LightGBM's .txt and XGBoost's .json must say so: the suffix is not enough
    ("model.bin", "onnx", "onnx"),
])
def test_the_model_format_defaults_by_suffix(jobs_dir, name, given, expected):
    (jobs_dir / "models" / name).write_bytes(b"load_job only checks that the model file exists")
    model = f'path = "models/{name}"' + ("" if given is None else f'\nformat = "{given}"')
    job = load_job(write(jobs_dir, compose(model=model)), environ={})
    assert job.model == ModelSpec(path=(jobs_dir / "models" / name).resolve(), format=expected)


@pytest.fixture
def mlflow_dir(jobs_dir: Path) -> Path:
    """An MLflow model directory (MLmodel is all load_job looks for)."""
    directory = jobs_dir / "models" / "churn"
    directory.mkdir()
    (directory / "MLmodel").write_text("flavors: {}\n", encoding="utf-8")
    return directory


def test_an_mlflow_model_directory(jobs_dir, mlflow_dir):
    for model in ('path = "models/churn"', 'path = "models/churn"\nformat = "mlflow"'):
        job = load_job(write(jobs_dir, compose(model=model)), environ={})
        assert job.model == ModelSpec(path=mlflow_dir.resolve(), format="mlflow")


def test_an_mlflow_model_directory_takes_no_other_format(jobs_dir, mlflow_dir):
    path = write(jobs_dir, compose(model='path = "models/churn"\nformat = "joblib"'))
    with pytest.raises(JobFileError) as info:
        load_job(path, environ={})
    assert str(info.value) == f"{path}: model.format: models/churn is an MLflow model directory, so format must be 'mlflow'"


def test_change_driven_top_up_settings(jobs_dir):
    changed = "SELECT id, x1 FROM t WHERE updated_at >= :since"
    path = write(jobs_dir, compose(domain=BASE["domain"] + f"\nchanged = {q(changed)}\n"
                                   'removed = "SELECT id FROM gone WHERE at >= :since"\n'
                                   "full_every = 24\nincremental = true"))
    domain = load_job(path, environ={}).domain
    assert (domain.changed, domain.removed, domain.full_every, domain.incremental) == (
        changed, "SELECT id FROM gone WHERE at >= :since", 24, True)
    plain = load_job(write(jobs_dir, compose(), "plain"), environ={}).domain
    assert (plain.changed, plain.removed, plain.full_every, plain.incremental) == (None, None, None, False)


def test_domain_from_a_file(jobs_dir):
    job = load_job(write(jobs_dir, compose(domain='keys = ["month"]\nfile = "data/months.csv"\nchunk_size = 1')),
                   environ={})
    assert job.domain == DomainSpec(("month",), (Factor(file=(jobs_dir / "data" / "months.csv").resolve()),), 1)


def test_domain_query_on_its_own_source(jobs_dir):
    domain = 'keys = ["id"]\nquery = "SELECT id FROM t"\nsource = "${SRC:-sqlite:///default.db}"'
    path = write(jobs_dir, compose(domain=domain))
    assert load_job(path, environ={"SRC": "sqlite:///set.db"}).domain.factors == (
        Factor(query="SELECT id FROM t", source="sqlite:///set.db"),)
    assert load_job(path, environ={}).domain.factors == (
        Factor(query="SELECT id FROM t", source="sqlite:///default.db"),)


def test_a_product_factor_source_overrides_the_domain_source(jobs_dir):
    domain = """keys = ["a", "b"]
source = "sqlite:///domain.db"
[[domain.product]]
query = "SELECT a FROM x"
source = "sqlite:///own.db"
[[domain.product]]
query = "SELECT b FROM y"
"""
    job = load_job(write(jobs_dir, compose(domain=domain)), environ={})
    assert [f.source for f in job.domain.factors] == ["sqlite:///own.db", "sqlite:///domain.db"]


def test_expansion_leaves_other_dollar_signs_alone(jobs_dir):
    path = write(jobs_dir, compose(top='target = "postgresql://u:pa$$w0rd@${HOST}/db?x=$HOME"'))
    assert load_job(path, environ={"HOST": "db.internal"}).target == "postgresql://u:pa$$w0rd@db.internal/db?x=$HOME"


def test_expansion_is_not_recursive(jobs_dir):
    path = write(jobs_dir, compose(top='target = "${A}"'))
    assert load_job(path, environ={"A": "${B}", "B": "no"}).target == "${B}"


def test_environ_defaults_to_the_process_environment(jobs_dir, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_TARGET_URL", "sqlite:///from-env.db")
    path = write(jobs_dir, compose(top='target = "${PIPELINE_TEST_TARGET_URL}"'))
    assert load_job(path).target == "sqlite:///from-env.db"


def test_default_applies_when_the_variable_is_set_but_empty(jobs_dir):
    path = write(jobs_dir, compose(top='target = "${DB_URL:-sqlite:///fallback.db}"'))
    assert load_job(path, environ={"DB_URL": ""}).target == "sqlite:///fallback.db"


def test_relative_paths_resolve_against_the_job_file_not_the_working_directory(jobs_dir, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    domain = 'keys = ["month"]\nfile = "data/months.csv"'
    write(jobs_dir, compose(domain=domain))
    job = load_job(Path("..") / "jobs" / "scores.toml", environ={})
    assert job.path == (jobs_dir / "scores.toml").resolve() and job.path.is_absolute()
    assert job.model.path == (jobs_dir / "models" / "m.joblib").resolve()
    assert job.domain.factors[0].file == (jobs_dir / "data" / "months.csv").resolve()
    assert job.model.path.is_absolute() and job.domain.factors[0].file.is_absolute()


def test_absolute_paths_are_kept(jobs_dir, tmp_path):
    model = tmp_path / "abs_model.joblib"
    model.write_bytes(b"x")
    data = tmp_path / "abs.parquet"
    data.write_bytes(b"x")
    path = write(jobs_dir, compose(domain=f'keys = ["id"]\nfile = {q(str(data))}', model=f"path = {q(str(model))}"))
    job = load_job(path, environ={})
    assert job.model.path == model and job.domain.factors[0].file == data


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq", ".CSV"])
def test_domain_file_suffixes(jobs_dir, suffix):
    (jobs_dir / f"d{suffix}").write_bytes(b"id\n1\n")
    job = load_job(write(jobs_dir, compose(domain=f'keys = ["id"]\nfile = "d{suffix}"')), environ={})
    assert job.domain.factors[0].file.name == f"d{suffix}"


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_every_method(jobs_dir, method):
    job = load_job(write(jobs_dir, compose(model=f'path = "models/m.joblib"\nmethod = "{method}"')), environ={})
    assert job.model.method == method


def test_keys_may_use_names_reserved_for_tables(jobs_dir):
    """pipeline_ and '__' are reserved in table names only; key columns just need to be safe identifiers."""
    job = load_job(write(jobs_dir, compose(domain='keys = ["pipeline_id", "a__b"]\nquery = "SELECT 1"')), environ={})
    assert job.domain.keys == ("pipeline_id", "a__b")


@pytest.mark.parametrize("section, documented", [
    pytest.param("", ["name", "description", "schedule", "timezone", "target", "domain", "model", "output"],
                 id="top-level"),
    pytest.param("domain", ["keys", "query", "source", "file", "product", "chunk_size"], id="domain"),
    pytest.param("model", ["path", "sha256", "method", "features"], id="model"),
    pytest.param("output", ["table"], id="output"),
])
def test_an_unknown_key_message_lists_the_documented_keys(jobs_dir, section, documented):
    kwargs = {"top": "zzz_unknown = 1"} if not section else {section: BASE[section] + "\nzzz_unknown = 1"}
    path = write(jobs_dir, compose(**kwargs))
    with pytest.raises(JobFileError) as info:
        load_job(path, environ={})
    key = f"{section}.zzz_unknown" if section else "zzz_unknown"
    prefix = f"{path}: {key}: unknown key (expected one of: "
    message = str(info.value)
    assert message.startswith(prefix) and message.endswith(")"), message
    listed = message[len(prefix):-1].split(", ")
    assert listed == sorted(listed)
    assert set(documented) <= set(listed)


# -- one message per mistake ----------------------------------------------------------

TOO_LONG_COLUMN = "c" * 64
TOO_LONG_TABLE = "t" * 51

BAD = [
    # (id, kwargs for compose, key the message names, what it says)
    ("unknown-top-level-key", dict(top='colour = "blue"'), "colour",
     "unknown key (expected one of: "),
    ("missing-domain", dict(drop=("domain",)), "[domain]", "section is missing"),
    ("missing-model", dict(drop=("model",)), "[model]", "section is missing"),
    ("missing-output", dict(drop=("output",)), "[output]", "section is missing"),
    ("model-not-a-table", dict(top='model = "m.joblib"', drop=("model",)), "model", "must be a table ([model])"),
    ("missing-output-table", dict(output=""), "output.table", "is required"),
    ("empty-output-table", dict(output='table = "  "'), "output.table", "must not be empty"),
    ("publish-timeout-zero", dict(output='table = "scores"\npublish_timeout = 0'), "output.publish_timeout",
     "must be at least 1 (seconds)"),
    ("publish-timeout-text", dict(output='table = "scores"\npublish_timeout = "10m"'), "output.publish_timeout",
     "integer, got str"),
    ("grant-select-text", dict(output='table = "scores"\ngrant_select = "app_reader"'), "output.grant_select",
     "must be an array, got str"),
    ("grant-select-number", dict(output='table = "scores"\ngrant_select = [1]'), "output.grant_select",
     "must be an array of role names, got 1"),
    ("grant-select-not-identifier", dict(output='table = "scores"\ngrant_select = ["app reader"]'),
     "output.grant_select", "'app reader' is not a safe SQL identifier"),
    ("grant-select-public", dict(output='table = "scores"\ngrant_select = ["public"]'), "output.grant_select",
     "PUBLIC is not a role"),
    ("grant-select-twice", dict(output='table = "scores"\ngrant_select = ["a", "b", "a"]'), "output.grant_select",
     "names a role twice"),
    ("unknown-model-key", dict(model='path = "models/m.joblib"\nversion = 3'), "model.version",
     "unknown key (expected one of: "),
    ("unknown-domain-key", dict(domain='keys = ["id"]\nquery = "SELECT 1"\ntable = "t"'), "domain.table",
     "unknown key (expected one of: "),
    ("unknown-output-key", dict(output='table = "scores"\nschema = "s"'), "output.schema",
     "unknown key (expected one of: "),
    ("unknown-product-key",
     dict(domain='keys = ["id"]\n[[domain.product]]\nquery = "SELECT 1"\nchunk_size = 3'),
     "domain.product[0].chunk_size", "unknown key (expected one of: file, query, source)"),
    # wrong types
    ("chunk-size-string", dict(domain='keys = ["id"]\nquery = "SELECT 1"\nchunk_size = "10"'),
     "domain.chunk_size", "integer, got str"),
    ("chunk-size-bool", dict(domain='keys = ["id"]\nquery = "SELECT 1"\nchunk_size = true'),
     "domain.chunk_size", "integer, got bool"),
    ("chunk-size-float", dict(domain='keys = ["id"]\nquery = "SELECT 1"\nchunk_size = 10.0'),
     "domain.chunk_size", "integer, got float"),
    ("chunk-size-zero", dict(domain='keys = ["id"]\nquery = "SELECT 1"\nchunk_size = 0'),
     "domain.chunk_size", "must be at least 1"),
    ("keys-string", dict(domain='keys = "id"\nquery = "SELECT 1"'), "domain.keys", "array, got str"),
    ("keys-not-strings", dict(domain='keys = ["id", 2]\nquery = "SELECT 1"'), "domain.keys",
     "must be a list of strings, got 2"),
    ("keys-missing", dict(domain='query = "SELECT 1"'), "domain.keys", "is required"),
    ("name-int", dict(top="name = 5"), "name", "string, got int"),
    ("name-unsafe", dict(top='name = "my job"'), "name", "'my job' may hold only letters, digits, '_', '.' and '-'"),
    ("description-blank", dict(top='description = ""'), "description", "must not be empty"),
    ("query-not-string", dict(domain='keys = ["id"]\nquery = ["SELECT 1"]'), "domain.query", "string, got list"),
    ("model-path-int", dict(model="path = 1"), "model.path", "string, got int"),
    ("model-path-missing", dict(model='method = "predict"'), "model", "needs exactly one of 'path' or 'uri'"),
    ("features-string", dict(model='path = "models/m.joblib"\nfeatures = "x1"'), "model.features",
     "array, got str"),
    ("product-not-array", dict(domain='keys = ["id"]\nproduct = "x"'), "domain.product", "array, got str"),
    # schedule and timezone
    ("cron-minute-61", dict(top='schedule = "61 * * * *"'), "schedule",
     "not a valid cron expression '61 * * * *'"),
    ("cron-fields", dict(top='schedule = "* * *"'), "schedule",
     "not a valid cron expression '* * *': expected 5 fields"),
    ("unknown-timezone", dict(top='timezone = "Mars/Olympus"'), "timezone", "unknown time zone 'Mars/Olympus'"),
    ("timezone-path", dict(top='timezone = "../etc/passwd"'), "timezone", "unknown time zone '../etc/passwd'"),
    # files
    ("missing-model-file", dict(model='path = "models/missing.joblib"'), "model.path",
     "file not found: models/missing.joblib"),
    ("model-path-is-a-directory", dict(model='path = "models"'), "model.path",
     "models is a directory, but not an MLflow model (no MLmodel in it)"),
    ("model-format-unknown", dict(model='path = "models/m.joblib"\nformat = "pickle"'), "model.format",
     "must be one of joblib, skops, lightgbm, xgboost, onnx, mlflow, got 'pickle'"),
    ("model-format-mlflow-file", dict(model='path = "models/m.joblib"\nformat = "mlflow"'), "model.format",
     "'mlflow' takes an MLflow model directory (holding MLmodel), not a file"),
    ("model-trusted-not-skops", dict(model='path = "models/m.joblib"\nformat = "onnx"\ntrusted = ["a.B"]'),
     "model.trusted", "goes with format = 'skops', not 'onnx' (only skops loads just the types a job trusts)"),
    ("missing-domain-file", dict(domain='keys = ["id"]\nfile = "data/missing.csv"'), "domain.file",
     "file not found: data/missing.csv"),
    ("domain-file-suffix", dict(domain='keys = ["id"]\nfile = "models/m.joblib"'), "domain.file",
     "must end in .csv or .parquet: models/m.joblib"),
    ("missing-product-file", dict(domain='keys = ["id"]\n[[domain.product]]\nfile = "nope.csv"'),
     "domain.product[0].file", "file not found: nope.csv"),
    # the shape of the domain
    ("query-and-file", dict(domain='keys = ["id"]\nquery = "SELECT 1"\nfile = "data/months.csv"'), "domain",
     "needs exactly one of 'query' or 'file'"),
    ("neither-query-nor-file", dict(domain='keys = ["id"]\nchunk_size = 5'), "domain",
     "needs exactly one of 'query' or 'file'"),
    ("file-with-source", dict(domain='keys = ["id"]\nfile = "data/months.csv"\nsource = "sqlite:///x.db"'),
     "domain.source", "goes with 'query', not with 'file'"),
    ("product-with-query", dict(domain='keys = ["id"]\nquery = "SELECT 1"\n[[domain.product]]\nquery = "SELECT 2"'),
     "domain.query", "cannot be combined with [[domain.product]]"),
    ("product-with-file",
     dict(domain='keys = ["id"]\nfile = "data/months.csv"\n[[domain.product]]\nquery = "SELECT 2"'),
     "domain.file", "cannot be combined with [[domain.product]]"),
    ("product-empty", dict(domain='keys = ["id"]\nproduct = []'), "domain.product", "must list at least one factor"),
    ("product-item-not-a-table", dict(domain='keys = ["id"]\nproduct = ["SELECT 1"]'), "domain.product[0]",
     "must be a table ([[domain.product]])"),
    ("product-item-neither",
     dict(domain='keys = ["id"]\n[[domain.product]]\nquery = "SELECT 1"\n[[domain.product]]\nsource = "sqlite://"'),
     "domain.product[1]", "needs exactly one of 'query' or 'file'"),
    ("product-file-with-source",
     dict(domain='keys = ["id"]\n[[domain.product]]\nfile = "data/months.csv"\nsource = "sqlite://"'),
     "domain.product[0].source", "goes with 'query', not with 'file'"),
    # key columns
    ("keys-empty", dict(domain='keys = []\nquery = "SELECT 1"'), "domain.keys", "must list at least one column"),
    ("keys-duplicate", dict(domain='keys = ["id", "month", "id"]\nquery = "SELECT 1"'), "domain.keys",
     "lists a column twice"),
    ("keys-injection", dict(domain=f'keys = [{q("churn; DROP TABLE x")}]\nquery = "SELECT 1"'), "domain.keys",
     "'churn; DROP TABLE x' is not a safe SQL identifier"),
    ("keys-quoted-space", dict(domain=f'keys = [{q(chr(34) + "a b" + chr(34))}]\nquery = "SELECT 1"'),
     "domain.keys", "'\"a b\"' is not a safe SQL identifier"),
    ("keys-leading-digit", dict(domain='keys = ["1abc"]\nquery = "SELECT 1"'), "domain.keys",
     "'1abc' is not a safe SQL identifier"),
    ("keys-too-long", dict(domain=f'keys = ["{TOO_LONG_COLUMN}"]\nquery = "SELECT 1"'), "domain.keys",
     "is longer than 63 characters"),
    ("features-unsafe", dict(model='path = "models/m.joblib"\nfeatures = ["x 1"]'), "model.features",
     "'x 1' is not a safe SQL identifier"),
    ("features-empty", dict(model='path = "models/m.joblib"\nfeatures = []'), "model.features",
     "must list at least one column"),
    ("features-duplicate", dict(model='path = "models/m.joblib"\nfeatures = ["x", "x"]'), "model.features",
     "lists a column twice"),
    # output table names
    ("table-injection", dict(output=f"table = {q('churn; DROP TABLE x')}"), "output.table",
     "'churn; DROP TABLE x' is not a safe SQL identifier"),
    ("table-quoted-space", dict(output="table = '\"a b\"'"), "output.table",
     "'\"a b\"' is not a safe SQL identifier"),
    ("table-leading-digit", dict(output='table = "1abc"'), "output.table", "'1abc' is not a safe SQL identifier"),
    ("table-reserved-prefix", dict(output='table = "pipeline_scores"'), "output.table",
     "names starting with 'pipeline_' are the pipeline's own"),
    ("table-double-underscore", dict(output='table = "scores__v2"'), "output.table",
     "'__' is reserved for version tables"),
    ("table-too-long", dict(output=f'table = "{TOO_LONG_TABLE}"'), "output.table",
     "is longer than 50 characters (room is kept for version suffixes)"),
    # environment variables
    ("target-unset-variable", dict(top='target = "postgresql://${DB_HOST}/db"'), "target",
     "environment variable DB_HOST is not set"),
    ("domain-source-unset-variable", dict(domain='keys = ["id"]\nquery = "SELECT 1"\nsource = "${SRC_URL}"'),
     "domain.source", "environment variable SRC_URL is not set"),
    ("product-source-unset-variable",
     dict(domain='keys = ["id"]\n[[domain.product]]\nquery = "SELECT 1"\nsource = "${SRC_URL}"'),
     "domain.product[0].source", "environment variable SRC_URL is not set"),
    # model pin and method
    ("sha256-short", dict(model='path = "models/m.joblib"\nsha256 = "abc123"'), "model.sha256",
     "must be 64 hexadecimal digits"),
    ("sha256-not-hex", dict(model=f'path = "models/m.joblib"\nsha256 = "{"g" * 64}"'), "model.sha256",
     "must be 64 hexadecimal digits"),
    ("sha256-too-long", dict(model=f'path = "models/m.joblib"\nsha256 = "{SHA}0"'), "model.sha256",
     "must be 64 hexadecimal digits"),
    ("sha256-prefixed", dict(model=f'path = "models/m.joblib"\nsha256 = "sha256:{SHA}"'), "model.sha256",
     "must be 64 hexadecimal digits"),
    ("method-unknown", dict(model='path = "models/m.joblib"\nmethod = "predict_log_proba"'), "model.method",
     "must be one of predict, predict_proba, decision_function, got 'predict_log_proba'"),
    ("method-case", dict(model='path = "models/m.joblib"\nmethod = "Predict"'), "model.method",
     "must be one of predict, predict_proba, decision_function, got 'Predict'"),
    # top-k
    ("topk-alone", dict(output='table = "scores"\ntop_k = 3'), "output.top_k",
     "needs group_by (key columns) and rank_by (an output column)"),
    ("topk-zero", dict(output='table = "scores"\ntop_k = 0\ngroup_by = ["id"]\nrank_by = "score"'), "output.top_k",
     "must be at least 1"),
    ("topk-all-keys", dict(output='table = "scores"\ntop_k = 3\ngroup_by = ["id"]\nrank_by = "score"'),
     "output.group_by", "must be some, not all, of the domain keys (id)"),
    ("rank-without-topk", dict(output='table = "scores"\nrank_by = "score"'), "output.rank_by", "goes with top_k"),
    # registry models
    ("model-path-and-uri", dict(model='path = "models/m.joblib"\nuri = "models:/churn@champion"'), "model",
     "needs exactly one of 'path' or 'uri'"),
    ("model-uri-not-models", dict(model='uri = "runs:/abc/model"'), "model.uri",
     "must be models:/NAME@ALIAS or models:/NAME/VERSION, got 'runs:/abc/model'"),
    ("model-uri-stage", dict(model='uri = "models:/churn/Production"'), "model.uri",
     "must be models:/NAME@ALIAS or models:/NAME/VERSION, got 'models:/churn/Production'"),
    ("model-uri-int", dict(model="uri = 3"), "model.uri", "string, got int"),
    ("model-uri-with-format", dict(model='uri = "models:/churn/3"\nformat = "skops"'), "model.format",
     "goes with 'path' (the registry records how its model was saved)"),
    ("tracking-uri-with-path", dict(model='path = "models/m.joblib"\ntracking_uri = "sqlite:///m.db"'),
     "model.tracking_uri", "goes with 'uri', not with 'path'"),
    ("tracking-uri-unset-variable", dict(model='uri = "models:/churn@champion"\ntracking_uri = "${MLFLOW_AT}"'),
     "model.tracking_uri", "environment variable MLFLOW_AT is not set"),
    # executor
    ("executor-kind", dict(output='table = "scores"\n[executor]\nkind = "ray"'), "executor.kind",
     "must be one of local, dask, got 'ray'"),
    ("executor-workers", dict(output='table = "scores"\n[executor]\nworkers = 0'), "executor.workers",
     "must be at least 1"),
    ("executor-partitions", dict(output='table = "scores"\n[executor]\npartitions = "8"'), "executor.partitions",
     "must be an integer, got str"),
    ("executor-unknown", dict(output='table = "scores"\n[executor]\nthreads = 2'), "executor.threads",
     "unknown key (expected one of: address, kind, partitions, workers)"),
    # change-driven top-ups
    ("removed-without-changed", dict(domain=BASE["domain"] + '\nremoved = "SELECT id FROM gone"'), "domain.removed",
     "goes with domain.changed (the query of the rows changed since :since)"),
    ("full-every-without-changed", dict(domain=BASE["domain"] + "\nfull_every = 3"), "domain.full_every",
     "goes with domain.changed"),
    ("incremental-without-changed", dict(domain=BASE["domain"] + "\nincremental = true"), "domain.incremental",
     "goes with domain.changed"),
    ("changed-with-top-k", dict(domain='keys = ["id", "g"]\nquery = "SELECT id, g, x1 FROM t"\n'
                                       'changed = "SELECT id, g, x1 FROM t WHERE t.at > :since"',
                                output='table = "scores"\ntop_k = 2\ngroup_by = ["g"]\nrank_by = "p"'),
     "domain.changed", "cannot go with output.top_k (a changed row moves its whole group, so every run is a full one)"),
    ("changed-of-a-file", dict(domain='keys = ["month"]\nfile = "data/months.csv"\nchanged = "SELECT 1"'),
     "domain.changed", "needs a domain of one query (not a file nor [[domain.product]])"),
    ("changed-empty", dict(domain=BASE["domain"] + '\nchanged = " "'), "domain.changed", "must not be empty"),
    ("changed-with-exclude", dict(domain=BASE["domain"] + '\nchanged = "SELECT id, x1 FROM t"\n'
                                                         'exclude = "SELECT id FROM banned"'),
     "domain.exclude", "cannot go with domain.changed: a top-up reads only the changed rows"),
    ("exclude-unknown-key", dict(domain=BASE["domain"] + '\nexclude = { query = "SELECT id FROM banned", x = 1 }'),
     "domain.exclude.x", "unknown key"),
    ("include-a-key", dict(output='table = "scores"\ninclude = ["id"]'), "output.include",
     "id is a key, which every version holds already"),
    ("full-every-zero", dict(domain=BASE["domain"] + '\nchanged = "SELECT id, x1 FROM t"\nfull_every = 0'),
     "domain.full_every", "must be at least 1"),
    ("incremental-on-dask", dict(domain=BASE["domain"] + '\nchanged = "SELECT id, x1 FROM t"\nincremental = true',
                                 output='table = "scores"\n[executor]\nkind = "dask"'),
     "domain.incremental", 'top-ups run on the local executor ([executor] kind = "local")'),
]


@pytest.mark.parametrize("kwargs, key, message", [pytest.param(*case[1:], id=case[0]) for case in BAD])
def test_bad_job_file(jobs_dir, kwargs, key, message):
    path = write(jobs_dir, compose(**kwargs))
    with pytest.raises(JobFileError) as info:
        load_job(path, environ={})
    assert str(info.value) == f"{path}: {key}: {message}" or (
        str(info.value).startswith(f"{path}: {key}: ") and message in str(info.value)), str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, PipelineError)


@pytest.mark.parametrize("body", [
    pytest.param('[domain\nkeys = ["id"]\n', id="unclosed-table-header"),
    pytest.param('name = "a"\nname = "b"\n', id="duplicate-key"),
    pytest.param('[domain]\nkeys = ["id"\n', id="unclosed-array"),
    pytest.param('target = sqlite:///x.db\n', id="unquoted-string"),
])
def test_malformed_toml_names_the_file_and_the_line(jobs_dir, body):
    path = write(jobs_dir, body)
    with pytest.raises(JobFileError) as info:
        load_job(path, environ={})
    message = str(info.value)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert re.search(r"\(at (line \d+, column \d+|end of document)\)$", message), message
    assert "\n" not in message


def test_a_missing_job_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(JobFileError, match="job file not found") as info:
        load_job(path, environ={})
    assert str(info.value) == f"{path}: job file not found"


def test_a_job_file_that_is_not_utf8(jobs_dir):
    path = jobs_dir / "latin.toml"
    path.write_bytes(compose(top='description = "caf\xe9"').encode("latin-1"))
    with pytest.raises(JobFileError) as info:
        load_job(path, environ={})
    assert str(info.value).startswith(f"{path}: cannot read job file: ")


def test_a_directory_is_not_a_job_file(jobs_dir):
    with pytest.raises(JobFileError) as info:
        load_job(jobs_dir / "models", environ={})
    assert str(info.value).startswith(f"{jobs_dir / 'models'}: cannot read job file: ")


def test_a_timezone_that_names_a_directory_is_a_job_file_error(jobs_dir):
    path = write(jobs_dir, compose(top='timezone = "America"'))
    with pytest.raises(JobFileError) as info:
        load_job(path, environ={})
    assert str(info.value) == f"{path}: timezone: unknown time zone 'America'"


def test_iter_jobs_survives_a_timezone_that_names_a_directory(jobs_dir):
    write(jobs_dir, compose(), stem="good")
    write(jobs_dir, compose(top='timezone = "America"'), stem="tz")
    errors: list[JobFileError] = []
    assert [j.name for j in iter_jobs(jobs_dir, on_error=errors.append)] == ["good"]
    assert len(errors) == 1 and "timezone" in str(errors[0])


# -- find_job ------------------------------------------------------------------------------

def test_find_job_by_path(jobs_dir, tmp_path):
    path = write(tmp_path, compose(model=f'path = {q(str(jobs_dir / "models" / "m.joblib"))}'), stem="outside")
    assert find_job(str(path), jobs_dir) == path
    assert find_job(str(jobs_dir / "models" / "m.joblib"), jobs_dir) == jobs_dir / "models" / "m.joblib"


def test_find_job_by_file_stem(jobs_dir):
    path = write(jobs_dir, compose(), stem="scores")
    assert find_job("scores", jobs_dir) == jobs_dir / "scores.toml" == path


def test_find_job_by_the_name_key_of_a_file_with_another_stem(jobs_dir):
    write(jobs_dir, compose(), stem="aaa_scores")
    path = write(jobs_dir, compose(top='name = "churn"'), stem="nightly")
    write(jobs_dir, compose(), stem="zzz_scores")
    assert find_job("churn", jobs_dir) == path


def test_find_job_by_name_skips_invalid_files(jobs_dir):
    write(jobs_dir, 'name = "churn"\n[broken', stem="aaa_broken")
    write(jobs_dir, 'name = "churn"\n', stem="bbb_incomplete")
    path = write(jobs_dir, compose(top='name = "churn"'), stem="nightly")
    assert find_job("churn", jobs_dir) == path


def test_find_job_prefers_the_file_stem_over_a_name_key(jobs_dir):
    write(jobs_dir, compose(top='name = "churn"'), stem="aaa")
    path = write(jobs_dir, compose(top='name = "other"'), stem="churn")
    assert find_job("churn", jobs_dir) == path


def test_find_job_unknown(jobs_dir):
    write(jobs_dir, compose(), stem="scores")
    with pytest.raises(JobFileError) as info:
        find_job("nope", jobs_dir)
    assert str(info.value) == (f"no job file 'nope': not a file, and no {jobs_dir / 'nope.toml'} "
                               f"or job named 'nope' in {jobs_dir}/")


def test_find_job_defaults_to_the_jobs_directory(jobs_dir, monkeypatch):
    monkeypatch.chdir(jobs_dir.parent)
    path = write(jobs_dir, compose(top='name = "churn"'), stem="nightly")
    assert find_job("nightly") == Path("jobs") / "nightly.toml"
    assert find_job("churn").resolve() == path.resolve()


def test_find_job_in_a_missing_directory(tmp_path):
    with pytest.raises(JobFileError, match="no job file 'x'"):
        find_job("x", tmp_path / "no_such_dir")


# -- iter_jobs -----------------------------------------------------------------------------

def test_iter_jobs_lists_valid_jobs_in_file_order_and_reports_the_rest(jobs_dir):
    write(jobs_dir, compose(top='name = "zeta"'), stem="b")
    write(jobs_dir, compose(), stem="a")
    bad_toml = write(jobs_dir, "[domain", stem="c_bad_toml")
    bad_key = write(jobs_dir, compose(drop=("output",)), stem="d_no_output")
    (jobs_dir / "notes.txt").write_text("not a job", encoding="utf-8")
    (jobs_dir / "e.toml.bak").write_text("[broken", encoding="utf-8")

    errors: list[JobFileError] = []
    jobs = iter_jobs(jobs_dir, on_error=errors.append)
    assert [j.name for j in jobs] == ["a", "zeta"]
    assert all(isinstance(j, Job) for j in jobs)
    assert [str(e).split(": ")[0] for e in errors] == [str(bad_toml), str(bad_key)]
    assert str(errors[1]) == f"{bad_key}: [output]: section is missing"


def test_iter_jobs_without_on_error_skips_invalid_files(jobs_dir):
    write(jobs_dir, "[domain", stem="bad")
    write(jobs_dir, compose(), stem="good")
    assert [j.name for j in iter_jobs(jobs_dir)] == ["good"]


def test_iter_jobs_of_an_empty_or_missing_directory(tmp_path):
    assert iter_jobs(tmp_path) == []
    assert iter_jobs(tmp_path / "missing") == []


def test_grant_select_lists_roles_in_the_order_given(jobs_dir):
    path = write(jobs_dir, compose(output='table = "scores"\ngrant_select = ["app_reader", "BI_Reports"]'))
    assert load_job(path, environ={}).output.grant_select == ("app_reader", "BI_Reports")
