"""The view holds exactly what the model says (issue 12): real models, messy data, both databases, any chunking.

For each model the test does what the model's owner does: it reads the training rows with
``pandas.read_sql`` from the very table the job scores, fits the model on them and saves it
with joblib. Then it runs the job through the library for chunk sizes 1, 37, 1000 and one
larger than the domain, and compares the view, joined on its keys, with the model (loaded
from the job's file) called directly on ``pandas.read_sql`` of the job's own domain query.

The data are scikit-learn's bundled breast cancer and diabetes sets plus columns generated
with a fixed seed: missing numbers and text, a text column NULL for the first 40 rows (so
with ``chunk_size = 37`` a whole chunk is NULL), text keys, a composite text x date key, a
date column, NUMERIC, nullable booleans, integers with NULLs, REAL (float4 on PostgreSQL),
and categories the model never saw in training. Tables are made with explicit DDL, since
the readers take column kinds from declared types.

Two facts of arithmetic shape what "exactly" means here:

- BLAS rounds a row's dot product differently depending on how many rows are multiplied at
  once (OpenBLAS picks kernels by shape). A linear model called on 37 rows and on 300 rows
  disagrees in the last bits for some rows, whatever feeds it. So the exact reference calls
  the model on the same rows the pipeline hands it: the domain query's ordered rows cut at
  the same chunk boundaries. Tree models are row by row: for them the view must also equal
  the model called once on the whole frame, bit for bit; linear ones within a few ulps.
- PostgreSQL's REAL is float4. ``read_sql`` (psycopg, text protocol) gives the shortest
  decimal that names the float32 value (0.1), the pipeline the float32 value itself
  (0.10000000149011612). The exact reference rounds those columns to float32, the value
  the database holds; against ``read_sql`` unrounded the view is within float32 rounding.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline import load_job, run_job

from helpers import CUSTOMERS_JOB, FEATURES, customers_frame, write_table


@pytest.fixture(autouse=True)
def one_thread_per_model_call():
    """Chunks of one row mean hundreds of model calls; OpenMP's thread start-up per call (HistGradientBoosting)
    then dominates on two cores. Trees give the same bits on any number of threads, and the linear models'
    references cut the rows as the runs do, under the same limit."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield

CHUNK_SIZES = (1, 37, 1000, "domain + 1")
#: Nullable booleans: ``read_sql`` gives them as object (None/True/False) on PostgreSQL, which scikit-learn
#: cannot convert; the models below convert them to float themselves (see :func:`booleans_as_floats`).
BOOLEANS = ("active", "smoker")
SEED = 12


# -- the source tables ------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """A table the jobs score: its DDL per database, its rows, the domain query and the training query."""

    table: str
    keys: tuple[str, ...]
    #: column -> (SQLite declared type, PostgreSQL type), in order; the first entries are the keys.
    columns: dict[str, tuple[str, str]]
    text_features: tuple[str, ...]
    number_features: tuple[str, ...]
    target: str
    #: Text values that only scoring rows hold (never seen in training): column -> value.
    unknown: dict[str, str]
    #: Two keys whose rows hold the same features, the first in the all-NULL first chunk of 37 rows.
    twins: tuple[tuple[Any, ...], tuple[Any, ...]]
    build: Callable[[], pd.DataFrame]
    #: Columns that are REAL: float4 on PostgreSQL, 8-byte floats on SQLite.
    float4: tuple[str, ...] = ()
    #: Domain columns that are no feature (a date column), read and conformed all the same.
    extra: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        return [*self.text_features, *self.number_features]

    @property
    def query(self) -> str:
        """The job's domain query: ordered by key, so the chunks the pipeline reads are known rows."""
        columns = ", ".join([*self.keys, *self.features, *self.extra])
        return f"SELECT {columns} FROM {self.table} ORDER BY {', '.join(self.keys)}"

    @property
    def training_query(self) -> str:
        """The rows the model's owner trains on: every row but those holding an unknown category."""
        unseen = " AND ".join(f"COALESCE({c}, '') <> '{v}'" for c, v in self.unknown.items())
        return f"SELECT {', '.join([*self.features, self.target])} FROM {self.table} WHERE {unseen}"


def _nulls(rng: np.random.Generator, values: Any, share: float) -> list[Any]:
    """``values`` as plain Python objects, ``share`` of them None."""
    out = [v.item() if hasattr(v, "item") else v for v in values]
    return [None if rng.random() < share else v for v in out]


