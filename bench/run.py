"""`make bench`: the pipeline against a naive pandas script and the raw limit, side by side in one run.

    python bench/run.py                       # everything: PostgreSQL 100k/1M/10M, SQLite and MariaDB 100k/1M
    python bench/run.py --sizes 100k,1M       # a quicker pass
    python bench/run.py --databases sqlite
    python bench/run.py --only contract --sizes 1M   # only the input contract's cost (and its pipeline run)
    python bench/run.py --only serving               # only lookups through the view against the version table
    python bench/run.py --only topk --topk-shape 500x2000   # only the top-k case, at a tenth of each side
    python bench/run.py --only changes --sizes 1M --databases postgresql   # only change-driven top-ups

Each contender runs as a whole process (imports included) under `measure`, which
reports wall time and the child's own peak RSS (wait4). The data, the models and the
jobs are made here; nothing is downloaded. Results go to bench/results.md.

Contenders, for N rows of 8 float features and a HistGradientBoostingClassifier:
- naive:    pd.read_sql, predict_proba, DataFrame.to_sql (what users write by hand)
- raw:      the fastest read (ADBC to Arrow on PostgreSQL), predict_proba, binary COPY
            (executemany in one transaction on SQLite), each step timed alone
- pipeline: `python -m pipeline run` (versioned table, key index, audits, flip)
- dask:     the same run with `--executor dask --workers 1` and `--workers 2` (PostgreSQL, 1M rows and up)
- incremental: 100 keys added, `run --incremental` against a full `run --force` (1M rows and up)
- changes:  a change-driven top-up (`[domain] changed`/`removed`) after 0.1% of the keys changed (0.08% updated,
            0.01% inserted, 0.01% deleted), `run --incremental` against a full `run --full --force`, both
            versions compared in the database (1M rows and up; `--only changes` measures only this)
- contract: the job's domain read twice in one process, alternately, median of 3 each: raw, as the readers
            did before the input contract (ADBC batches re-sliced and `to_pandas`; sqlite3 `fetchmany` and
            `DataFrame.from_records`), and through the pipeline's reader (which conforms every chunk) plus
            `Model.inputs`; the difference is set against the pipeline run of the same size (issue 12: at
            most 5% of a 1M-row run)
- serving:  PostgreSQL lookups through the view, and through a change-driven job's view (its versions top-ups in
            one lineage), against the active version table directly, with 2, 10 and 50 retained versions:
            pgbench (8 clients, simple and prepared protocol, medians of three runs interleaved view / lineage
            view / reference / direct, the reference being the issue's design built by hand with plain SQL, a
            pointer-gated view over two partitions) and one Python client (p50/p99 of 2,000 lookups), idle and
            while another connection flips the pointer ten times a second (issue 13)
- topk:     PostgreSQL, top 20 items per user of a 5,000 users x 20,000 items product (100M pairs) with
            exclusions (purchases), locally and on 2 Dask workers, wall time and peak RSS of every process;
            both versions read back and checked: the same rows, K per user, no purchase (issue 18)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEATURES = [f"f{i}" for i in range(8)]
#: The top-k case's features: its users carry the first two, its items the other two.
TOPK_FEATURES = FEATURES[:4]
PG_URL = os.environ.get("PIPELINE_BENCH_POSTGRES_URL",
                        os.environ.get("PIPELINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
MYSQL_URL = os.environ.get("PIPELINE_BENCH_MYSQL_URL",
                           os.environ.get("PIPELINE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))
SIZES = {"1k": 1_000, "100k": 100_000, "1M": 1_000_000, "10M": 10_000_000}


# -- contenders, each run as its own process ---------------------------------------------

#: The rows per INSERT batch the naive script's to_sql sends to MariaDB.
NAIVE_MYSQL_CHUNK = 10_000


def naive(url: str, table: str, model_path: str, out: str) -> dict:
    """What a user writes by hand: read_sql, predict_proba, to_sql."""
    import joblib
    import pandas as pd
    from sqlalchemy import create_engine

    from pipeline.database.engines import normalize_url

    engine = create_engine(normalize_url(url))
    frame = pd.read_sql(f"SELECT * FROM {table}", engine)
    proba = joblib.load(model_path).predict_proba(frame[FEATURES])
    result = pd.DataFrame({"id": frame["id"], "proba_0": proba[:, 0], "proba_1": proba[:, 1]})
    # MariaDB Connector/Python fails one executemany of a million rows: to_sql then needs a chunksize
    result.to_sql(out, engine, if_exists="replace", index=False,
                  chunksize=NAIVE_MYSQL_CHUNK if url.startswith(("mysql", "mariadb")) else None)
    return {"rows": len(result)}


def raw(url: str, table: str, model_path: str, out: str) -> dict:
    """The physical limit: the fastest reader, predict_proba, the fastest writer, each timed alone."""
    import joblib
    import numpy as np

    model = joblib.load(model_path)
    steps = {}
    started = time.perf_counter()
    if url.startswith("postgresql"):
        import adbc_driver_postgresql.dbapi as adbc
        import psycopg

        with adbc.connect(url) as conn, conn.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {table}")
            frame = cursor.fetch_arrow_table().to_pandas()
        steps["read"] = time.perf_counter() - started
        started = time.perf_counter()
        proba = model.predict_proba(frame[FEATURES])
        steps["score"] = time.perf_counter() - started
        started = time.perf_counter()
        with psycopg.connect(url) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {out}")
            conn.execute(f"CREATE TABLE {out} (id bigint, proba_0 double precision, proba_1 double precision)")
            with conn.cursor().copy(f"COPY {out} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["bigint", "double precision", "double precision"])
                for row in zip(frame["id"].tolist(), proba[:, 0].tolist(), proba[:, 1].tolist()):
                    copy.write_row(row)
    elif url.startswith(("mysql", "mariadb")):
        import mariadb
        import pyarrow as pa
        import pyarrow.csv as pacsv
        from sqlalchemy.engine import make_url

        where = make_url(url)
        conn = mariadb.connect(host=where.host, port=where.port or 3306, user=where.username,
                               password=where.password or "", database=where.database, local_infile=True)
        cursor = conn.cursor(binary=True)
        cursor.execute(f"SELECT * FROM {table}")
        data = np.array(cursor.fetchall())
        frame = {"id": data[:, 0].astype("int64"), **{f: data[:, i + 1] for i, f in enumerate(FEATURES)}}
        steps["read"] = time.perf_counter() - started
        started = time.perf_counter()
        import pandas as pd

        proba = model.predict_proba(pd.DataFrame({f: frame[f] for f in FEATURES}))
        steps["score"] = time.perf_counter() - started
        started = time.perf_counter()
        cursor.execute(f"DROP TABLE IF EXISTS {out}")
        cursor.execute(f"CREATE TABLE {out} (id BIGINT, proba_0 DOUBLE, proba_1 DOUBLE)")
        path = f"/tmp/{out}.csv"
        pacsv.write_csv(pa.table({"id": frame["id"], "proba_0": proba[:, 0], "proba_1": proba[:, 1]}), path,
                        pacsv.WriteOptions(include_header=False))
        cursor.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {out} FIELDS TERMINATED BY ','")
        conn.commit()
        conn.close()
        os.unlink(path)
        frame = frame["id"]
    else:
        import sqlite3

        import pandas as pd

        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            cursor = conn.execute(f"SELECT * FROM {table}")
            frame = pd.DataFrame(np.array(cursor.fetchall()), columns=[d[0] for d in cursor.description])
        steps["read"] = time.perf_counter() - started
        started = time.perf_counter()
        proba = model.predict_proba(frame[FEATURES])
        steps["score"] = time.perf_counter() - started
        started = time.perf_counter()
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"DROP TABLE IF EXISTS {out}")
        conn.execute(f"CREATE TABLE {out} (id INTEGER, proba_0 REAL, proba_1 REAL)")
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO {out} VALUES (?, ?, ?)",
                         zip(frame["id"].astype("int64").tolist(), proba[:, 0].tolist(), proba[:, 1].tolist()))
        conn.execute("COMMIT")
        conn.close()
    steps["write"] = time.perf_counter() - started
    return {"rows": len(frame), **steps}


def contract(url: str, job_path: str, repeats: str = "3") -> dict:
    """The input contract's cost: the job's domain read raw, the way the readers did before the contract, and
    through the pipeline's own reader (which conforms each chunk to the contract) plus ``Model.inputs``;
    alternately (raw first, then contract first...), ``repeats`` times each, after one untimed raw read."""
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from pipeline.database.dialects import reader_for
    from pipeline.database.engines import make_engine
    from pipeline.jobs import load_job
    from pipeline.run.model import load_model

    job = load_job(job_path)
    query, chunk_size = job.domain.factors[0].query, job.domain.chunk_size
    model = load_model(job.model)
    engine = make_engine(url)
    reader = reader_for(engine)
    if url.startswith("postgresql"):
        import adbc_driver_postgresql.dbapi as adbc
        import pyarrow as pa

        from pipeline.database.dialects.postgresql import conninfo

        def raw_chunks():
            """ADBC record batches re-sliced into chunk_size rows, each to_pandas (arrow_chunks before the contract)."""
            with adbc.connect(conninfo(engine)) as conn, conn.cursor() as cursor:
                cursor.execute(query)
                pending, held = [], 0
                for batch in cursor.fetch_record_batch():
                    pending.append(batch)
                    held += batch.num_rows
                    while held >= chunk_size:
                        table = pa.Table.from_batches(pending)
                        yield table.slice(0, chunk_size).to_pandas()
                        rest = table.slice(chunk_size)
                        pending, held = rest.to_batches(), rest.num_rows
                if held:
                    yield pa.Table.from_batches(pending).to_pandas()
    else:
        def raw_chunks():
            """sqlite3 fetchmany, each chunk through DataFrame.from_records (the reader before the contract)."""
            with engine.connect() as conn:
                cursor = conn.connection.driver_connection.cursor()
                try:
                    cursor.execute(query)
                    columns = [d[0] for d in cursor.description]
                    while rows := cursor.fetchmany(chunk_size):
                        yield pd.DataFrame.from_records(rows, columns=columns)
                finally:
                    cursor.close()

    def raw_pass() -> tuple[int, float]:
        return sum(len(chunk) for chunk in raw_chunks()), 0.0

    def contract_pass() -> tuple[int, float]:
        rows, inputs = 0, 0.0
        for chunk in reader.read_query(engine, query, None, chunk_size):
            started = time.perf_counter()
            model.inputs(chunk)
            inputs += time.perf_counter() - started
            rows += len(chunk)
        return rows, inputs

    def timed(one_pass) -> tuple[int, float, float]:
        gc.collect()
        started = time.perf_counter()
        rows, inputs = one_pass()
        return rows, time.perf_counter() - started, inputs

    timed(raw_pass)  # warms the caches, the connection pool and the driver's imports
    found: dict[str, list[float]] = {"raw": [], "contract": [], "inputs": []}
    for i in range(int(repeats)):
        for name in ("raw", "contract") if i % 2 == 0 else ("contract", "raw"):
            counted, seconds, inputs = timed(raw_pass if name == "raw" else contract_pass)
            found[name].append(seconds)
            if name == "contract":
                rows = counted
                found["inputs"].append(inputs)
            else:
                raw_rows = counted
    engine.dispose()
    if raw_rows != rows:
        raise SystemExit(f"the raw read gave {raw_rows} rows, the pipeline's reader {rows}")
    return {"rows": rows, "raw_read": statistics.median(found["raw"]),
            "contract_read": statistics.median(found["contract"]), "inputs": statistics.median(found["inputs"]),
            "all": found}


def watch_tree(pid: int, stop: threading.Event, peaks: dict) -> None:
    """Poll process ``pid`` and its descendants every 0.1 s until ``stop``: the peak of their summed RSS
    (``peaks["sum"]``) and each process's own peak RSS, VmHWM (``peaks["each"]``, by pid), in MB."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    while not stop.is_set():
        try:
            pids = [pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:  # the root has exited
            return
        total = 0.0
        for one in pids:
            try:
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{one}/status").read_text().splitlines())
            except (OSError, ValueError):  # gone meanwhile
                continue
            if "VmHWM" in fields:  # not in a zombie's
                total += int(fields["VmRSS"].split()[0]) / 1024
                peaks["each"][one] = max(peaks["each"].get(one, 0.0), int(fields["VmHWM"].split()[0]) / 1024)
        peaks["sum"] = max(peaks["sum"], total)
        stop.wait(0.1)


def measure(command: list[str], env: dict | None = None, tree: bool = False) -> dict:
    """Run ``command`` to completion; its wall time, its own peak RSS, and the JSON it printed last. wait4's
    peak RSS is the largest of the child's, of the descendants it reaped and of this process's own peak when it
    started the child (Linux carries it over vfork and exec), never a sum: with ``tree``, the
    child's process tree is also polled (:func:`watch_tree`) for ``tree_rss_mb``, the peak of the tree's summed
    RSS, ``root_rss_mb``, the child's own peak, and ``others_rss_mb``, its descendants' own peaks."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
    stop, peaks = threading.Event(), {"sum": 0.0, "each": {}}
    watcher = threading.Thread(target=watch_tree, args=(child.pid, stop, peaks), daemon=True)
    if tree:
        watcher.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    if tree:
        watcher.join()
    out, err = child.stdout.read(), child.stderr.read()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    found = {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, **(json.loads(lines[-1]) if lines else {})}
    if tree:
        found.update(tree_rss_mb=peaks["sum"], root_rss_mb=peaks["each"].pop(child.pid, 0.0),
                     others_rss_mb=sorted(peaks["each"].values(), reverse=True))
    return found


# -- set-up --------------------------------------------------------------------------------

def make_models(workdir: Path, names: tuple[str, ...] = ("hgb", "logistic", "hgb500", "topk")) -> dict[str, Path]:
    """The models, fitted on 8 random features (topk: a logistic regression on the first 4 only, which the top-k
    case's users and items carry, 2 each)."""
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.random((50_000, 8)), columns=FEATURES)
    y = (x.f0 + x.f1 * x.f2 + rng.normal(scale=0.3, size=len(x))) > 0.8
    paths = {}
    for name, model in (("hgb", HistGradientBoostingClassifier(max_iter=100, random_state=0)),
                        ("logistic", LogisticRegression()),
                        # a model as costly to score as many production ones: 500 trees of 63 leaves
                        ("hgb500", HistGradientBoostingClassifier(max_iter=500, max_leaf_nodes=63, early_stopping=False,
                                                                  random_state=0)),
                        ("topk", LogisticRegression())):
        if name not in names:
            continue
        paths[name] = workdir / f"{name}.joblib"
        joblib.dump(model.fit(x[TOPK_FEATURES] if name == "topk" else x, y), paths[name])
    return paths


def make_inputs(url: str, table: str, rows: int) -> None:
    """``rows`` rows of an id and 8 random features, made inside the database where it can."""
    features = ", ".join(f"random() AS {f}" for f in FEATURES)
    if url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} AS SELECT g::bigint AS id, {features} "
                         f"FROM generate_series(1, {rows}) g")
            conn.execute(f"ANALYZE {table}")
        return
    if url.startswith(("mysql", "mariadb")):
        from sqlalchemy import text

        from pipeline.database.engines import make_engine

        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(text(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, "
                              f"{', '.join(f + ' DOUBLE' for f in FEATURES)}) ENGINE=InnoDB"))
            conn.execute(text(f"INSERT INTO {table} SELECT seq, {', '.join('RAND()' for _ in FEATURES)} "
                              f"FROM seq_1_to_{rows}"))
            conn.execute(text(f"ANALYZE TABLE {table}")).all()
        engine.dispose()
        return
    import sqlite3

    import numpy as np

    rng = np.random.default_rng(rows)
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, {', '.join(f + ' REAL' for f in FEATURES)})")
    conn.execute("BEGIN")
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        ids = np.arange(start + 1, start + n + 1)
        conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * 9)})",
                         zip(ids.tolist(), *rng.random((8, n)).tolist()))
    conn.execute("COMMIT")
    conn.close()


