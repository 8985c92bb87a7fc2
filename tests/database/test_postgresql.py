"""PostgreSQL specifics: COPY loads, the key index behind the view, and flips that never wait for readers."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
from sqlalchemy import text

from pipeline import activate, load_job, run_job
from pipeline.database.dialects import dialect_for
from pipeline.database.engines import make_engine
from pipeline.database.transactions import transaction

from helpers import CUSTOMERS_JOB, customers_frame, view_rows, write_table

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_versions(pg, write_job):
    write_table(pg, "customers", customers_frame(1000))
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), pg, force=True)
    run_job(load_job(path), pg, force=True)
    return pg


def test_the_domain_reader_connects_with_every_setting_of_the_url(postgresql_url):
    """libpq's own form, ``options=-c%20name%3Dvalue``, with two settings: the reader (ADBC, not SQLAlchemy) got
    ``+`` for each space before and failed (``unrecognized configuration parameter "+search_path"``)."""
    schema = postgresql_url.rsplit("search_path%3D", 1)[1]
    settings = f"-c%20search_path%3D{schema}%20-c%20application_name%3Dnightly%5C%20scores"
    url = f"{postgresql_url.split('?')[0]}?options={settings}"
    engine = make_engine(url)
    try:
        chunks = dialect_for(engine).read_query(engine, "SELECT current_setting('search_path') AS s, "
                                                "current_setting('application_name') AS a", None, 10)
        assert pd.concat(list(chunks)).to_dict("records") == [{"s": schema, "a": "nightly scores"}]
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["postgres", "postgresql+psycopg2", "postgresql+pg8000", "postgresql+psycopg"])
def test_a_url_naming_another_driver_runs_on_psycopg_3(postgresql_url, scheme, write_job):
    """An application's SQLAlchemy URL names its own driver (``postgresql+psycopg2://``, SQLAlchemy's default): the
    pipeline's COPY, errors and reader are psycopg 3's, so the run used to fail with ``no driver ... psycopg2``, and
    with psycopg2 installed, after making a version, with ``unexpected AttributeError: ... no attribute 'copy'``."""
    url = f"{scheme}://{postgresql_url.split('://', 1)[1]}"
    engine = make_engine(url)
    try:
        assert engine.driver == "psycopg"
        write_table(engine, "customers", customers_frame(50))
        result = run_job(load_job(write_job(CUSTOMERS_JOB)), engine)
        assert (result.version, result.rows) == (1, 50)
        assert view_rows(engine).customer_id.tolist() == list(range(1, 51))
    finally:
        engine.dispose()


def test_copy_round_trips_types_and_nulls(pg):
    import datetime as dt

    dialect = dialect_for(pg)
    columns = [("k", "integer"), ("f", "float"), ("t", "text"), ("b", "boolean"), ("d", "date"), ("ts", "timestamp")]
    frame = pd.DataFrame({"k": [1, 2], "f": [0.25, None], "t": ["tab\there", None], "b": [True, False],
                          "d": [dt.date(2026, 1, 1), None], "ts": [dt.datetime(2026, 1, 1, 3), None]})
    with transaction(pg) as conn:
        dialect.create_table(conn, "typed", columns)
        dialect.load(conn, "typed", columns, frame)
    with pg.connect() as conn:
        rows = conn.execute(text("SELECT k, f, t, b, d, ts FROM typed ORDER BY k")).all()
    assert [tuple(r) for r in rows] == [(1, 0.25, "tab\there", True, dt.date(2026, 1, 1), dt.datetime(2026, 1, 1, 3)),
                                        (2, None, None, False, None, None)]


def test_point_lookup_uses_the_primary_key_and_skips_inactive_versions(two_versions):
    with two_versions.connect() as conn:
        plan = "\n".join(conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT * FROM scores WHERE customer_id = 42").scalars())
    assert "Index Scan using scores__v2__key on scores__v2" in plan
    inactive = plan.split("scores__v1__key on scores__v1")[1].split("\n")[0]
    assert "never executed" in inactive


def test_a_flip_does_not_wait_for_a_slow_reader(two_versions, postgresql_url):
    reader = make_engine(postgresql_url)
    with reader.connect() as slow:
        slow.execute(text("SELECT COUNT(*) FROM scores")).scalar()  # holds locks on the view until it ends
        done = threading.Event()
        started = time.monotonic()
        thread = threading.Thread(target=lambda: (activate(two_versions, "scores", 1), done.set()))
        thread.start()
        thread.join(10)
        assert done.is_set() and time.monotonic() - started < 5
        assert slow.execute(text("SELECT DISTINCT model_version FROM scores")).scalar() == 1  # next statement
    reader.dispose()


def test_publishing_a_new_version_does_not_queue_readers_behind_a_slow_one(two_versions, postgresql_url, write_job):
    """The view DDL a run needs waits for the slow reader in short tries; other readers go on meanwhile."""
    slow_engine, fast_engine = make_engine(postgresql_url), make_engine(postgresql_url)
    latencies, result = [], {}
    with slow_engine.connect() as slow:
        slow.execute(text("SELECT COUNT(*) FROM scores")).scalar()  # holds AccessShareLock on the view
        runner = threading.Thread(target=lambda: result.setdefault("run", run_job(
            load_job(write_job(CUSTOMERS_JOB)), two_versions, force=True)))
        runner.start()
        with fast_engine.connect() as fast:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                fast.execute(text("SELECT proba_true FROM scores WHERE customer_id = 7")).scalar()
                fast.commit()
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)
        assert "run" not in result  # still waiting for the slow reader
    runner.join(15)
    slow_engine.dispose()
    fast_engine.dispose()
    assert result["run"].version == 3 and result["run"].activated
    assert max(latencies) < 0.25, f"a reader waited {max(latencies) * 1000:.0f} ms behind the view DDL"


def test_a_role_granted_select_once_reads_every_view_whatever_the_pipeline_remakes(pg, write_job):
    """Runs, a column change and back, an alias flip, a split change and the default row each (re)make views;
    a reader role granted SELECT on the table's view once keeps reading all of them."""
    import uuid

    from pipeline import rollback
    from pipeline.serve.split import set_split

    role = f"reader_{uuid.uuid4().hex[:8]}"
    write_table(pg, "customers", customers_frame(100))
    proba = write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "scores"\ndefault = { proba_true = 0.1 }'))
    labels = write_job(CUSTOMERS_JOB.replace('method = "predict_proba"', 'method = "predict"'), name="labels")
    run_job(load_job(proba), pg, force=True)
    with transaction(pg) as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        conn.execute(text(f'CREATE ROLE "{role}"'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT SELECT ON scores TO "{role}"'))

    def readable() -> dict[str, int]:
        with pg.connect() as conn:
            views = [v for v in ("scores", "scores__challenger", "scores__ab", "scores__default")
                     if conn.execute(text("SELECT to_regclass(:v)"), {"v": v}).scalar() is not None]
            conn.execute(text(f'SET ROLE "{role}"'))
            counts = {v: conn.execute(text(f"SELECT COUNT(*) FROM {v}")).scalar_one() for v in views}
            conn.execute(text("RESET ROLE"))
            return counts

    try:
        run_job(load_job(proba), pg, force=True)  # the default row's view is made again by every run
        assert readable() == {"scores": 100, "scores__default": 1}
        activate(pg, "scores", 1, alias="challenger")  # a view made for the first time
        set_split(pg, "scores", alias="challenger", percent=20)
        assert readable() == {"scores": 100, "scores__challenger": 100, "scores__ab": 100, "scores__default": 1}
        run_job(load_job(labels), pg, force=True)  # other columns: the view is dropped and made again
        assert readable()["scores"] == 100
        rollback(pg, "scores")  # and back to the old columns
        set_split(pg, "scores", alias="challenger", percent=50)
        assert readable() == {"scores": 100, "scores__challenger": 100, "scores__ab": 100, "scores__default": 1}
    finally:
        with transaction(pg) as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))