def patients_frame(n: int = 200) -> pd.DataFrame:
    """200 rows of scikit-learn's breast cancer set, with generated text, integer, boolean and date columns.

    ``region`` is NULL for the first 40 keys; ``region = 'central'`` and ``plan = 'enterprise'`` only
    occur in scoring rows; P0151 holds the features of P0003 (both with a NULL region).
    """
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng(SEED)
    bundled = load_breast_cancer(as_frame=True).frame
    src = bundled.iloc[rng.choice(len(bundled), n, replace=False)].reset_index(drop=True)
    malignant = src["target"].to_numpy() == 0  # scikit-learn's 0 is malignant
    region = np.where(rng.random(n) < 0.75, np.where(malignant, "north", "south"),
                      rng.choice(["east", "west", "north", "south"], n))
    frame = pd.DataFrame({
        "patient_id": [f"P{i:04d}" for i in range(1, n + 1)],
        "region": _nulls(rng, region, 0.12),
        "plan": _nulls(rng, np.where(rng.random(n) < 0.6, np.where(malignant, "pro", "basic"),
                                     rng.choice(["basic", "plus", "pro"], n)), 0.10),
        "radius": _nulls(rng, src["mean radius"], 0.05),
        "texture": _nulls(rng, src["mean texture"].round(2), 0.05),
        "area": _nulls(rng, src["mean area"], 0.08),
        "smoothness": _nulls(rng, src["mean smoothness"], 0.08),
        "concave": _nulls(rng, src["worst concave points"], 0.03),
        "visits": _nulls(rng, rng.poisson(np.where(malignant, 6, 3)), 0.10),
        "active": _nulls(rng, rng.random(n) < np.where(malignant, 0.7, 0.3), 0.15),
        "opened": _nulls(rng, [dt.date(2020, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 1500, n)],
                         0.05),
        "diagnosis": np.where(malignant, "malignant", "benign"),
    }, dtype=object)
    frame.loc[:39, "region"] = None  # a whole first chunk of 37 rows, and 3 rows of the next, NULL
    later = rng.choice(np.arange(45, n), 16, replace=False)
    frame.loc[later[:8], "region"] = "central"
    frame.loc[later[8:], "plan"] = "enterprise"
    twin, original = 150, 2  # P0151 and P0003
    for column in ["plan", "radius", "texture", "area", "smoothness", "concave", "visits", "active"]:
        frame.at[twin, column] = frame.at[original, column]
    frame.at[twin, "region"] = None
    if frame.at[twin, "plan"] == "enterprise":
        frame.at[twin, "plan"] = frame.at[original, "plan"] = "plus"
    return frame


PATIENTS = Source(
    table="patients",
    keys=("patient_id",),
    columns={
        "patient_id": ("TEXT", "text"),
        "region": ("TEXT", "text"),
        "plan": ("VARCHAR(20)", "varchar(20)"),
        "radius": ("REAL", "real"),
        "texture": ("NUMERIC", "numeric(10, 2)"),
        "area": ("DOUBLE PRECISION", "double precision"),
        "smoothness": ("DOUBLE PRECISION", "double precision"),
        "concave": ("FLOAT", "double precision"),
        "visits": ("INTEGER", "integer"),
        "active": ("BOOLEAN", "boolean"),
        "opened": ("DATE", "date"),
        "diagnosis": ("TEXT", "text"),
    },
    text_features=("region", "plan"),
    number_features=("radius", "texture", "area", "smoothness", "concave", "visits", "active"),
    target="diagnosis",
    unknown={"region": "central", "plan": "enterprise"},
    twins=(("P0003",), ("P0151",)),
    build=patients_frame,
    float4=("radius",),
    extra=("opened",),
)

CLINICS = ("c1", "c2", "c3", "c4")


