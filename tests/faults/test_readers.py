"""Readers never notice a flip: 8 readers through the view while another connection flips 10 times a second.

Each reader alternates point lookups (checked against the version they claim to come
from) and full counts (one version, every row); a slow reader keeps the view open a
second at a time. The test runs once without flips for
a baseline and once with them; the p99 of lookups during flips must stay within 5x.
PIPELINE_READER_SECONDS sets the flipping phase's length (20 s by default).
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timezone

import numpy as np
import pytest
from sqlalchemy import text

from pipeline import activate, load_job, run_job
from pipeline.database.engines import make_engine

from fakemodels import Scripted
from helpers import (CHANGES_QUERY, CUSTOMERS_QUERY, SCRIPTED_JOB, change, customers_frame, report, write_source,
                     write_table)

ROWS = 2000
READERS = 8
SECONDS = float(os.environ.get("PIPELINE_READER_SECONDS", "20"))
BASELINE_SECONDS = max(2.0, SECONDS / 4)


def hammer(url: str, seconds: float, flip: bool, engine) -> dict[str, object]:
    """Run the readers (and the flipper) for ``seconds``; return latencies, errors and mixed reads."""
    expected = {v: {k: k * v for k in range(1, ROWS + 1)} for v in (1, 2)}  # Scripted(scale=v): x1 = customer_id
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []
    mixed: list[object] = []
    flips = [0]

    def read(seed: int) -> None:
        rng = np.random.default_rng(seed)
        reader = make_engine(url)
        try:
            with reader.connect() as conn:
                while not stop.is_set():
                    try:
                        key = int(rng.integers(1, ROWS + 1))
                        started = time.perf_counter()
                        rows = conn.execute(text("SELECT prediction, model_version FROM scores "
                                                 "WHERE customer_id = :k"), {"k": key}).all()
                        latencies.append(time.perf_counter() - started)
                        if len(rows) != 1 or rows[0][0] != expected[rows[0][1]][key]:
                            mixed.append(("lookup", key, rows))
                        counts = conn.execute(text("SELECT model_version, COUNT(*) FROM scores "
                                                   "GROUP BY model_version")).all()
                        if len(counts) != 1 or counts[0][1] != ROWS:
                            mixed.append(("count", counts))
                        conn.commit()
                    except Exception as exc:  # every error a reader meets is a failure of the flip
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        conn.rollback()
        finally:
            reader.dispose()

    def flipper() -> None:
        version, tick = 1, time.monotonic()
        while not stop.is_set():
            version = 3 - version
            activate(engine, "scores", version)
            flips[0] += 1
            tick += 0.1  # ten flips a second, however long each takes
            time.sleep(max(0.0, tick - time.monotonic()))

    def slow_reader() -> None:
        """Holds the view (and the old version's table) open for a second at a time."""
        reader = make_engine(url)
        with reader.connect() as conn:
            while not stop.is_set():
                conn.execute(text("SELECT COUNT(*) FROM scores")).scalar()
                time.sleep(1.0)
                conn.commit()
        reader.dispose()

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(READERS)]
    if flip:
        threads += [threading.Thread(target=flipper, daemon=True), threading.Thread(target=slow_reader, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return {"latencies": np.array(latencies), "errors": errors, "mixed": mixed, "flips": flips[0]}


def test_readers_never_notice_flips(db_url, engine, write_job, request):
    frame = customers_frame(ROWS)
    frame["x1"] = frame.customer_id.astype(float)
    write_table(engine, "customers", frame)
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted(scale=1.0))), engine)
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted(scale=2.0))), engine)

    quiet = hammer(db_url, BASELINE_SECONDS, flip=False, engine=engine)
    busy = hammer(db_url, SECONDS, flip=True, engine=engine)

    p = {name: np.percentile(run["latencies"], [50, 99]) * 1000 for name, run in (("quiet", quiet), ("busy", busy))}
    dialect = request.node.callspec.params["db_url"]
    report(f"reader test on {dialect}: {busy['flips']} flips in {SECONDS:g}s, {len(busy['latencies'])} lookups; "
           f"lookup p50/p99 without flips {p['quiet'][0]:.2f}/{p['quiet'][1]:.2f} ms, "
           f"during flips {p['busy'][0]:.2f}/{p['busy'][1]:.2f} ms; "
           f"errors {len(busy['errors'])}, mixed reads {len(busy['mixed'])}")
    assert busy["errors"] == [] and quiet["errors"] == []
    assert busy["mixed"] == [] and quiet["mixed"] == []
    # the flipper asks for ten a second; with eight readers on two shared cores a flip may outlast its 0.1 s slot
    # (155-181 of 200 here, the code of before as well): half of them keeps the test meaningful, and how fast
    # flips are is make bench's business, not a test's
    assert busy["flips"] >= SECONDS * 5
    assert p["busy"][1] <= 5 * p["quiet"][1]