def bound_checks(engine) -> dict[str, list[str]]:  # noqa: ANN001 (an Engine)
    """Each version table's CHECK constraints on ``model_version``, by table."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT c.relname, pg_get_constraintdef(k.oid) FROM pg_class c JOIN pg_constraint k ON k.conrelid = c.oid "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'model_version' "
            "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname ~ '^scores__v[0-9]+$' "
            "AND k.contype = 'c' AND k.conkey = ARRAY[a.attnum]")).all()
    found: dict[str, list[str]] = {}
    for table, check in rows:
        found.setdefault(table, []).append(check)
    return found


def test_the_versions_the_view_serves_carry_no_check_for_lookups_to_plan_and_a_detached_one_gets_it_back(
        pg, write_job):
    """A CHECK matching the partition bound lets an ATTACH skip its scan, but the planner tests it on every lookup
    (a tenth of one's cost): once attached, the version table drops it; the concurrent detach that takes a version
    out of the serving set adds PostgreSQL's own back, so that a rollback to it attaches without a scan, and the
    view serves exactly that version."""
    write_table(pg, "customers", customers_frame(100))
    path = write_job(CUSTOMERS_JOB)
    for _ in range(3):
        run_job(load_job(path), pg, force=True)
    checks = bound_checks(pg)
    assert "scores__v2" not in checks and "scores__v3" not in checks  # the rollback target and the active one
    assert checks["scores__v1"] == ["CHECK (((model_version IS NOT NULL) AND (model_version = 1)))"]
    activate(pg, "scores", 1)  # attached again, from outside the serving set; 3 is now the rollback target
    checks = bound_checks(pg)
    assert "scores__v1" not in checks and "scores__v3" not in checks and list(checks) == ["scores__v2"]
    served = view_rows(pg)
    assert set(served.model_version) == {1} and len(served) == 100
    with pg.connect() as conn:
        plan = "\n".join(conn.execute(text("EXPLAIN SELECT * FROM scores WHERE customer_id = 7")).scalars())
    assert "scores__v1" in plan and "scores__v3" in plan and "scores__v2" not in plan


def test_a_version_readers_keep_from_publishing_is_left_ready_and_activate_publishes_it(pg, write_job):
    """A new version of other columns needs DDL on the view, and a REPEATABLE READ transaction that read the view
    holds it past the job's publish_timeout: the run does not throw the audited version away; it leaves it ready,
    unpublished, says so, and `activate` publishes it later. (A version of the same columns needs no DDL: see
    test_readers.test_no_reader_can_stop_a_run_or_a_rollback.)"""
    from pipeline.errors import PublishPending
    from pipeline.serve import catalog

    write_table(pg, "customers", customers_frame(100))
    path = write_job(CUSTOMERS_JOB.replace('table = "scores"', 'table = "scores"\npublish_timeout = 1'))
    run_job(load_job(path), pg, force=True)
    path.write_text(path.read_text().replace('method = "predict_proba"', 'method = "predict"'))  # other columns
    reader = pg.connect()
    try:
        reader.execute(text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
        assert reader.execute(text("SELECT COUNT(*) FROM scores")).scalar_one() == 100
        started = time.monotonic()
        with pytest.raises(PublishPending, match=r"version 2 passed its audits and is ready, .* "
                                                 r"`pipeline activate scores 2` publishes it"):
            run_job(load_job(path), pg, force=True)
        assert time.monotonic() - started < 30
        assert set(reader.execute(text("SELECT model_version FROM scores")).scalars()) == {1}
    finally:
        reader.rollback()
        reader.close()
    versions = {r.version.version: r.version for r in catalog.versions(pg, "scores")}
    assert versions[2].status == "ready" and versions[2].row_count == 100 and [r.active for r in
                                                                              catalog.versions(pg, "scores")] == [True, False]
    with pg.connect() as conn:
        assert set(conn.execute(text("SELECT model_version FROM scores")).scalars()) == {1}
        run = conn.execute(text("SELECT status, error FROM pipeline_runs ORDER BY id DESC LIMIT 1")).one()
    assert run.status == "failed" and "is ready, but readers held the view" in run.error
    activate(pg, "scores", 2)
    with pg.connect() as conn:
        assert set(conn.execute(text("SELECT model_version FROM scores")).scalars()) == {2}


def test_an_application_view_on_the_table_survives_a_column_change(pg, write_job):
    """PostgreSQL cannot drop a view other views read: a column-changing run remakes the application's views on
    the table from their own definitions, with their grants; one that reads a column the new version lacks fails
    the publish, naming it, and changes nothing."""
    from pipeline.errors import DatabaseError

    write_table(pg, "customers", customers_frame(100))
    proba = write_job(CUSTOMERS_JOB)
    labels = write_job(CUSTOMERS_JOB.replace('method = "predict_proba"', 'method = "predict"'), name="labels")
    run_job(load_job(proba), pg, force=True)
    with transaction(pg) as conn:
        conn.execute(text("CREATE VIEW app_keys AS SELECT customer_id, model_version FROM scores"))
        conn.execute(text("CREATE VIEW app_latest AS SELECT max(model_version) AS v FROM app_keys"))
        conn.execute(text("GRANT SELECT ON app_latest TO PUBLIC"))
    run_job(load_job(labels), pg, force=True)  # proba_* columns become prediction
    with pg.connect() as conn:
        assert conn.execute(text("SELECT v FROM app_latest")).scalar_one() == 2
        assert conn.execute(text("SELECT COUNT(*) FROM app_keys")).scalar_one() == 100
        assert conn.execute(text("SELECT has_table_privilege('public', 'app_latest', 'SELECT')")).scalar_one()
    with transaction(pg) as conn:
        conn.execute(text("CREATE VIEW app_labels AS SELECT customer_id FROM scores WHERE prediction"))
    with pytest.raises(DatabaseError, match="view app_labels, which reads it, cannot be made again on the new "
                                            "ones: .*prediction"):
        run_job(load_job(proba), pg, force=True)
    with pg.connect() as conn:
        assert set(conn.execute(text("SELECT model_version FROM scores")).scalars()) == {2}
        assert conn.execute(text("SELECT COUNT(*) FROM app_labels")).scalar_one() >= 0


def test_a_version_another_process_detached_first_is_not_blamed_on_a_reader(pg):
    """``pipeline backfill churn --start 2026-04-05 --end 2026-04-06 --parallel 2`` warned ``kept version 14:
    churn_scores__v14 is held by a reader (a statement or transaction begun before the publish) ... (relation
    "churn_scores__v14" is not a partition of relation "churn_scores__pc4752b")``: the two dates' publishes listed the
    same partition and detached it at once, and the one that came second blamed a reader. Here the test is the
    other process: it detaches the partition while this settle waits for the parent's lock."""
    with pg.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scores__pabcdef (model_version int) PARTITION BY LIST (model_version)")
        conn.exec_driver_sql("CREATE TABLE scores__v1 PARTITION OF scores__pabcdef FOR VALUES IN (1)")
    left: dict[int, str] = {}
    with pg.connect() as other:
        other.exec_driver_sql("LOCK TABLE scores__pabcdef IN SHARE UPDATE EXCLUSIVE MODE")
        settling = threading.Thread(target=lambda: left.update(dialect_for(pg).settle(pg, "scores", set())))
        settling.start()
        deadline = time.monotonic() + 1.5
        with pg.connect() as watch:  # until the settle has listed the partition and waits to detach it
            while not watch.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                            "AND query LIKE '%%DETACH PARTITION%%'").scalar():
                watch.rollback()  # a transaction sees one snapshot of the activity
                assert time.monotonic() < deadline
                time.sleep(0.01)
        other.exec_driver_sql("ALTER TABLE scores__pabcdef DETACH PARTITION scores__v1")
        other.commit()
        settling.join()
    assert "held by a reader" not in left[1] and "another process detached it" in left[1], left