def visits_frame(n: int = 200) -> pd.DataFrame:
    """200 rows of scikit-learn's diabetes set (raw units) keyed by clinic x visit day.

    ``sex`` is text, NULL for the first 40 keys (clinic c1, its first 40 days) and ``'other'``
    (never seen in training) in a few rows; the c3 row of day 40 holds the features of c1's day 5.
    """
    from sklearn.datasets import load_diabetes

    rng = np.random.default_rng(SEED + 1)
    bundled = load_diabetes(as_frame=True, scaled=False).frame
    src = bundled.iloc[rng.choice(len(bundled), n, replace=False)].reset_index(drop=True)
    start = dt.date(2024, 1, 1)
    frame = pd.DataFrame({
        "clinic": [CLINICS[i % 4] for i in range(n)],
        "visit_day": [start + dt.timedelta(days=i // 4) for i in range(n)],
        "sex": _nulls(rng, np.where(src["sex"] == 1, "female", "male"), 0.10),
        "age": _nulls(rng, src["age"].astype(int), 0.08),
        "bmi": _nulls(rng, src["bmi"].round(2), 0.05),
        "bp": _nulls(rng, src["bp"], 0.05),
        **{s: _nulls(rng, src[s], 0.04 if s == "s5" else 0.0) for s in ("s1", "s2", "s3", "s4", "s5", "s6")},
        "smoker": _nulls(rng, rng.random(n) < 0.3, 0.15),
        "progression": src["target"],
    }, dtype=object)
    first = [4 * day for day in range(40)]  # clinic c1's first 40 days: the first 40 rows in key order
    frame.loc[first, "sex"] = None
    frame.loc[rng.choice([i for i in range(n) if i not in first], 6, replace=False), "sex"] = "other"
    twin, original = 4 * 40 + 2, 4 * 5  # (c3, day 40) and (c1, day 5)
    for column in ["age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "smoker"]:
        frame.at[twin, column] = frame.at[original, column]
    frame.at[twin, "sex"] = None
    return frame


VISITS = Source(
    table="visits",
    keys=("clinic", "visit_day"),
    columns={
        "clinic": ("TEXT", "text"),
        "visit_day": ("DATE", "date"),
        "sex": ("TEXT", "text"),
        "age": ("INTEGER", "integer"),
        "bmi": ("NUMERIC(10, 2)", "numeric(10, 2)"),
        "bp": ("REAL", "real"),
        **{s: ("DOUBLE PRECISION", "double precision") for s in ("s1", "s2", "s3", "s4", "s5", "s6")},
        "smoker": ("BOOLEAN", "boolean"),
        "progression": ("DOUBLE PRECISION", "double precision"),
    },
    text_features=("sex",),
    number_features=("age", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "smoker"),
    target="progression",
    unknown={"sex": "other"},
    twins=(("c1", "2024-01-06"), ("c3", "2024-02-10")),
    build=visits_frame,
    float4=("bp",),
)


def mariadb_type(postgresql_type: str, key: bool) -> str:
    if postgresql_type == "text":
        return "VARCHAR(64)" if key else "TEXT"
    return {"real": "FLOAT", "double precision": "DOUBLE", "integer": "INT"}.get(postgresql_type,
                                                                               postgresql_type.upper())


def load_source(engine: Engine, source: Source) -> pd.DataFrame:
    """Create ``source``'s table with declared types for this database and insert its rows; the rows."""
    frame = source.build()
    postgres = engine.dialect.name == "postgresql"
    if engine.dialect.name == "mysql":  # PostgreSQL's types in MariaDB's words; a text key is a VARCHAR
        declared = ", ".join(f"{c} {mariadb_type(types[1], c in source.keys)}" for c, types in source.columns.items())
    else:
        declared = ", ".join(f"{c} {types[1] if postgres else types[0]}" for c, types in source.columns.items())
    ddl = f"CREATE TABLE {source.table} ({declared}, PRIMARY KEY ({', '.join(source.keys)}))"
    names = list(source.columns)
    insert = f"INSERT INTO {source.table} ({', '.join(names)}) VALUES ({', '.join(':' + c for c in names)})"

    def plain(value: Any) -> Any:
        if isinstance(value, dt.date) and not postgres:
            return value.isoformat()  # as SQLite holds dates: ISO text
        return value

    rows = [{c: plain(row[c]) for c in names} for row in frame.to_dict("records")]
    with engine.begin() as conn:
        conn.execute(text(ddl))
        conn.execute(text(insert), rows)
    return frame


def read_sql(engine: Engine, query: str) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(text(query), conn)


# -- the models ---------------------------------------------------------------------------------

def booleans_as_floats(frame: pd.DataFrame) -> pd.DataFrame:
    """The model's first step: nullable booleans (object None/True/False from ``read_sql`` on PostgreSQL)
    as floats, NaN where missing. Module level, so that the pickled model finds it."""
    return frame.astype({c: "float64" for c in BOOLEANS if c in frame.columns})


def _first_step() -> Any:
    from sklearn.preprocessing import FunctionTransformer

    return ("booleans", FunctionTransformer(booleans_as_floats))


def with_categories(frame: pd.DataFrame, categories: dict[str, list[Any]]) -> pd.DataFrame:
    """``frame`` with each of ``categories``' columns as ``pd.CategoricalDtype(those categories)``: a value
    outside them is missing (masked first: pandas deprecates casting values outside a dtype's categories)."""
    out = frame.copy()
    for column, cats in categories.items():
        values = out[column]
        out[column] = values.where(values.isin(cats)).astype(pd.CategoricalDtype(cats))
    return out


@dataclass(frozen=True)
class Fitted:
    model: Any
    #: The categories each text feature was fitted with, for category models; empty for the others.
    categories: dict[str, list[Any]]
    #: Whether the model's arithmetic is row by row (trees): then chunking cannot change a bit.
    row_by_row: bool


def fit_onehot_logistic(train: pd.DataFrame, source: Source) -> Fitted:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), list(source.text_features)),
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), list(source.number_features)),
    ])
    model = Pipeline([_first_step(), ("columns", columns), ("model", LogisticRegression(max_iter=1000))])
    return Fitted(model.fit(train[source.features], train[source.target]), {}, row_by_row=False)


