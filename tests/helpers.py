"""What tests share besides fixtures: data, models, job files, readers of views, child runs."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pipeline.database.dialects import dialect_for

FEATURES = ["x1", "x2", "x3"]

report_lines: list[str] = []


def report(line: str) -> None:
    """A figure worth seeing in every run's summary (latencies, counts), not only on failure."""
    report_lines.append(line)


def quoted(engine: Engine, name: str) -> str:
    """``name`` quoted for ``engine``'s database (MariaDB quotes with backticks)."""
    return engine.dialect.identifier_preparer.quote_identifier(name)


def customers_frame(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"customer_id": np.arange(1, n + 1), **{f: rng.normal(size=n) for f in FEATURES}})


def write_table(engine: Engine, name: str, frame: pd.DataFrame) -> None:
    """Create a source table the way a user's warehouse would hold it."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {quoted(engine, name)}"))
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


#: The source's own clock, as an application stamps ``updated_at`` with it, an hour before it, and the column that
#: holds it.
NOW = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')", "postgresql": "now()", "mariadb": "NOW(6)"}
HOUR_AGO = {"sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now', '-1 hour')", "postgresql": "now() - interval '1 hour'",
            "mariadb": "NOW(6) - INTERVAL 1 HOUR"}
STAMP = {"sqlite": "TEXT", "postgresql": "timestamp", "mariadb": "DATETIME(6)"}

CUSTOMERS_QUERY = 'query = "SELECT customer_id, x1, x2, x3 FROM customers"'
#: The domain query of :data:`CUSTOMERS_JOB` with ``changed`` and ``removed`` over what :func:`write_source` makes.
CHANGES_QUERY = CUSTOMERS_QUERY + '''
    changed = "SELECT customer_id, x1, x2, x3 FROM customers WHERE updated_at >= :since"
    removed = "SELECT customer_id FROM customers_gone WHERE deleted_at >= :since"'''
CHANGES_JOB = CUSTOMERS_JOB.replace(CUSTOMERS_QUERY, CHANGES_QUERY)


def now(engine: Engine) -> str:
    return NOW[dialect_for(engine).name]


def write_source(engine: Engine, frame: pd.DataFrame) -> None:
    """``customers`` with an ``updated_at`` the database's clock stamped an hour ago (before the seconds :since
    rounds down to), and an empty ``customers_gone``."""
    write_table(engine, "customers", frame)
    write_table(engine, "customers_gone", pd.DataFrame({"customer_id": pd.Series([], dtype="int64")}))
    kind = STAMP[dialect_for(engine).name]
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE customers ADD COLUMN updated_at {kind}"))
        conn.execute(text(f"ALTER TABLE customers_gone ADD COLUMN deleted_at {kind}"))
        conn.execute(text(f"UPDATE customers SET updated_at = {HOUR_AGO[dialect_for(engine).name]}"))


def change(engine: Engine, where: str) -> None:
    """Change x1 of the rows ``where`` selects, stamping them."""
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE customers SET x1 = x1 + 1, updated_at = {now(engine)} WHERE {where}"))


def insert(engine: Engine, frame: pd.DataFrame) -> None:
    frame.to_sql("customers", engine, index=False, if_exists="append")
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE customers SET updated_at = {now(engine)} WHERE updated_at IS NULL"))


def delete(engine: Engine, where: str) -> None:
    """Delete rows, leaving their keys in ``customers_gone``, stamped."""
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO customers_gone (customer_id, deleted_at) "
                          f"SELECT customer_id, {now(engine)} FROM customers WHERE {where}"))
        conn.execute(text(f"DELETE FROM customers WHERE {where}"))


SCRIPTED_JOB = CUSTOMERS_JOB.replace('method = "predict_proba"', 'method = "predict"')


def scheduled(body: str, schedule: str, **top: object) -> str:
    """A job file body with ``schedule`` (and other top-level keys) in front."""
    extra = "".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in top.items())
    return f'schedule = "{schedule}"\n{extra}' + body


def view_rows(engine: Engine, table: str = "scores", key: str = "customer_id") -> pd.DataFrame:
    """Everything the stable view serves, in key order."""
    with engine.connect() as conn:
        return pd.read_sql(text(f"SELECT * FROM {quoted(engine, table)} ORDER BY {quoted(engine, key)}"), conn)


def version_rows(engine: Engine, version: int, order: str = "customer_id", table: str = "scores") -> pd.DataFrame:
    """A version table's rows as the run wrote them: without the ``model_version`` column by which PostgreSQL
    serves it as a partition."""
    with engine.connect() as conn:
        frame = pd.read_sql(text(f"SELECT * FROM {quoted(engine, f'{table}__v{version}')} ORDER BY {order}"), conn)
    return frame.drop(columns=["model_version"], errors="ignore")


def reference_query(number: int, table: str = "scores") -> str:
    """Query ``number`` of sql/queries.sql (what applications copy), for ``table``, without its comments."""
    text_ = (Path(__file__).resolve().parent.parent / "sql" / "queries.sql").read_text()
    body = text_.split(f"-- {number}.")[1].split(f"-- {number + 1}.")[0]
    sql = "\n".join(line for line in body.splitlines()[1:] if not line.lstrip().startswith("--"))
    return sql.strip().rstrip(";").replace("churn_scores", table)


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


def start_run(tmp_path: Path, db_url: str, pause: str, *args: str) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    """``pipeline run scores --force`` in a child process that pauses at phase ``pause``; its stderr lines."""
    return start_command(tmp_path, db_url, pause, "run", "scores", "--force", *args)


def start_command(tmp_path: Path, db_url: str, pause: str,
                  *command: str) -> tuple[subprocess.Popen, "queue.Queue[str]"]:
    """``pipeline COMMAND...`` in a child process that pauses at phase ``pause``; its stderr lines."""
    env = {**os.environ, "PIPELINE_PAUSE_AT": pause}
    env.pop("PIPELINE_DATABASE_URL", None)
    child = subprocess.Popen([sys.executable, "-m", "pipeline", *command, "--db", db_url], cwd=tmp_path,
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


class Outage:
    """A TCP proxy to a database server that a test takes down (every connection through it cut, new ones
    closed at once) and brings back up: an outage of that server for this test's connections only."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.down = False
        self._open: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self.down:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            self._open += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def cut(self) -> None:
        self.down = True
        for end in self._open:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already
        self._open.clear()

    def close(self) -> None:
        self.cut()
        self._listener.close()