def two_versions(url: str, rows: int, write_job, changes: bool = False):
    """Versions 1 and 2 of ``scores`` (keep = 1) over ``rows`` customers; its engine. With ``changes``, the job has
    ``[domain] changed`` (on PostgreSQL each full run then begins a lineage, which top-ups add to)."""
    engine = make_engine(url)
    frame = customers_frame(rows)
    frame["x1"] = frame.customer_id.astype(float)
    body = SCRIPTED_JOB.replace('table = "scores"', 'table = "scores"\nkeep = 1')
    if changes:
        write_source(engine, frame)
        body = body.replace(CUSTOMERS_QUERY, CHANGES_QUERY)
    else:
        write_table(engine, "customers", frame)
    path = write_job(body, model=Scripted())
    for _ in range(2):
        run_job(load_job(path), engine, force=True)
    return engine


def look_up(url: str, lookup: str, stop: threading.Event, lookups: list, errors: list,
            setup: str | None = None) -> None:
    """Every 10 ms, the version ``lookup`` reads, with when (or the error it met: each is a failure)."""
    reader = make_engine(url)
    with reader.connect() as conn:
        if setup:
            conn.execute(text(setup))
            conn.commit()
        while not stop.is_set():
            try:
                version = conn.execute(text(lookup)).scalar_one()
                conn.commit()
                lookups.append((time.time(), version))
            except Exception as exc:  # every error is a failure of the publish
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                conn.rollback()
            time.sleep(0.01)
    reader.dispose()


def analyse(engine, query: str, out: list) -> None:
    """A long analytic query through the view; its rows (or error) when it ends."""
    with engine.connect() as conn:
        try:
            out.append(conn.execute(text(query)).all())
        except Exception as exc:
            out.append(exc)