def fit_ridge(train: pd.DataFrame, source: Source) -> Fitted:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), list(source.text_features)),
        ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), list(source.number_features)),
    ])
    model = Pipeline([_first_step(), ("columns", columns), ("model", Ridge(alpha=1.0))])
    return Fitted(model.fit(train[source.features], train[source.target]), {}, row_by_row=False)


def _native(train: pd.DataFrame, source: Source) -> tuple[pd.DataFrame, dict[str, list[Any]]]:
    """The training features with the text columns as pandas ``category``, and the categories they got."""
    X = train[source.features].astype({c: "category" for c in source.text_features})
    return X, {c: list(X[c].cat.categories) for c in source.text_features}


def fit_hist_gradient_boosting(train: pd.DataFrame, source: Source) -> Fitted:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    X, categories = _native(train, source)
    estimator = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=20, max_leaf_nodes=8,
                                               min_samples_leaf=5, random_state=0)
    model = Pipeline([_first_step(), ("model", estimator)]).fit(X, train[source.target])
    return Fitted(model, categories, row_by_row=True)


def fit_lightgbm(train: pd.DataFrame, source: Source) -> Fitted:
    import lightgbm
    from sklearn.pipeline import Pipeline

    X, categories = _native(train, source)
    estimator = lightgbm.LGBMClassifier(n_estimators=20, num_leaves=8, min_child_samples=5, min_data_per_group=5,
                                        cat_smooth=1.0, random_state=0, n_jobs=1, verbose=-1)
    model = Pipeline([_first_step(), ("model", estimator)]).fit(X, train[source.target])
    return Fitted(model, categories, row_by_row=True)


def fit_xgboost(train: pd.DataFrame, source: Source) -> Fitted:
    import xgboost
    from sklearn.pipeline import Pipeline

    X, categories = _native(train, source)
    estimator = xgboost.XGBClassifier(n_estimators=20, max_depth=3, enable_categorical=True, tree_method="hist",
                                      max_cat_to_onehot=1, random_state=0, n_jobs=1)
    y = (train[source.target] == "malignant").astype(int)  # XGBoost wants classes 0..n-1
    model = Pipeline([_first_step(), ("model", estimator)]).fit(X, y)
    return Fitted(model, categories, row_by_row=True)


@dataclass(frozen=True)
class Case:
    name: str
    source: Source
    fit: Callable[[pd.DataFrame, Source], Fitted]
    method: str
    outputs: tuple[str, ...]


CASES = [
    Case("onehot_logistic", PATIENTS, fit_onehot_logistic, "predict_proba", ("proba_benign", "proba_malignant")),
    Case("onehot_logistic_labels", PATIENTS, fit_onehot_logistic, "predict", ("prediction",)),
    Case("hist_gradient_boosting", PATIENTS, fit_hist_gradient_boosting, "predict_proba",
         ("proba_benign", "proba_malignant")),
    Case("lightgbm", PATIENTS, fit_lightgbm, "predict_proba", ("proba_benign", "proba_malignant")),
    Case("xgboost", PATIENTS, fit_xgboost, "predict_proba", ("proba_0", "proba_1")),
    Case("ridge", VISITS, fit_ridge, "predict", ("prediction",)),
]
CATEGORY_CASES = [c for c in CASES if c.name in ("hist_gradient_boosting", "lightgbm", "xgboost")]


# -- jobs, references, comparisons ------------------------------------------------------------