#: The top-k case's K.
TOPK = 20


def make_topk_inputs(url: str, users: int, items: int, model: Path) -> dict[str, list[int]]:
    """``users`` (user_id, f0, f1), ``items`` (item_id, f2, f3) and ``purchases`` (user_id, item_id): about 50
    random items per user; users 1-4 bought all items but 5, K / 2, K - 1 and K (so 1-3 have fewer than K
    candidates left), users 5-10 their 3 K best items by ``model`` besides their random ones (more than two
    thirds of their natural top items excluded). The special users, by kind."""
    import joblib
    import numpy as np
    import pandas as pd
    import psycopg

    rng = np.random.default_rng(18)
    user_x, item_x = rng.random((users, 2)), rng.random((items, 2))
    left = {1: 5, 2: TOPK // 2, 3: TOPK - 1, 4: TOPK}  # user: items not bought
    random = np.arange(len(left), users)[:, None] * items + rng.integers(0, items, (users - len(left), 50))
    bought = [random.ravel(), *((user - 1) * items + rng.permutation(items)[n:] for user, n in left.items())]
    scorer = joblib.load(model)
    for user in range(5, 11):
        x = pd.DataFrame(np.hstack([np.repeat(user_x[user - 1:user], items, axis=0), item_x]), columns=TOPK_FEATURES)
        bought.append((user - 1) * items + np.argsort(-scorer.predict_proba(x)[:, 1], kind="stable")[:3 * TOPK])
    pairs = np.unique(np.concatenate(bought))
    tables = {"users": ("user_id bigint, f0 double precision, f1 double precision",
                        [np.arange(1, users + 1), *user_x.T]),
              "items": ("item_id bigint, f2 double precision, f3 double precision",
                        [np.arange(1, items + 1), *item_x.T]),
              "purchases": ("user_id bigint, item_id bigint", [pairs // items + 1, pairs % items + 1])}
    with psycopg.connect(url, autocommit=True) as conn:
        for table, (columns, values) in tables.items():
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} ({columns})")
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for row in zip(*(v.tolist() for v in values)):
                    copy.write_row(row)
            conn.execute(f"ANALYZE {table}")
    return {"fewer than K left": [1, 2, 3], "exactly K left": [4], "3 K best bought": list(range(5, 11))}


def write_job(workdir: Path, name: str, table: str | None, model: Path, domain: str | None = None,
              output: str = "") -> Path:
    """A job scoring ``table`` by ``id`` into the table ``name``; ``domain`` replaces its [domain] section's body
    and ``output`` is added to its [output] section."""
    path = workdir / f"{name}.toml"
    domain = domain or f'keys = ["id"]\nquery = "SELECT * FROM {table}"'
    path.write_text(f"""
[domain]
{domain}
[model]
path = "{model}"
method = "predict_proba"
[output]
table = "{name}"
{output}
""")
    return path


def fresh_schema(url: str, schema: str = "pipeline_bench") -> str:
    """An empty schema of its own, so that earlier runs and other users' tables do not interfere."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def fresh_database(url: str, database: str = "pipeline_bench") -> str:
    """An empty MariaDB database of its own; its URL."""
    from sqlalchemy.engine import make_url

    sys.path.insert(0, str(ROOT))
    from pipeline.database.engines import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database}")
        conn.exec_driver_sql(f"CREATE DATABASE {database}")
    engine.dispose()
    return make_url(url).set(database=database).render_as_string(hide_password=False)


# -- the measurements -----------------------------------------------------------------------

def contenders(url: str, table: str, model: Path, job: Path, naive_too: bool) -> dict[str, dict]:
    me = [sys.executable, str(Path(__file__).resolve())]
    found = {}
    if naive_too:
        found["naive"] = measure(me + ["naive", url, table, str(model), "bench_naive_out"])
    found["raw"] = measure(me + ["raw", url, table, str(model), "bench_raw_out"])
    found["pipeline"] = measure([sys.executable, "-m", "pipeline", "-q", "run", str(job), "--db", url, "--force"])
    return found


def contract_row(url: str, database: str, size: str, job: Path, run: dict) -> str:
    """One row of the contract table: its extra read time against the pipeline run of the same job."""
    found = measure([sys.executable, str(Path(__file__).resolve()), "contract", url, str(job)])
    extra = found["contract_read"] - found["raw_read"]
    share = extra / run["wall"]
    target = ("met" if share <= 0.05 else "**not met**") if SIZES[size] == 1_000_000 else "-"
    return (f"| {database} | {size} | {found['raw_read']:.2f} s | {found['contract_read']:.2f} s "
            f"(inputs {found['inputs']:.2f} s) | {extra:+.2f} s | {run['wall']:.1f} s | {share:+.1%} | {target} |")


def dask_row(url: str, job: Path, size: str, local: dict) -> str:
    """One row of the executor table: the same job with 1 and 2 Dask workers, against the local run."""
    run = [sys.executable, "-m", "pipeline", "-q", "run", str(job), "--db", url, "--force", "--executor", "dask"]
    one, two = (measure(run + ["--workers", str(n)]) for n in (1, 2))
    return (f"| {size} | {local['wall']:.1f} s, {local['rss_mb']:.0f} MB | {one['wall']:.1f} s, {one['rss_mb']:.0f} MB"
            f" | {two['wall']:.1f} s, {two['rss_mb']:.0f} MB | {two['wall'] / local['wall']:.2f}x |")


def topk_checks(url: str, table: str, versions: tuple[int, int], special: dict[str, list[int]],
                model: Path) -> dict:
    """Read both versions back from PostgreSQL: whether they hold the same rows (keys, rank, proba_true), whether
    each user has K rows ranked 1..n, or all its candidates where fewer than K are left, whether any row is a
    purchase, and, for the special users and 5 others, whether the rows are the top K that ``model`` gives
    the items not bought (ties to the smaller item_id)."""
    import joblib
    import numpy as np
    import pandas as pd
    import psycopg

    a, b = (f"{table}__v{v}" for v in versions)
    columns = "user_id, item_id, rank, proba_true"
    found: dict = {}
    with psycopg.connect(url) as conn:
        def one(query: str) -> tuple:
            return conn.execute(query).fetchone()

        found["rows"] = [one(f"SELECT COUNT(*) FROM {v}")[0] for v in (a, b)]
        found["purchases"] = one("SELECT COUNT(*) FROM (SELECT DISTINCT user_id, item_id FROM purchases) p")[0]
        found["domain"] = [one(f"SELECT domain_size, domain_fingerprint FROM pipeline_versions WHERE table_name = "
                               f"'{table}' AND version = {v}") for v in versions]
        found["differ"] = sum(one(f"SELECT COUNT(*) FROM (SELECT {columns} FROM {x} EXCEPT "
                                  f"SELECT {columns} FROM {y}) d")[0] for x, y in ((a, b), (b, a)))
        if found["differ"]:  # how they differ
            found["proba_diff"], found["rank_diff"] = one(
                f"SELECT MAX(ABS(x.proba_true - y.proba_true)), COUNT(*) FILTER (WHERE x.rank <> y.rank) "
                f"FROM {a} x FULL JOIN {b} y USING (user_id, item_id)")
        want = (f"SELECT u.user_id, LEAST({TOPK}, (SELECT COUNT(*) FROM items) - COUNT(p.item_id)) AS n "
                "FROM users u LEFT JOIN (SELECT DISTINCT user_id, item_id FROM purchases) p USING (user_id) "
                "GROUP BY u.user_id")
        found["short_users"], found["expected_rows"] = one(f"SELECT COUNT(*) FILTER (WHERE n < {TOPK}), SUM(n) "
                                                           f"FROM ({want}) w")
        found["wrong_counts"], found["bought"] = [], []
        for v in (a, b):
            got = (f"SELECT user_id, COUNT(*) AS n, MIN(rank) AS lo, MAX(rank) AS hi, COUNT(DISTINCT rank) AS ranks "
                   f"FROM {v} GROUP BY user_id")
            found["wrong_counts"].append(one(
                f"SELECT COUNT(*) FROM ({want}) w FULL JOIN ({got}) g USING (user_id) "
                "WHERE COALESCE(g.n, 0) <> COALESCE(w.n, 0) OR g.n > 0 AND (g.lo <> 1 OR g.hi <> g.n "
                "OR g.ranks <> g.n)")[0])
            found["bought"].append(one(f"SELECT COUNT(*) FROM {v} JOIN purchases USING (user_id, item_id)")[0])
        # the top K of a few users, scored here
        users = [u for kind in special.values() for u in kind]
        users += [u for (u,) in conn.execute("SELECT user_id FROM users WHERE user_id > 10 ORDER BY "
                                             "hashint8(user_id) LIMIT 5")]
        items = pd.DataFrame(conn.execute("SELECT item_id, f2, f3 FROM items ORDER BY item_id").fetchall(),
                             columns=["item_id", "f2", "f3"])
        scorer = joblib.load(model)
        found["topk_wrong"], found["topk_proba_diff"] = {a: 0, b: 0}, 0.0
        for user in users:
            f0, f1 = one(f"SELECT f0, f1 FROM users WHERE user_id = {user}")
            bought = {i for (i,) in conn.execute(f"SELECT item_id FROM purchases WHERE user_id = {user}")}
            mine = items[~items.item_id.isin(bought)].assign(f0=f0, f1=f1)
            proba = scorer.predict_proba(mine[TOPK_FEATURES])[:, 1]
            best = np.lexsort((mine.item_id.to_numpy(), -proba))[:TOPK]
            for v in (a, b):
                rows = conn.execute(f"SELECT item_id, proba_true FROM {v} WHERE user_id = {user} "
                                    "ORDER BY rank").fetchall()
                found["topk_wrong"][v] += [i for i, _ in rows] != mine.item_id.to_numpy()[best].tolist()
                if len(rows) == len(best):
                    found["topk_proba_diff"] = max(found["topk_proba_diff"],
                                                   float(np.abs(np.array([p for _, p in rows]) - proba[best]).max()))
        found["topk_users"] = len(users)
    return found


def topk_rows(workdir: Path, model: Path, users: int, items: int) -> tuple[list[str], list[str]]:
    """A top-k job over users x items with exclusions, run locally and then on a local Dask cluster of 2 workers
    (both measured with their process trees), and :func:`topk_checks` of the two versions: the table's rows
    and the checks' lines."""
    url = fresh_schema(PG_URL, "pipeline_bench_topk")
    print(f"top-k {users:,} x {items:,}: making inputs", flush=True)
    special = make_topk_inputs(url, users, items, model)
    domain = ('keys = ["user_id", "item_id"]\nexclude = "SELECT user_id, item_id FROM purchases"\n'
              'chunk_size = 100000\n[[domain.product]]\nquery = "SELECT user_id, f0, f1 FROM users"\n'
              '[[domain.product]]\nquery = "SELECT item_id, f2, f3 FROM items"')
    job = write_job(workdir, "bench_topk", None, model, domain=domain,
                    output=f'top_k = {TOPK}\ngroup_by = ["user_id"]\nrank_by = "proba_true"')
    run = [sys.executable, "-m", "pipeline", "-q", "run", str(job), "--db", url]
    print(f"top-k {users:,} x {items:,}: local run", flush=True)
    local = measure(run, tree=True)
    print(f"top-k {users:,} x {items:,}: dask run, 2 workers", flush=True)
    dask = measure(run + ["--force", "--executor", "dask", "--workers", "2"], tree=True)
    c = topk_checks(url, "bench_topk", (1, 2), special, model)
    limit = 1536
    rows = []
    for name, found, rows_written, (left, _) in zip(("local", "dask, 2 workers"), (local, dask), c["rows"],
                                                    c["domain"]):
        peak = max(found["rss_mb"], found["tree_rss_mb"])
        others = [m for m in found["others_rss_mb"] if m >= 1]  # not a process caught as it exited
        rows.append(f"| {name} | {users * items:,} | {left:,} | {rows_written:,} | {found['wall']:.1f} s | "
                    f"{found['rss_mb']:.0f} MB | {found['root_rss_mb']:.0f} MB"
                    + (f" + {' + '.join(f'{m:.0f}' for m in others)} MB" if others else "")
                    + f" | {found['tree_rss_mb']:.0f} MB | {'yes' if peak < limit else '**no**'} |")
        print(rows[-1], flush=True)
    same = c["differ"] == 0 and c["rows"][0] == c["rows"][1]
    (size, fingerprint), (dask_size, dask_fingerprint) = c["domain"]
    checks = [
        f"- Pairs left after the exclusions ({c['purchases']:,} distinct purchases), as each version records "
        f"them (domain_size): {size:,} / {dask_size:,}, expected {users * items - c['purchases']:,}; same domain "
        f"fingerprint: {'yes' if fingerprint == dask_fingerprint else '**NO**'}.",
        "- Same rows locally and on Dask (user_id, item_id, rank, proba_true, `EXCEPT` both ways): "
        + ("**yes**" if same else f"**NO**: {c['differ']:,} rows differ, proba_true by up to "
           f"{c['proba_diff']}, {c['rank_diff']:,} ranks differ") + " (target: the same result).",
        f"- K = {TOPK} rows per user ranked 1..n, or all its candidates where fewer are left "
        f"({c['short_users']} users have fewer than K; {c['expected_rows']:,} rows expected): users wrong "
        f"locally / on Dask: {c['wrong_counts'][0]} / {c['wrong_counts'][1]}.",
        f"- Rows that are purchases (excluded pairs): {c['bought'][0]} / {c['bought'][1]}.",
        f"- Top K recomputed outside the pipeline for {c['topk_users']} users (the special users: "
        + "; ".join(f"{kind} {', '.join(map(str, ids))}" for kind, ids in special.items())
        + "; and 5 others): users whose items or order differ locally / on Dask: "
        f"{' / '.join(str(n) for n in c['topk_wrong'].values())}; proba_true within "
        f"{c['topk_proba_diff']:.1e} of the bench's own predict_proba."]
    print(*checks, sep="\n", flush=True)
    return rows, checks


def topk_section(rows: list[str], checks: list[str], pairs: int) -> list[str]:
    return [f"Top-k of a {pairs / 1e6:g}M-pair product with exclusions (issue 18): `[[domain.product]]` of users "
            "(user_id and 2 features) x items (item_id and 2 features), `exclude = \"SELECT user_id, item_id FROM "
            f"purchases\"` (about 50 random items per user, nearly all items for a few users), a logistic "
            f"regression on the 4 features, `top_k = {TOPK}` by user on proba_true, chunks of 100,000 pairs; "
            "PostgreSQL; run locally, then `--executor dask --workers 2 --force`. Peak RSS: the run's process as "
            "wait4 reports it (the largest of its own, its reaped children's, and the bench's own peak when it "
            "started the run, which Linux carries over vfork and exec; never a sum); each process's own peak "
            "(VmHWM, coordinator + workers and helpers, polled every 0.1 s); and the peak of all the run's "
            "processes together (polled). Targets: peak RSS under 1.5 GB, and the same result locally and on "
            "Dask.", "",
            "| run | pairs | left after exclusions | rows written | wall | peak RSS (wait4) | each process's peak "
            "| all processes | < 1.5 GB |", "|---|---|---|---|---|---|---|---|---|", *rows, "", *checks, ""]


def incremental_rows(url: str, database: str, table: str, size: str, n: int, jobs: dict[str, Path]) -> list[str]:
    """Add 100 keys to the inputs, then time an incremental run against a full one per model, and compare the
    two tables. Each job's active version must hold the inputs before the 100 keys."""
    from sqlalchemy import text

    sys.path.insert(0, str(ROOT))
    from pipeline.database.engines import make_engine

    engine = make_engine(url)
    random = {"sqlite": "random() / 9223372036854775807.0 / 2 + 0.5", "mariadb": "RAND()"}.get(database, "random()")
    features = ", ".join(random for _ in FEATURES)
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} SELECT id + {n}, {features} FROM {table} WHERE id <= 100"))
    rows = []
    for kind, job in jobs.items():
        run = [sys.executable, "-m", "pipeline", "-q", "run", str(job), "--db", url]
        top_up = measure(run + ["--incremental", "--force"])
        full = measure(run + ["--force"])
        name = job.stem
        with engine.connect() as conn:
            last = conn.execute(text("SELECT MAX(version) FROM pipeline_versions WHERE table_name = :t"), {"t": name})
            b = last.scalar_one()
            columns = "id, proba_false, proba_true, ab_bucket, input_hash"
            differ = sum(conn.execute(text(f"SELECT COUNT(*) FROM (SELECT {columns} FROM {name}__v{x} EXCEPT "
                                           f"SELECT {columns} FROM {name}__v{y}) d")).scalar_one()
                         for x, y in ((b - 1, b), (b, b - 1)))
        rows.append(f"| {database} | {size} + 100 | {kind} | {full['wall']:.1f} s | {top_up['wall']:.1f} s | "
                    f"{top_up['wall'] / full['wall']:.2f}x | {'yes' if differ == 0 else f'NO: {differ} rows differ'} |")
    with engine.begin() as conn:
        conn.execute(text(f"DELETE FROM {table} WHERE id > {n}"))
    engine.dispose()
    return rows


#: The source's clock, as an application stamps ``updated_at``, and the type of that column.
BENCH_NOW = {"postgresql": ("now()", "timestamptz"), "mariadb": ("NOW(6)", "DATETIME(6)"),
             "sqlite": ("strftime('%Y-%m-%d %H:%M:%f', 'now')", "TEXT")}


def changes_rows(url: str, database: str, size: str, n: int, workdir: Path, models: dict[str, Path]) -> list[str]:
    """A change-driven top-up against a full run, per model: inputs with an indexed ``updated_at`` and a table of
    deleted keys; a full run takes the watermark, then 0.1% of the keys change (80% updated, 10% inserted, 10%
    deleted) and the top-up (``--incremental``) and a full run (``--full --force``) are timed and compared."""
    from sqlalchemy import text

    sys.path.insert(0, str(ROOT))
    from pipeline.database.engines import make_engine

    table, gone = f"bench_changes_{size.lower()}", f"bench_changes_gone_{size.lower()}"
    make_inputs(url, table, n)
    now, kind = BENCH_NOW[database]
    random = {"sqlite": "random() / 9223372036854775807.0 / 2 + 0.5", "mariadb": "RAND()"}.get(database, "random()")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN updated_at {kind} NOT NULL DEFAULT '2000-01-01 00:00:00'"))
        conn.execute(text(f"CREATE INDEX {table}_updated ON {table} (updated_at)"))
        conn.execute(text(f"DROP TABLE IF EXISTS {gone}"))
        conn.execute(text(f"CREATE TABLE {gone} (id BIGINT, deleted_at {kind})"))
        conn.execute(text(f"CREATE INDEX {gone}_at ON {gone} (deleted_at)"))
    with engine.begin() as conn:  # statistics of updated_at, as a production table has them: else PostgreSQL
        # guesses a third of the rows match `updated_at >= :since` and reads the whole table for the changes
        conn.execute(text(f"{'ANALYZE TABLE' if database == 'mariadb' else 'ANALYZE'} {table}"))
    columns = ", ".join(["id", *FEATURES])
    rows = []
    for name, model in models.items():
        job = workdir / f"bench_changes_{name}_{size.lower()}.toml"
        job.write_text(f"""
[domain]
keys = ["id"]
query = "SELECT {columns} FROM {table}"
changed = "SELECT {columns} FROM {table} WHERE updated_at >= :since"
removed = "SELECT id FROM {gone} WHERE deleted_at >= :since"
[model]
path = "{model}"
method = "predict_proba"
[output]
table = "{job.stem}"
""")
        run = [sys.executable, "-m", "pipeline", "-q", "run", str(job), "--db", url]
        subprocess.run(run + ["--full", "--force"], check=True, capture_output=True)  # the watermark to top up from
        changed, added, deleted = n * 8 // 10_000, n // 10_000, n // 10_000
        low, top = len(rows) * (deleted + changed), n + len(rows) * added  # each model's run changes other keys
        with engine.begin() as conn:
            conn.execute(text(f"UPDATE {table} SET f0 = {random}, updated_at = {now} "
                              f"WHERE id > {low + deleted} AND id <= {low + deleted + changed}"))
            conn.execute(text(f"INSERT INTO {table} ({columns}, updated_at) SELECT id + {top - low - deleted}, "
                              f"{', '.join(random for _ in FEATURES)}, {now} FROM {table} "
                              f"WHERE id > {low + deleted} AND id <= {low + deleted + added}"))
            conn.execute(text(f"INSERT INTO {gone} SELECT id, {now} FROM {table} WHERE id > {low} AND id <= "
                              f"{low + deleted}"))
            conn.execute(text(f"DELETE FROM {table} WHERE id > {low} AND id <= {low + deleted}"))
        top_up = measure(run + ["--incremental"])
        full = measure(run + ["--full", "--force"])
        with engine.connect() as conn:
            last = conn.execute(text("SELECT MAX(version) FROM pipeline_versions WHERE table_name = :t"),
                                {"t": job.stem}).scalar_one()
            compared = "id, proba_false, proba_true, ab_bucket, input_hash"
            differ = sum(conn.execute(text(f"SELECT COUNT(*) FROM (SELECT {compared} FROM {job.stem}__v{x} EXCEPT "
                                           f"SELECT {compared} FROM {job.stem}__v{y}) d")).scalar_one()
                         for x, y in ((last - 1, last), (last, last - 1)))
            count = conn.execute(text(f"SELECT COUNT(*) FROM {job.stem}__v{last - 1}")).scalar_one()
        ratio = top_up["wall"] / full["wall"]
        rows.append(f"| {database} | {size} ({count:,} after) | {name} | {changed + added + deleted:,} | "
                    f"{full['wall']:.1f} s | {top_up['wall']:.1f} s | {ratio:.2f}x | "
                    f"{'yes' if differ == 0 else f'NO: {differ} rows differ'} |")
        print(rows[-1], flush=True)
    engine.dispose()
    return rows


CHANGES_HEADER = [
    "Change-driven top-up: the job has `[domain] changed` (rows with `updated_at >= :since`, indexed) and "
    "`removed` (a table of deleted keys); after a full run, 0.1% of the keys change (0.08% updated, 0.01% inserted, "
    "0.01% deleted), then `pipeline run --incremental` (reads and scores only those; on PostgreSQL adds them to the "
    "active version's lineage, elsewhere copies the rest inside the database) against a full `pipeline run --full "
    "--force`; hgb is the bench's model (100 trees), hgb500 a "
    "costlier one (500 trees of 63 leaves); `same table` compares the two versions row for row in the database. "
    "Target (issue 18, at 10M rows): top-up / full at most 0.30 with the cheap model, 0.10 with the costly one.", "",
    "| database | rows | model | keys changed | full run | top-up | top-up / full | same table |",
    "|---|---|---|---|---|---|---|---|"]


def flip_and_lookups(url: str, table: str, rows: int) -> dict:
    """Median flip and rollback times, and point lookups through the view against the version table."""
    import numpy as np
    from sqlalchemy import text

    from pipeline import activate, rollback
    from pipeline.database.engines import make_engine

    engine = make_engine(url)
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as conn:
        active = conn.execute(text("SELECT version FROM pipeline_pointer WHERE table_name = :t "
                                   "AND alias = 'champion'"), {"t": table}).scalar_one()
    flips, backs = [], []
    for _ in range(10):
        started = time.perf_counter()
        rollback(engine, table)
        backs.append(time.perf_counter() - started)
        started = time.perf_counter()
        activate(engine, table, active)
        flips.append(time.perf_counter() - started)
    rng = np.random.default_rng(1)
    keys = rng.integers(1, rows + 1, 2000).tolist()
    timings = {}
    with engine.connect() as conn:
        for name, source in (("view", table), ("direct", f"{table}__v{active}")):
            spent = []
            for key in keys:
                started = time.perf_counter()
                conn.execute(text(f"SELECT proba_true FROM {quote(source)} WHERE id = :k"), {"k": key}).scalar()
                spent.append(time.perf_counter() - started)
            timings[name] = np.percentile(spent, [50, 99]) * 1000
        explain = {"postgresql": "EXPLAIN (COSTS OFF) ", "sqlite": "EXPLAIN QUERY PLAN "}.get(engine.dialect.name,
                                                                                             "EXPLAIN ")
        plan = [" ".join(map(str, r)) if len(r) > 1 else r[0]
                for r in conn.execute(text(f"{explain}SELECT proba_true FROM {quote(table)} WHERE id = 42"))]
    engine.dispose()
    return {"flip_ms": statistics.median(flips) * 1000, "rollback_ms": statistics.median(backs) * 1000,
            "view": timings["view"], "direct": timings["direct"], "plan": plan}


PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PGBENCH_SECONDS = int(os.environ.get("PIPELINE_BENCH_PGBENCH_SECONDS", "10"))


def pgbench_tps(url: str, source: str, rows: int, protocol: str) -> float:
    """Transactions per second of 8 pgbench clients doing point lookups on ``source``."""
    from sqlalchemy.engine import make_url

    script = Path(tempfile.mkstemp(suffix=".sql")[1])
    script.write_text(f"\\set k random(1, {rows})\nSELECT proba_true FROM {source} WHERE id = :k;\n")
    parsed = make_url(url)
    options = parsed.query.get("options", "")
    env = {**os.environ, "PGOPTIONS": options} if options else None
    done = subprocess.run([PGBENCH, "-n", "-c", "8", "-j", "2", "-T", str(PGBENCH_SECONDS), "-M", protocol,
                           "-f", str(script), "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432),
                           "-U", parsed.username or "postgres", parsed.database or "postgres"],
                          capture_output=True, text=True, env=env, check=True)
    script.unlink()
    return float(next(line for line in done.stdout.splitlines() if line.startswith("tps")).split()[2])


def lineage_job(url: str, workdir: Path, model: Path, rows: int) -> Path:
    """A change-driven job (``[domain] changed``) over ``rows`` inputs with an ``updated_at``: on PostgreSQL its
    top-ups add versions to one lineage, whose view the serving bench measures beside the plain one."""
    import psycopg

    make_inputs(url, "bench_inputs_lineage", rows)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE bench_inputs_lineage ADD COLUMN updated_at timestamptz NOT NULL "
                     "DEFAULT '2000-01-01'")
        conn.execute("CREATE INDEX ON bench_inputs_lineage (updated_at)")
        conn.execute("ANALYZE bench_inputs_lineage")
    columns = ", ".join(["id", *FEATURES])
    return write_job(workdir, "serving_lineage", None, model, domain=(
        f'keys = ["id"]\nquery = "SELECT {columns} FROM bench_inputs_lineage"\n'
        f'changed = "SELECT {columns} FROM bench_inputs_lineage WHERE updated_at >= :since"'), output="keep = 100")


def top_up(url: str, job_path: Path, engine, rows: int, seed: int) -> None:  # noqa: ANN001 (an Engine)
    """Change 0.1% of the lineage job's keys (random ones) and top its active version up with them."""
    import numpy as np
    import psycopg

    from pipeline import load_job, run_job

    keys = np.random.default_rng(seed).choice(np.arange(1, rows + 1), rows // 1000, replace=False).tolist()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE bench_inputs_lineage SET f0 = random(), updated_at = now() WHERE id = ANY(%s)", (keys,))
    result = run_job(load_job(job_path), engine, incremental=True)
    if not result.top_up or result.lineage is None:
        raise SystemExit(f"serving bench: version {result.version} of serving_lineage is not a top-up in a lineage: "
                         f"{result.full_because}")


def reference_view(url: str, rows: int) -> str:
    """Issue 13's reference, built by hand with plain SQL beside the pipeline's: a view gated by a one-row-per-alias
    heap over a table LIST-partitioned on ``model_version`` with two partitions of ``rows`` rows (the pipeline's
    output columns and key), which the issue measured as its 0.45x and 0.7x targets. pgbench measures it in the
    same run, so that the pipeline's view is compared with the design the figures came from on the same machine,
    at the same moment."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE reference__gate (alias text NOT NULL, version integer NOT NULL)")
        conn.execute("INSERT INTO reference__gate VALUES ('champion', 2)")
        conn.execute("CREATE TABLE reference__p (id bigint NOT NULL, proba_false double precision, proba_true "
                     "double precision, model_version integer NOT NULL) PARTITION BY LIST (model_version)")
        for version in (1, 2):
            conn.execute(f"CREATE TABLE reference__v{version} PARTITION OF reference__p FOR VALUES IN ({version})")
            conn.execute(f"INSERT INTO reference__v{version} SELECT i, random(), random(), {version} "
                         f"FROM generate_series(1, {rows}) i")
            conn.execute(f"ALTER TABLE reference__v{version} ADD PRIMARY KEY (id)")
        conn.execute("CREATE VIEW reference AS SELECT id, proba_false, proba_true, model_version FROM reference__p "
                     "WHERE model_version = (SELECT g.version FROM reference__gate g WHERE g.alias = 'champion')")
        conn.execute("VACUUM ANALYZE reference__gate, reference__p")
    return "reference"


def serving_rows(url: str, workdir: Path, model: Path) -> tuple[list[str], list[str], list[str], list[str], str,
                                                                 str]:
    """pgbench and a single client through the view, through a lineage's view and directly, at 2, 10 and 50
    retained versions; pgbench through the issue's reference design too (:func:`reference_view`)."""
    import numpy as np
    import psycopg
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from pipeline import activate, load_job, rollback, run_job
    from pipeline.database.engines import make_engine

    rows = 100_000
    table = "bench_inputs_serving"
    parsed = make_url(url)
    plain = parsed.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    options = parsed.query.get("options", "")
    make_inputs(url, table, rows)
    job_path = write_job(workdir, "serving", table, model, output="keep = 100")
    lineage_path = lineage_job(url, workdir, model, rows)
    engine = make_engine(url)
    pg_rows, lineage_rows, reference_rows, client_rows, made = [], [], [], [], 0
    sources = {"view": "serving", "lineage": "serving_lineage", "direct": ""}
    reference = reference_view(url, rows)
    for versions in (2, 10, 50):
        while made < versions:
            run_job(load_job(job_path), engine, force=True)
            if made == 0:
                run_job(load_job(lineage_path), engine)
            else:
                top_up(url, lineage_path, engine, rows, made)
            made += 1
        sources["direct"] = f"serving__v{made}"
        tps: dict[tuple[str, str], list[float]] = {}
        for protocol in ("simple", "prepared"):
            for _ in range(3):
                for name, source in {**sources, "reference": reference}.items():
                    tps.setdefault((protocol, name), []).append(pgbench_tps(url, source, rows, protocol))
        med = {k: statistics.median(v) for k, v in tps.items()}
        for found, name in ((pg_rows, "view"), (lineage_rows, "lineage")):
            found.append(f"| {versions} | " + " | ".join(
                f"{med[p, name]:,.0f} | {med[p, 'direct']:,.0f} | {med[p, name] / med[p, 'direct']:.2f}x"
                for p in ("simple", "prepared")) + " |")
            print(found[-1], flush=True)
        reference_rows.append(f"| {versions} | " + " | ".join(
            f"{med[p, 'reference']:,.0f} | {med[p, 'reference'] / med[p, 'direct']:.2f}x | "
            f"{med[p, 'view'] / med[p, 'reference']:.2f}x | {med[p, 'lineage'] / med[p, 'reference']:.2f}x"
            for p in ("simple", "prepared")) + " |")
        print(reference_rows[-1], flush=True)
        keys = np.random.default_rng(versions).integers(1, rows + 1, 2000).tolist()
        for flipping in (False, True):
            stop = threading.Event()

            def flipper() -> None:
                tick = time.monotonic()
                while not stop.is_set():
                    rollback(engine, "serving")
                    activate(engine, "serving", made)
                    tick += 0.2  # two flips every 0.2 s: ten a second
                    time.sleep(max(0.0, tick - time.monotonic()))

            thread = threading.Thread(target=flipper, daemon=True)
            if flipping:
                thread.start()
            for prepared in (False, True):
                spent: dict[str, list[float]] = {name: [] for name in sources}
                with psycopg.connect(plain, autocommit=True, options=options) as raw:
                    for key in keys:
                        for name, source in sources.items():
                            started = time.perf_counter()
                            raw.execute(f"SELECT proba_true FROM {source} WHERE id = %s", (key,),
                                        prepare=prepared).fetchone()
                            spent[name].append(time.perf_counter() - started)
                p50 = {name: np.percentile(spent[name], [50, 99]) * 1000 for name in sources}
                client_rows.append(
                    f"| {versions} | {'during flips' if flipping else 'idle'} | "
                    f"{'prepared' if prepared else 'unprepared'} | "
                    + " | ".join(f"{p50[n][0]:.3f} / {p50[n][1]:.3f} ms" for n in sources) + " | "
                    + " | ".join(f"{p50[n][0] - p50['direct'][0]:+.3f} ms" for n in ("view", "lineage")) + " |")
                print(client_rows[-1], flush=True)
            stop.set()
            if flipping:
                thread.join()
    with engine.connect() as conn:
        plan, lineage_plan = ("\n".join(r[0] for r in conn.execute(text(
            f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT proba_true FROM {view} WHERE id = 42")))
            for view in ("serving", "serving_lineage"))
    engine.dispose()
    return pg_rows, lineage_rows, reference_rows, client_rows, plan, lineage_plan


def serving_section(pg_rows: list[str], lineage_rows: list[str], reference_rows: list[str], client_rows: list[str],
                    plan: str, lineage_plan: str) -> list[str]:
    header = ["| retained versions | simple: view TPS | direct TPS | view / direct | prepared: view TPS | direct TPS "
              "| view / direct |", "|---|---|---|---|---|---|---|"]
    return [
        "Serving cost (issue 13), PostgreSQL, 100k rows per version: point lookups through the view against the "
        f"active version table directly. pgbench: 8 clients, {PGBENCH_SECONDS} s per run, medians of three runs "
        "interleaved view / lineage view / reference / direct. Targets: with 50 versions within 10% of 2; view / "
        "direct at least 0.45x simple and 0.7x prepared.", "", *header, *pg_rows, "",
        "The same, through the view of a change-driven job (`[domain] changed`), whose versions after the first are "
        "top-ups of 100 random keys (0.1%) in one lineage (see the README, *Lineages*), against the same direct "
        "lookups:", "", *header, *lineage_rows, "",
        "The issue's reference design, built by hand with plain SQL in the same schema (a view gated by a one-row "
        "heap over a table LIST-partitioned on the version, two partitions of 100k rows: the design whose figures "
        "the targets are), in the same interleaved runs: its ratio to direct, and the pipeline's views against it "
        "(1.00x: as cheap as the reference).", "",
        "| retained versions | simple: reference TPS | reference / direct | view / reference | lineage view / "
        "reference | prepared: reference TPS | reference / direct | view / reference | lineage view / reference |",
        "|---|---|---|---|---|---|---|---|---|", *reference_rows, "",
        "One client (psycopg, autocommit; each statement unprepared, then prepared on the server), 2,000 "
        "lookups each, view, lineage view and direct alternately, p50 / p99, idle and while another connection "
        "flips the plain view's pointer ten times a second. Target: p50 within 0.1 ms of direct.", "",
        "| retained versions | | statements | via view | via lineage view | direct | view p50 difference "
        "| lineage p50 difference |", "|---|---|---|---|---|---|---|---|", *client_rows, "",
        "Plan of a lookup through the view (50 versions retained):", "", "```", plan, "```", "",
        "Plan of a lookup through the lineage view (50 versions in the lineage):", "", "```", lineage_plan, "```", ""]


#: The commands an operator types when something is wrong, which must answer at once (issue 15: under 0.5 s).
STARTUP_COMMANDS = ("--help", "status", "versions", "rollback", "activate")


def startup_rows(workdir: Path, model: Path, databases: list[str]) -> list[str]:
    """Whole-process start-up of the operator's commands against a small table, median of 5 each, beside a bare
    ``python -c pass`` (the interpreter alone)."""
    folder = workdir / "startup"
    folder.mkdir(exist_ok=True)
    rows = []
    for database in databases:
        url = (fresh_schema(PG_URL, "pipeline_startup") if database == "postgresql"
               else f"sqlite:///{folder / 'startup.db'}")
        make_inputs(url, "startup_inputs", 1_000)
        job = write_job(folder, "startup", "startup_inputs", model)
        for _ in range(2):
            subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", "--force", str(job), "--db", url],
                           check=True)
        cli = [sys.executable, "-m", "pipeline", "-q"]
        floor = ("import click, sqlalchemy, sqlalchemy.dialects.sqlite.pysqlite" if database == "sqlite" else
                 "import click, sqlalchemy, sqlalchemy.dialects.postgresql.psycopg, psycopg")
        commands = {"python -c pass": [sys.executable, "-c", "pass"], "floor": [sys.executable, "-c", floor],
                    "--help": [*cli, "--help"],
                    "status": [*cli, "status", "--db", url], "versions": [*cli, "versions", "startup", "--db", url],
                    "rollback": [*cli, "rollback", "startup", "--db", url],
                    "activate": [*cli, "activate", "startup", "2", "--db", url]}
        walls: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(5):
            for name, command in commands.items():  # rollback then activate: each moves the pointer
                walls[name].append(measure(command, env={"PIPELINE_DATABASE_URL": ""})["wall"])
        medians = {name: statistics.median(w) for name, w in walls.items()}
        rows.append(f"| {database} | {medians['python -c pass']:.2f} s | {medians['floor']:.2f} s | "
                    + " | ".join(f"{medians[c]:.2f} s" for c in STARTUP_COMMANDS)
                    + f" | {'yes' if max(medians[c] for c in STARTUP_COMMANDS) < 0.5 else 'no'} |")
        print(rows[-1], flush=True)
    return rows


def startup_section(rows: list[str]) -> list[str]:
    return ["Start-up of the commands an operator types at 3 am (whole processes, median of 5, against a "
            "1,000-row table with two versions; `python -c pass` is the interpreter alone, and the floor is the "
            "interpreter importing click, SQLAlchemy and the database's driver, which any command that opens the "
            "database pays). Target (issue 15): each under 0.5 s.", "",
            "| database | python -c pass | floor | " + " | ".join(f"`{c}`" for c in STARTUP_COMMANDS)
            + " | all < 0.5 s |",
            "|---|---|---|" + "---|" * len(STARTUP_COMMANDS) + "---|", *rows, ""]


def machine(pg_url: str) -> list[str]:
    import importlib.metadata as md
    import sqlite3

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    versions = ", ".join(f"{p} {md.version(p)}" for p in ("pandas", "numpy", "scikit-learn", "SQLAlchemy",
                                                            "psycopg", "pyarrow", "adbc-driver-postgresql"))
    try:
        import psycopg

        with psycopg.connect(pg_url) as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]
    except Exception as exc:  # the report says why PostgreSQL is missing
        pg = f"unavailable ({exc})"
    return [f"- Machine: {cpu}, {os.cpu_count()} cores, {memory} GiB; {platform.platform()}",
            f"- Python {platform.python_version()}; PostgreSQL {pg} (loopback); SQLite {sqlite3.sqlite_version}",
            f"- {versions}",
            f"- Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; figures are noisy on a shared "
            "machine: compare ratios within one run."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1M,10M")
    parser.add_argument("--databases", default="postgresql,sqlite,mariadb")
    parser.add_argument("--naive-max", default="10M", help="largest size the naive script is run at")
    parser.add_argument("--only", choices=("contract", "serving", "startup", "topk", "changes"),
                        help="measure only this part (and the pipeline run it is set against); the report is "
                             "printed, and written only where --out says")
    parser.add_argument("--models", default="hgb,hgb500", help="with --only changes: the models measured")
    parser.add_argument("--out", default=None, help="where the report goes (default bench/results.md, "
                                                     "except with --only)")
    parser.add_argument("--topk-shape", default="5000x20000", help="users x items of the top-k case (PostgreSQL)")
    args = parser.parse_args()
    if args.out is None and not args.only:
        args.out = str(HERE / "results.md")
    sizes = [s for s in args.sizes.split(",") if s]
    databases = [d for d in args.databases.split(",") if d]
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    users, items = map(int, args.topk_shape.lower().split("x"))
    models = make_models(workdir, {"topk": ("topk",), "changes": ("hgb", "hgb500"),
                                   None: ("hgb", "logistic", "hgb500", "topk")}.get(args.only, ("hgb",)))
    if args.only == "changes":
        urls = {"postgresql": lambda: fresh_schema(PG_URL, "pipeline_bench_changes"),
                "mariadb": lambda: fresh_database(MYSQL_URL, "pipeline_bench_changes"),
                "sqlite": lambda: f"sqlite:///{workdir / 'bench.db'}"}
        chosen = {name: models[name] for name in args.models.split(",")}
        found = [row for database in databases for size in sizes
                 for row in changes_rows(urls[database](), database, size, SIZES[size], workdir, chosen)]
        report = ["# Benchmark results (only change-driven top-ups)", "", *machine(PG_URL), "", *CHANGES_HEADER,
                  *found, ""]
        if args.out:
            Path(args.out).write_text("\n".join(report))
        print("\n".join(report))
        return
    if args.only in ("startup", "serving", "topk"):
        section = (
            startup_section(startup_rows(workdir, models["hgb"], databases)) if args.only == "startup" else
            serving_section(*serving_rows(fresh_schema(PG_URL), workdir, models["hgb"])) if args.only == "serving" else
            topk_section(*topk_rows(workdir, models["topk"], users, items), users * items))
        report = [f"# Benchmark results (only {args.only})", "", *machine(PG_URL), "", *section]
        if args.out:
            Path(args.out).write_text("\n".join(report))
        print("\n".join(report))
        return
    rows_md, flips_md, dask_md, incremental_md, changes_md, contract_md, notes = [], [], [], [], [], [], []
    for database in databases:
        url = {"postgresql": lambda: fresh_schema(PG_URL), "mariadb": lambda: fresh_database(MYSQL_URL),
               "sqlite": lambda: f"sqlite:///{workdir / 'bench.db'}"}[database]()
        for size in sizes:
            n = SIZES[size]
            if database != "postgresql" and n > 1_000_000:  # SQLite and MariaDB stop at 1M: make bench stays short
                continue
            table = f"bench_inputs_{size.lower()}"
            print(f"{database} {size}: making inputs", flush=True)
            make_inputs(url, table, n)
            for kind in ("hgb", "logistic") if size == "1M" and not args.only else ("hgb",):
                name = f"bench_{kind}_{size.lower()}"
                job = write_job(workdir, name, table, models[kind])
                print(f"{database} {size} {kind}: measuring", flush=True)
                if args.only == "contract":
                    found = {"pipeline": measure([sys.executable, "-m", "pipeline", "-q", "run", str(job),
                                                  "--db", url, "--force"])}
                    contract_md.append(contract_row(url, database, size, job, found["pipeline"]))
                    print(contract_md[-1], flush=True)
                    continue
                found = contenders(url, table, models[kind], job, SIZES[args.naive_max] >= n)
                raw_sum = found["raw"]["read"] + found["raw"]["score"] + found["raw"]["write"]
                base = found.get("naive", {}).get("wall")
                rows_md.append(
                    f"| {database} | {size} | {kind} | "
                    + (f"{base:.1f} s, {found['naive']['rss_mb']:.0f} MB" if base else "not run")
                    + f" | {found['raw']['read']:.2f} + {found['raw']['score']:.2f} + {found['raw']['write']:.2f}"
                    f" = {raw_sum:.2f} s | {found['raw']['wall']:.1f} s, {found['raw']['rss_mb']:.0f} MB"
                    f" | {found['pipeline']['wall']:.1f} s, {found['pipeline']['rss_mb']:.0f} MB"
                    f" | {found['pipeline']['wall'] / found['raw']['wall']:.2f}x"
                    f" | {(base / found['pipeline']['wall']) if base else float('nan'):.1f}x |")
                print(rows_md[-1], flush=True)
                if kind == "hgb" and database != "mariadb":  # before the incremental rows add keys to the inputs
                    contract_md.append(contract_row(url, database, size, job, found["pipeline"]))
                    print(contract_md[-1], flush=True)
                if database == "postgresql" and kind == "hgb" and n >= 1_000_000:
                    dask_md.append(dask_row(url, job, size, found["pipeline"]))
                    print(dask_md[-1], flush=True)
                if kind == "hgb" and n >= 1_000_000:
                    jobs = {"hgb": job}
                    if n == 1_000_000:  # the costly model once, at 1M: its full runs are long
                        jobs["hgb500"] = write_job(workdir, f"bench_hgb500_{size.lower()}", table, models["hgb500"])
                        subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", str(jobs["hgb500"]),
                                        "--db", url], check=True)
                    incremental_md.extend(incremental_rows(url, database, table, size, n, jobs))
                    print(*incremental_md[-len(jobs):], sep="\n", flush=True)
                    changes_md.extend(changes_rows(url, database, size, n, workdir,
                                                   {k: models[k] for k in jobs}))
        if args.only:
            continue
        largest = max((s for s in sizes if database == "postgresql" or SIZES[s] <= 1_000_000), key=SIZES.get)
        for size in ("1k", largest):
            n, name = SIZES[size], f"bench_hgb_{size.lower()}"
            table = f"bench_inputs_{size.lower()}"
            if size == "1k":
                make_inputs(url, table, n)
                write_job(workdir, name, table, models["hgb"])
                runs = 2
            else:
                runs = 1  # the measured run made version 1
            for _ in range(runs):
                subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", "--force", str(workdir / f"{name}.toml"),
                                "--db", url], check=True)
            f = flip_and_lookups(url, name, n)
            flips_md.append(f"| {database} | {size} | {f['flip_ms']:.1f} ms | {f['rollback_ms']:.1f} ms | "
                            f"{f['view'][0]:.3f} / {f['view'][1]:.3f} ms | "
                            f"{f['direct'][0]:.3f} / {f['direct'][1]:.3f} ms | "
                            f"{f['view'][0] / f['direct'][0]:.2f}x |")
            notes.append(f"Plan of a point lookup through the view ({database}, {size}, two versions):\n\n```\n"
                         + "\n".join(f["plan"]) + "\n```")
            print(flips_md[-1], flush=True)
    serving_md = (serving_section(*serving_rows(fresh_schema(PG_URL), workdir, models["hgb"]))
                  if "postgresql" in databases and not args.only else [])
    startup_md = startup_section(startup_rows(workdir, models["hgb"], databases)) if not args.only else []
    topk_md = (topk_section(*topk_rows(workdir, models["topk"], users, items), users * items)
               if "postgresql" in databases and not args.only else [])
    contract_section = [
        "The input contract's cost: the domain read in one process through the pipeline's reader, which "
        "conforms every chunk to the contract, plus `Model.inputs` (contract), against the same rows read "
        "the way the readers did before it (raw), median of 3 each; `extra` is contract - raw, set against the "
        "pipeline run of the same size in this run. Target (issue 12): extra at most 5% of a 1M-row run.", "",
        "| database | rows | raw read | contract read (of which Model.inputs) | extra | pipeline run "
        "| extra / run | ≤ 5% at 1M |", "|---|---|---|---|---|---|---|---|", *contract_md, ""]
    if args.only:
        report = ["# Benchmark results (only the input contract)", "", *machine(PG_URL), "", *contract_section]
        if args.out:
            Path(args.out).write_text("\n".join(report))
        print("\n".join(report))
        return
    report = ["# Benchmark results", "", *machine(PG_URL), "",
              "Whole processes, imports included: wall time and peak RSS. Raw limit steps are timed alone "
              "inside one process (read + score + write). `vs raw` is pipeline wall / raw wall; "
              "`vs naive` is naive wall / pipeline wall.", "",
              "| database | rows | model | naive pandas | raw limit steps | raw limit process | pipeline run "
              "| vs raw | vs naive |", "|---|---|---|---|---|---|---|---|---|", *rows_md, "",
              "Flip and rollback (median of 10, the pointer moved between two versions), and 2,000 point "
              "lookups (p50 / p99) through the view and on the version table directly:", "",
              "| database | rows per version | flip | rollback | lookup via view | lookup direct | view / direct p50 |",
              "|---|---|---|---|---|---|---|", *flips_md, "",
              "The dask executor (`--executor dask`, a local cluster started by the run, 4 partitions per "
              "worker, each worker reading, scoring and COPYing its own partitions) against the local executor, "
              "on PostgreSQL with the HGB model. Wall time includes starting the cluster; RSS is wait4's: the "
              "largest of the coordinator's, its reaped workers' and the bench's own at the start, never a sum.", "",
              "| rows | local | dask, 1 worker | dask, 2 workers | 2 workers / local |", "|---|---|---|---|---|",
              *dask_md, "", *topk_md,
              "Incremental top-up: 100 keys added to the domain, then `pipeline run --incremental` (scores the "
              "100 new keys, copies the rest inside the database) against a full `pipeline run --force` of the "
              "same domain; hgb500 is a costlier model (500 trees of 63 leaves); `same table` compares the two "
              "versions row for row in the database.", "",
              "| database | rows | model | full run | incremental run | incremental / full | same table |",
              "|---|---|---|---|---|---|---|", *incremental_md, "", *CHANGES_HEADER, *changes_md, "",
              *contract_section, *serving_md, *startup_md,
              *notes, ""]
    Path(args.out).write_text("\n".join(report))
    print("\n".join(report))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("naive", "raw", "contract"):
        print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