def test_no_reader_can_stop_a_run_or_a_rollback_on_mariadb(mysql_url, tmp_path, write_job):
    """MariaDB, held across a whole run with ``keep = 1``: a consistent-snapshot transaction that read the view (what
    ``mariadb-dump --single-transaction`` opens), a connection left idle in transaction, a long analytic query
    through the view, and a dump. The run exits 0, recorded as succeeded; no lookup takes 100 ms (nothing queues
    behind a metadata lock); the snapshot keeps its version whole; a rollback meanwhile takes effect at once; and
    the table the readers held is retired by a later gc."""
    import subprocess
    import sys

    from sqlalchemy.engine import make_url

    from pipeline import rollback
    from pipeline.serve.retention import gc

    rows = 5000
    engine = two_versions(mysql_url, rows, write_job)
    stop = threading.Event()
    lookups: list[tuple[float, int]] = []
    errors: list[str] = []

    url = make_url(mysql_url)
    # as a plain client or mariadb-dump opens them: REPEATABLE READ (the pipeline's own are READ COMMITTED)
    snapshot, idle = (engine.connect().execution_options(isolation_level="REPEATABLE READ") for _ in "si")
    analytic: list = []
    # a lookup that waits 100 ms fails
    lookup = "SET STATEMENT max_statement_time = 0.1 FOR SELECT model_version FROM scores WHERE customer_id = 7"
    query = "SELECT model_version, COUNT(*), SLEEP(60) FROM scores GROUP BY model_version"
    threads = [threading.Thread(target=look_up, args=(mysql_url, lookup, stop, lookups, errors), daemon=True),
               threading.Thread(target=analyse, args=(engine, query, analytic), daemon=True)]
    try:
        snapshot.execute(text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
        assert snapshot.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY 1")).all() == [(2, rows)]
        idle.execute(text("SELECT prediction FROM scores WHERE customer_id = 1")).all()  # and left idle in transaction
        for thread in threads:
            thread.start()
        # the dump stalls on its full pipe, unread until the end, inside its transaction
        dump = subprocess.Popen(["mariadb-dump", "--single-transaction", "-h", url.host, "-P", str(url.port or 3306),
                                 "-u", url.username, url.database], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(2.1)  # older than OLD_TRANSACTION, counted in whole seconds, when the run's gc looks
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", "scores", "--force", "--db", mysql_url],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
        assert done.returncode == 0, done.stderr
        ran = time.monotonic() - started
        assert dump.poll() is None  # still held across the whole run
        with engine.connect() as conn:
            run = conn.execute(text("SELECT status, version FROM pipeline_runs ORDER BY id DESC LIMIT 1")).one()
            flipped = conn.execute(text("SELECT flipped_at FROM pipeline_flips WHERE to_version = 3")).scalar_one()
        assert tuple(run) == ("succeeded", 3)
        seen = min(at for at, version in lookups if version == 3)
        assert seen - flipped.replace(tzinfo=timezone.utc).timestamp() < 1.0
        assert analytic == []  # still running across the whole run
        assert snapshot.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY 1")).all() == [(2, rows)]
        idle.commit()
        assert idle.execute(text("SELECT model_version FROM scores WHERE customer_id = 1")).scalar_one() == 3

        started = time.monotonic()
        assert rollback(engine, "scores").to_version == 2  # with the snapshot and the query still held
        took = time.monotonic() - started
        time.sleep(0.2)
        assert lookups[-1][1] == 2 and took < 1.0
        assert snapshot.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY 1")).all() == [(2, rows)]
    finally:
        stop.set()
        snapshot.rollback(), idle.rollback()
        with engine.connect() as conn:
            for (query_id,) in conn.execute(text("SELECT ID FROM information_schema.PROCESSLIST "
                                                 "WHERE INFO LIKE '%SLEEP(60)%' AND ID <> CONNECTION_ID()")):
                conn.execute(text(f"KILL QUERY {query_id}"))
        for thread in threads:
            thread.join(30)
        snapshot.close(), idle.close()
        dumped, dump_errors = dump.communicate(timeout=120)
    report(f"held across a run on mariadb (snapshot transaction, idle in transaction, analytic query): the run "
           f"{ran:.1f} s, exit 0; {len(lookups)} lookups, none took 100 ms; rollback {took * 1000:.0f} ms")
    assert errors == []
    assert dump.returncode == 0 and b"INSERT INTO `scores__p" in dumped, dump_errors  # it holds the served rows
    # the dump may still read version 1's table: kept, and the run still succeeded
    assert "kept version 1: scores__v1 is still read by the transaction of connection" in done.stderr
    activate(engine, "scores", 3)
    assert gc(engine, "scores", keep=1).retired == [1]  # what the readers held is dropped once they are gone
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM scores__served WHERE version = 1")).scalar_one() == 0
        assert not engine.dialect.has_table(conn, "scores__v1")
    engine.dispose()


@pytest.mark.parametrize("top_up", [False, True], ids=["full run", "top-up in a lineage"])
def test_no_reader_can_stop_a_run_or_a_rollback(postgresql_url, tmp_path, write_job, top_up):
    """Held across a whole run with ``keep = 1`` and its publish: a REPEATABLE READ transaction that read the view,
    a connection left idle in transaction, a long analytic query and a pg_dump. The run exits 0 and is recorded as
    succeeded; new statements see the new version within a second of the flip while the long transaction keeps its
    old version, whole; a reader looking up a key every 10 ms never waits 100 ms for a lock; a rollback meanwhile
    takes effect at once; and the dump restores. The run is a full one, or a top-up of a job with ``[domain]
    changed``, which writes its changes into the rows of the lineage the readers hold."""
    import subprocess
    import sys
    import uuid

    from pipeline import rollback
    from pipeline.serve.retention import gc

    rows = 5000
    engine = two_versions(postgresql_url, rows, write_job, changes=top_up)
    held_table = "scores__l2" if top_up else "scores__v2"
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    plain = postgresql_url.split("?")[0]
    stop = threading.Event()
    lookups: list[tuple[float, int]] = []
    errors: list[str] = []

    repeatable, idle = engine.connect(), engine.connect()
    analytic: list = []
    dump = subprocess.Popen(["pg_dump", "-d", plain, "-n", schema, "--no-owner"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    lookup = "SELECT model_version FROM scores WHERE customer_id = 7"
    query = "SELECT model_version, COUNT(*), pg_sleep(60) FROM scores GROUP BY model_version"
    threads = [threading.Thread(target=look_up, daemon=True,  # a wait for a lock past 100 ms is an error
                                args=(postgresql_url, lookup, stop, lookups, errors, "SET lock_timeout = '100ms'")),
               threading.Thread(target=analyse, args=(engine, query, analytic), daemon=True)]
    restored = f"restored_{uuid.uuid4().hex[:8]}"
    try:
        repeatable.execute(text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
        assert repeatable.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY 1")).all() == [(2, rows)]
        idle.execute(text("SELECT prediction FROM scores WHERE customer_id = 1")).all()  # and left idle in transaction
        for thread in threads:
            thread.start()
        with engine.connect() as conn:  # pg_dump holds every table, stalled on its full pipe; the query sleeps
            for _ in range(300):
                dumping = conn.execute(text("SELECT COUNT(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                                            "WHERE a.application_name = 'pg_dump' "
                                            f"AND l.relation = to_regclass('{held_table}')")).scalar()
                sleeping = conn.execute(text("SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                                             " AND query LIKE '%GROUP BY model_version'")).scalar()
                conn.commit()
                if dumping and sleeping and dump.poll() is None:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("pg_dump and the analytic query never both held the tables")

        if top_up:
            change(engine, "customer_id <= 100")
        started = time.monotonic()
        how = "--incremental" if top_up else "--force"
        done = subprocess.run([sys.executable, "-m", "pipeline", "run", "scores", how, "--db", postgresql_url],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})  # the scripted model
        assert done.returncode == 0, done.stderr
        assert ("100 scored, 4900 kept in lineage 2" in done.stdout) is top_up, done.stdout
        ran = time.monotonic() - started
        with engine.connect() as conn:
            run = conn.execute(text("SELECT status, version FROM pipeline_runs ORDER BY id DESC LIMIT 1")).one()
            flipped = conn.execute(text("SELECT flipped_at FROM pipeline_flips WHERE to_version = 3")).scalar_one()
        assert tuple(run) == ("succeeded", 3)
        seen = min(at for at, version in lookups if version == 3)
        assert seen - flipped.timestamp() < 1.0
        assert analytic == [] and dump.poll() is None  # both still held across the whole run
        assert repeatable.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY 1")).all() == [(2, rows)]
        assert idle.execute(text("SELECT model_version FROM scores WHERE customer_id = 1")).scalar_one() == 3

        started = time.monotonic()
        assert rollback(engine, "scores").to_version == 2  # with all of them still held
        took = time.monotonic() - started
        time.sleep(0.2)
        assert lookups[-1][1] == 2 and took < 5.0
        assert repeatable.execute(text("SELECT model_version, COUNT(*) FROM scores GROUP BY 1")).all() == [(2, rows)]
    finally:
        stop.set()
        repeatable.rollback(), idle.rollback()
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
                              "AND pid <> pg_backend_pid()"))
        sql, _ = dump.communicate(timeout=60)
        for thread in threads:
            thread.join(30)
        repeatable.close(), idle.close()
    report(f"held across a {'top-up' if top_up else 'run'} on postgresql (RR transaction, idle in transaction, analytic query, pg_dump): the run "
           f"{ran:.1f} s, exit 0; {len(lookups)} lookups, none waited 100 ms for a lock; rollback {took * 1000:.0f} ms")
    assert errors == []
    assert dump.returncode == 0 and len(sql) > 65536
    admin = make_engine(plain)
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'CREATE DATABASE "{restored}"'))
        loaded = subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", plain.rsplit("/", 1)[0] + "/" + restored],
                                input=sql, capture_output=True, timeout=120)
        assert loaded.returncode == 0, loaded.stderr.decode()
        copy = make_engine(plain.rsplit("/", 1)[0] + "/" + restored)
        with copy.connect() as conn:
            assert conn.execute(text(f'SELECT model_version, COUNT(*) FROM "{schema}".scores GROUP BY 1')).all() \
                == [(2, rows)]
        copy.dispose()
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)'))
        admin.dispose()
    activate(engine, "scores", 3)
    assert gc(engine, "scores", keep=1).retired == [1]  # what the readers held is dropped once they are gone
    engine.dispose()