def train(engine: Engine, case: Case, tmp_path: Path) -> tuple[Path, Fitted]:
    """Fit the case's model on ``read_sql`` of the training rows, as its owner would, and save it with joblib."""
    fitted = case.fit(read_sql(engine, case.source.training_query), case.source)
    path = tmp_path / "models" / f"{case.name}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(fitted.model, path)
    return path, fitted


def write_job(tmp_path: Path, case: Case, model: Path, chunk_size: int) -> Path:
    path = tmp_path / f"{case.name}_{chunk_size}.toml"
    path.write_text(textwrap.dedent(f"""
        [domain]
        keys = [{", ".join(f'"{k}"' for k in case.source.keys)}]
        query = "{case.source.query}"
        chunk_size = {chunk_size}
        [model]
        path = "{model}"
        method = "{case.method}"
        [output]
        table = "exact_{case.name}"
    """), encoding="utf-8")
    return path


#: Databases whose single-precision columns ``read_sql`` gives as their shortest decimal (SQLite has none).
FLOAT4_DATABASES = ("postgresql", "mysql")


def domain_rows(engine: Engine, case: Case, float4_rounded: bool) -> pd.DataFrame:
    """``read_sql`` of the job's own domain query; with ``float4_rounded``, PostgreSQL's REAL (MariaDB's FLOAT)
    columns rounded to the float32 values the database holds (``read_sql`` gives their shortest decimal)."""
    frame = read_sql(engine, case.source.query)
    if float4_rounded and engine.dialect.name in FLOAT4_DATABASES:
        for column in case.source.float4:
            frame[column] = frame[column].astype(np.float32).astype(np.float64)
    return frame


def call_model(model: Any, method: str, frame: pd.DataFrame, features: list[str],
               categories: dict[str, list[Any]], chunk_size: int | None = None) -> np.ndarray:
    """The model called directly on ``frame``'s features, on the rows cut every ``chunk_size`` rows (all at once
    if None), as one array of outputs. A category model's text features are handed as plain pandas ``category``
    columns, as its owner does: each library maps them to its training categories itself."""
    X = frame[features].astype({c: "category" for c in categories})
    size = chunk_size or max(len(X), 1)
    parts = [np.asarray(getattr(model, method)(X.iloc[i:i + size])) for i in range(0, len(X), size)]
    values = np.concatenate(parts)
    return values if values.ndim == 2 else values[:, None]


def key_strings(frame: pd.DataFrame, keys: tuple[str, ...]) -> pd.Series:
    """One comparable string per row's key (dates as ISO text on both databases)."""
    parts = [frame[k].map(lambda v: v.isoformat() if isinstance(v, dt.date) else str(v)) for k in keys]
    out = parts[0]
    for part in parts[1:]:
        out = out + "|" + part
    return out.astype(object)


def read_view(engine: Engine, case: Case) -> pd.DataFrame:
    return read_sql(engine, f"SELECT * FROM exact_{case.name}")


def joined(view: pd.DataFrame, domain: pd.DataFrame, keys: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """The view's rows in the domain's row order (every domain key exactly once), and those keys."""
    domain_keys = key_strings(domain, keys).to_numpy()
    view_keys = key_strings(view, keys)
    assert view_keys.is_unique, f"the view repeats keys: {view_keys[view_keys.duplicated()].tolist()[:5]}"
    missing = sorted(set(domain_keys) - set(view_keys))
    extra = sorted(set(view_keys) - set(domain_keys))
    assert not missing and not extra, f"keys only in the domain: {missing[:5]}; only in the view: {extra[:5]}"
    return view.set_index(view_keys.to_numpy()).loc[domain_keys].reset_index(drop=True), domain_keys


def assert_outputs(got: pd.DataFrame, expected: np.ndarray, outputs: tuple[str, ...], keys: np.ndarray, what: str,
                   rtol: float = 0.0, atol: float = 0.0) -> None:
    """Each output column equal to the expected one (bit for bit unless a tolerance is given); on failure, which
    rows differ and by how much."""
    problems = []
    for i, column in enumerate(outputs):
        actual, wanted = got[column].to_numpy(), expected[:, i]
        if actual.dtype.kind in "fc" or wanted.dtype.kind in "fc":
            actual, wanted = actual.astype(np.float64), wanted.astype(np.float64)
            close = np.abs(actual - wanted) <= atol + rtol * np.abs(wanted) if rtol or atol else actual == wanted
            bad = ~(close | (np.isnan(actual) & np.isnan(wanted)))
            delta = np.abs(actual - wanted)[bad]
            size = f", max |diff| {delta.max():.3g}, mean |diff| {delta.mean():.3g}" if bad.any() else ""
        else:
            bad = np.array([a != w for a, w in zip(actual, wanted)], dtype=bool)
            size = ""
        if bad.any():
            rows = np.flatnonzero(bad)
            examples = "; ".join(f"{keys[r]}: view {actual[r]!r} vs model {wanted[r]!r}" for r in rows[:4])
            problems.append(f"{column}: {bad.sum()} of {len(bad)} rows differ{size} (e.g. {examples})")
    assert not problems, f"{what}:\n  " + "\n  ".join(problems)


def run(engine: Engine, tmp_path: Path, case: Case, model_path: Path, chunk_size: int) -> pd.DataFrame:
    """Run the case's job with ``chunk_size`` (forced: the model and domain are those of the last run)."""
    result = run_job(load_job(write_job(tmp_path, case, model_path, chunk_size)), engine, force=True)
    view = read_view(engine, case)
    assert set(view["model_version"]) == {result.version}
    assert result.rows == len(view)
    return view


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_view_equals_the_model_on_read_sql_for_every_chunk_size(engine, tmp_path, case):
    """Bit for bit against the model on the same rows of ``read_sql`` (float4 as the database holds it), for
    chunk sizes 1, 37, 1000 and one larger than the domain; rows of a NULL chunk as their twins elsewhere."""
    source = case.source
    load_source(engine, source)
    model_path, fitted = train(engine, case, tmp_path)
    model = joblib.load(model_path)  # the very bytes the job loads
    exact = domain_rows(engine, case, float4_rounded=True)
    as_read = domain_rows(engine, case, float4_rounded=False)
    assert len(exact) > 37 * 5 and exact[list(source.text_features)[0]].iloc[:40].isna().all()
    whole = call_model(model, case.method, exact, source.features, fitted.categories)
    unrounded = call_model(model, case.method, as_read, source.features, fitted.categories)
    twins = [key_strings(pd.DataFrame([dict(zip(source.keys, t))]), source.keys)[0] for t in source.twins]

    labels = whole.dtype.kind not in "fc"  # predict's class labels: no rounding to speak of
    if engine.dialect.name in FLOAT4_DATABASES and not fitted.row_by_row and not labels:
        assert not np.array_equal(whole, unrounded), "float4 rounding changes nothing here: the test cannot see it"

    for size in CHUNK_SIZES:
        chunk_size = len(exact) + 1 if size == "domain + 1" else size
        where = f"{case.name} on {engine.dialect.name}, chunk_size {chunk_size}"
        view, keys = joined(run(engine, tmp_path, case, model_path, chunk_size), exact, source.keys)
        if fitted.row_by_row or labels:
            assert_outputs(view, whole, case.outputs, keys,
                           f"{where}: the view differs from the model called on read_sql's rows")
        if not fitted.row_by_row:  # BLAS: the last bits depend on how many rows are multiplied at once
            same_rows = call_model(model, case.method, exact, source.features, fitted.categories, chunk_size)
            assert_outputs(view, same_rows, case.outputs, keys,
                           f"{where}: the view differs from the model called on the same chunks of read_sql's rows")
            assert_outputs(view, whole, case.outputs, keys, f"{where}: the view is further than BLAS rounding "
                           "from the model called once on all of read_sql's rows", rtol=1e-12, atol=1e-15)
        if engine.dialect.name in FLOAT4_DATABASES and source.float4:
            assert_outputs(view, unrounded, case.outputs, keys, f"{where}: the view is further than float32 "
                           "rounding from the model on read_sql's unrounded REAL values", rtol=1e-5, atol=1e-6)
        first, second = (view.loc[keys == twin, list(case.outputs)].to_numpy() for twin in twins)
        message = f"{where}: {twins[0]} (in a chunk whose text is NULL) and {twins[1]} (same features) differ"
        if fitted.row_by_row or labels:
            np.testing.assert_array_equal(first, second, err_msg=message)
        else:
            np.testing.assert_allclose(first, second, rtol=1e-12, atol=1e-15, err_msg=message)


def test_a_text_column_null_for_a_whole_chunk_is_missing_not_unknown(engine, tmp_path):
    """The bug of issue 12: a one-hot encoder fitted on NaN as "missing" met None in a chunk whose text column
    was all NULL and encoded it as an unknown category. The first chunk of 37 rows has ``region`` NULL
    throughout: its rows must get what the model gives them in a mixed chunk, and not what it gives None."""
    case = CASES[0]
    load_source(engine, PATIENTS)
    model_path, _ = train(engine, case, tmp_path)
    model = joblib.load(model_path)
    exact = domain_rows(engine, case, float4_rounded=True)
    null_chunk = run(engine, tmp_path, case, model_path, 37)
    one_chunk = run(engine, tmp_path, case, model_path, len(exact) + 1)
    first, keys = joined(null_chunk, exact, PATIENTS.keys)
    whole, _ = joined(one_chunk, exact, PATIENTS.keys)
    head = slice(0, 37)  # the chunk whose region is NULL throughout
    np.testing.assert_allclose(first.iloc[head][list(case.outputs)].to_numpy(),
                               whole.iloc[head][list(case.outputs)].to_numpy(), rtol=1e-12, atol=1e-15,
                               err_msg="rows of the all-NULL chunk score differently from the same rows in one chunk")
    # What the bug gave: the same rows with region None in an object column, which the encoder takes as unknown.
    as_none = exact.iloc[head][PATIENTS.features].astype({"region": object})
    as_none["region"] = None
    buggy = model.predict_proba(as_none)
    distance = np.abs(first.iloc[head][list(case.outputs)].to_numpy() - buggy).max()
    assert distance > 1e-3, "the model scores None and NaN alike here, so this test could not see the bug"


@pytest.mark.parametrize("case", CATEGORY_CASES, ids=[c.name for c in CATEGORY_CASES])
def test_unknown_categories_get_what_the_library_itself_gives_them(engine, tmp_path, case):
    """Rows holding a category the model never saw in training: the view must hold what the model's library
    answers when handed the text columns as plain pandas ``category`` columns (each library maps them to its
    training categories itself), as the issue asks ("unknown categories are handled the way the library
    itself handles them")."""
    source = case.source
    load_source(engine, source)
    model_path, fitted = train(engine, case, tmp_path)
    model = joblib.load(model_path)
    exact = domain_rows(engine, case, float4_rounded=True)
    unknown = np.zeros(len(exact), dtype=bool)
    for column, value in source.unknown.items():
        assert value not in fitted.categories[column]
        unknown |= (exact[column] == value).fillna(False).to_numpy(dtype=bool)
    assert unknown.sum() >= 10
    view, keys = joined(run(engine, tmp_path, case, model_path, 37), exact, source.keys)
    native = exact[source.features].astype({c: "category" for c in source.text_features})
    library = np.asarray(getattr(model, case.method)(native))
    # Only rows with an unknown category may get something else than with the fitted categories' dtype.
    as_missing = np.asarray(getattr(model, case.method)(with_categories(exact[source.features], fitted.categories)))
    assert set(np.flatnonzero(np.any(library != as_missing, axis=1))) <= set(np.flatnonzero(unknown))
    assert_outputs(view, library, case.outputs, keys,
                   f"{case.name} on {engine.dialect.name}: the view differs from the library's own answer for "
                   f"rows holding a category it never saw ({', '.join(f'{c} = {v!r}' for c, v in source.unknown.items())})")


# -- ONNX and MLflow pyfunc: the same promise for the families loaded through their own runtimes -----------

def onnx_feeds(frame: pd.DataFrame, source: Source) -> dict[str, np.ndarray]:
    """What the model's owner feeds onnxruntime from ``read_sql``: text with "" for missing (a string tensor holds
    no missing value), numbers (nullable booleans included) as float32 with NaN, one [rows, 1] input per column."""
    feeds = {c: frame[[c]].astype(object).where(frame[[c]].notna(), "").to_numpy(dtype=object)
             for c in source.text_features}
    feeds.update({c: frame[[c]].astype("float64").to_numpy(dtype=np.float32) for c in source.number_features})
    return feeds


def fit_onnx(train_frame: pd.DataFrame, source: Source, path: Path) -> Callable[[pd.DataFrame], np.ndarray]:
    """The one-hot pipeline converted with skl2onnx (text imputed with "" as the graph will be fed), saved to
    ``path``; returns the reference: onnxruntime on a read_sql frame, probabilities."""
    import onnxruntime
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X = pd.DataFrame({k: v[:, 0] for k, v in onnx_feeds(train_frame, source).items()})
    columns = ColumnTransformer([
        ("text", OneHotEncoder(handle_unknown="ignore"), list(source.text_features)),
        ("numbers", make_pipeline(SimpleImputer(), StandardScaler()), list(source.number_features)),
    ])
    model = Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1000))])
    model.fit(X, train_frame[source.target])
    types = ([(c, StringTensorType([None, 1])) for c in source.text_features]
             + [(c, FloatTensorType([None, 1])) for c in source.number_features])
    graph = to_onnx(model, initial_types=types, options={id(model): {"zipmap": False}})
    path.write_bytes(graph.SerializeToString())
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda frame: session.run(["probabilities"], onnx_feeds(frame, source))[0]


class ProbaOfMalignant:
    """An MLflow PythonModel (built lazily: mlflow is an optional extra) answering P(malignant) per row."""

    @staticmethod
    def save(model: Any, source: Source, directory: Path, example: pd.DataFrame) -> None:
        import mlflow.pyfunc
        from mlflow.models import infer_signature

        class Wrapped(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                self.model = joblib.load(context.artifacts["model"])

            def predict(self, context, model_input, params=None):
                return self.model.predict_proba(model_input[source.features])[:, 1]

        artifact = directory.parent / "inner.joblib"
        joblib.dump(model, artifact)
        signature = infer_signature(example[source.features], model.predict_proba(example[source.features])[:, 1])
        mlflow.pyfunc.save_model(str(directory), python_model=Wrapped(), artifacts={"model": str(artifact)},
                                 signature=signature)


@pytest.mark.parametrize("family", ["onnx", "mlflow"])
def test_onnx_and_pyfunc_models_equal_their_own_runtime_on_read_sql(engine, tmp_path, family):
    """An ONNX graph converted with skl2onnx and an MLflow pyfunc model: the view against the runtime called
    directly on read_sql's rows (fed the documented way), on the same chunks, for every chunk size."""
    source = PATIENTS
    load_source(engine, source)
    training = read_sql(engine, source.training_query)
    if family == "onnx":
        path = tmp_path / "models" / "patients.onnx"
        path.parent.mkdir(parents=True)
        reference = fit_onnx(training, source, path)
        outputs = ("proba_benign", "proba_malignant")
    else:
        path = tmp_path / "models" / "patients_pyfunc"
        path.parent.mkdir(parents=True)
        inner = fit_onehot_logistic(training, source).model
        ProbaOfMalignant.save(inner, source, path, training)
        import mlflow.pyfunc

        loaded = mlflow.pyfunc.load_model(str(path))
        reference = lambda frame: np.asarray(loaded.predict(frame[source.features]))[:, None]  # noqa: E731
        outputs = ("prediction",)
    method = "predict_proba" if family == "onnx" else "predict"
    case = Case(f"{family}_patients", source, fit_onehot_logistic, method, outputs)
    exact = domain_rows(engine, case, float4_rounded=True)
    for size in CHUNK_SIZES:
        chunk_size = len(exact) + 1 if size == "domain + 1" else size
        where = f"{family} on {engine.dialect.name}, chunk_size {chunk_size}"
        view, keys = joined(run(engine, tmp_path, case, path, chunk_size), exact, source.keys)
        same_rows = np.concatenate([reference(exact.iloc[i:i + chunk_size])
                                    for i in range(0, len(exact), chunk_size)])
        assert_outputs(view, same_rows, outputs, keys,
                       f"{where}: the view differs from the runtime called on the same chunks of read_sql's rows")
        assert_outputs(view, reference(exact), outputs, keys, f"{where}: the view is further than rounding from "
                       "the runtime called once on all of read_sql's rows", rtol=1e-6, atol=1e-7)


def test_text_keys_that_differ_only_in_case_accents_or_spaces_are_distinct_rows(engine, write_job):
    """Keys 'a', 'A', 'a ', 'á', 'ß' and 'ss' are six customers: each gets its own row, scored from its own
    inputs, in every version, and a lookup through the view finds exactly its own (MariaDB's default collations
    would fold them into one key and fail the run)."""
    keys = ["a", "A", "a ", " a", "á", "ä", "ss", "ß", "Ǆ", "ǅ", "😀", "😁", ""]
    frame = customers_frame(len(keys)).assign(customer_id=keys)
    write_table(engine, "customers", frame)
    job = load_job(write_job(CUSTOMERS_JOB))
    expected = joblib.load(job.model.path).predict_proba(frame[FEATURES])[:, 1]
    for _ in range(2):  # the second version is served beside the first
        run_job(job, engine, force=True)
        with engine.connect() as conn:
            for key, proba in zip(keys, expected):
                found = conn.execute(text("SELECT proba_true FROM scores WHERE customer_id = :k"),
                                     {"k": key}).scalars().all()
                assert found == [proba], repr(key)
