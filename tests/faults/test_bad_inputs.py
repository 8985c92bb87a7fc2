"""The bad-input corpus of the safe rollout, on SQLite and on PostgreSQL.

The rule: bad input gets a clear one-line ``Error: ...`` that names the problem, exit
status 1, no traceback (unless ``--debug``), and no change to what readers see. Each
test starts from a live table (version 1 of ``scores`` active, served by the view),
breaks exactly one thing, runs ``pipeline run scores`` and checks all of that.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import joblib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result
from pandas.testing import assert_frame_equal
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from pipeline.cli import main
from pipeline.database.engines import make_engine

from fakemodels import Scripted
from helpers import CUSTOMERS_JOB, SCRIPTED_JOB, customers_frame, train_model, view_rows, write_table

CUSTOMERS = 200
QUERY = "SELECT customer_id, x1, x2, x3 FROM customers"


@dataclass
class Live:
    """A table in service: what a bad run must leave exactly as it found it."""

    db_url: str
    dialect: str
    engine: Engine
    tmp_path: Path
    job: Path
    model: Path
    served: pd.DataFrame
    relations: set[str]


def invoke(url: str, *options: str) -> Result:
    """``pipeline [options] run scores --db URL``, as a user types it (cwd and environment set by the fixtures).

    The run's log records go to pytest's log capture, not to ``result.output``; what a
    terminal shows, log lines included, is checked by the ``console`` tests at the end.
    """
    return CliRunner().invoke(main, [*options, "run", "scores", "--db", url])


def relations(engine: Engine) -> set[str]:
    found = inspect(engine)
    return set(found.get_table_names()) | set(found.get_view_names())


def pointer_versions(engine: Engine, table: str = "scores") -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT version FROM pipeline_pointer WHERE table_name = :t"), {"t": table})
                    .scalars())


def customers_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT COUNT(*) FROM customers")).scalar_one()


def assert_refused(result: Result, message: str | tuple[str, ...]) -> str:
    """Exit 1 by the CLI's own hand, one line ``Error: ...`` naming the problem, no traceback."""
    out = result.output
    assert result.exit_code == 1, out
    # An exception that escaped the CLI would also give exit code 1 under CliRunner: insist on a clean exit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    lines = out.splitlines()
    assert len(lines) == 1 and out.endswith("\n"), out
    line = lines[0]
    assert line.startswith("Error: "), line
    # `unexpected X: ...` is the CLI's wording for an exception it did not expect, i.e. a bug.
    assert not line.startswith("Error: unexpected "), line
    for part in (message,) if isinstance(message, str) else message:
        assert part in line, (part, line)
    return line


def assert_unchanged(live: Live) -> None:
    """Readers see exactly what they saw before: the same rows from version 1, the pointer, the source."""
    assert_frame_equal(view_rows(live.engine), live.served)
    assert pointer_versions(live.engine) == [1]
    assert_only_failed_versions_added(live.engine, live.relations)
    assert customers_count(live.engine) == CUSTOMERS


def assert_only_failed_versions_added(engine: Engine, before: set[str]) -> None:
    """Nothing dropped; the only new relation may be a refused version's table, kept for inspection.

    A failed load leaves no table behind; a version that was written but failed its audits
    keeps its table (write-audit-publish) until ``pipeline gc``, marked ``failed``.
    """
    now = relations(engine)
    assert before <= now, before - now
    with engine.connect() as conn:
        failed = {f"scores__v{v}" for v in conn.execute(text(
            "SELECT version FROM pipeline_versions WHERE table_name = 'scores' AND status = 'failed'")).scalars()}
    assert now - before <= failed, (now - before, failed)


@pytest.fixture
def live(db_url: str, engine: Engine, write_job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Live:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    monkeypatch.delenv("PIPELINE_JOBS_DIR", raising=False)
    write_table(engine, "customers", customers_frame(CUSTOMERS))
    job = write_job(CUSTOMERS_JOB)
    result = invoke(db_url, "--quiet")
    assert result.exit_code == 0, result.output
    assert "scores: version 1 is active" in result.output
    served = view_rows(engine)
    assert len(served) == CUSTOMERS and set(served.model_version) == {1}
    assert pointer_versions(engine) == [1]
    return Live(db_url, engine.dialect.name, engine, tmp_path, job, job.parent / "models" / "scores.joblib",
                served, relations(engine))


# -- how to break one thing -------------------------------------------------------

def edit(live: Live, old: str, new: str) -> None:
    """Replace ``old`` (which must be there, once) in the job file."""
    body = live.job.read_text(encoding="utf-8")
    assert body.count(old) == 1, (old, body)
    live.job.write_text(body.replace(old, new), encoding="utf-8")


def query(live: Live, new: str) -> None:
    edit(live, f'query = "{QUERY}"', f'query = "{new}"')


def malformed_toml(live: Live, write_job) -> None:
    edit(live, 'table = "scores"', 'table = "scores')


def unknown_key(live: Live, write_job) -> None:
    edit(live, 'table = "scores"', 'table = "scores"\ncolour = "blue"')


def wrong_type(live: Live, write_job) -> None:
    edit(live, "[domain]", '[domain]\nchunk_size = "1000"')


def bad_cron(live: Live, write_job) -> None:
    edit(live, "[domain]", 'schedule = "0 25 * * *"\n[domain]')


def unsafe_table_name(live: Live, write_job) -> None:
    edit(live, 'table = "scores"', 'table = "scores-2026"')


def table_name_injection(live: Live, write_job) -> None:
    edit(live, 'table = "scores"', 'table = "scores; DROP TABLE customers"')


def key_injection(live: Live, write_job) -> None:
    edit(live, 'keys = ["customer_id"]', 'keys = ["customer_id); DROP TABLE customers; --"]')


def model_missing(live: Live, write_job) -> None:
    live.model.unlink()


def model_corrupt(live: Live, write_job) -> None:
    live.model.write_bytes(np.random.default_rng(7).bytes(4096))


def model_not_a_model(live: Live, write_job) -> None:
    joblib.dump({"coef": [0.1, 0.2, 0.3], "intercept": 0.0}, live.model)


def model_fails_its_pin(live: Live, write_job) -> None:
    pin = hashlib.sha256(live.model.read_bytes()).hexdigest()
    edit(live, 'method = "predict_proba"', f'method = "predict_proba"\nsha256 = "{pin}"')
    train_model(live.model, seed=4)  # the file is replaced after it was pinned


def features_missing(live: Live, write_job) -> None:
    query(live, "SELECT customer_id, x1, x2 FROM customers")


def wrong_shape(live: Live, write_job) -> None:
    write_job(SCRIPTED_JOB, model=Scripted(rows_short=1))


def nan_predictions(live: Live, write_job) -> None:
    write_job(SCRIPTED_JOB, model=Scripted(nan_every=5))


def empty_domain(live: Live, write_job) -> None:
    query(live, f"{QUERY} WHERE customer_id < 0")


def duplicate_keys(live: Live, write_job) -> None:
    query(live, f"{QUERY} UNION ALL {QUERY} WHERE customer_id = 7")


def failing_query(live: Live, write_job) -> None:
    query(live, "SELECT customer_id, x1, x2, x3 FROM customer")


Breaker = Callable[[Live, Callable[..., Path]], None]

CASES = [
    pytest.param(malformed_toml, "scores.toml: not valid TOML", id="malformed-toml"),
    pytest.param(unknown_key, "scores.toml: output.colour: unknown key", id="unknown-key"),
    pytest.param(wrong_type, "domain.chunk_size: must be an integer, got str", id="wrong-type"),
    pytest.param(bad_cron, "schedule: not a valid cron expression '0 25 * * *'", id="cron-does-not-parse"),
    pytest.param(unsafe_table_name, "output.table: 'scores-2026' is not a safe SQL identifier",
                 id="unsafe-table-name"),
    pytest.param(table_name_injection, "output.table: 'scores; DROP TABLE customers' is not a safe SQL identifier",
                 id="sql-injection-table-name"),
    pytest.param(key_injection, "domain.keys: 'customer_id); DROP TABLE customers; --' is not a safe SQL identifier",
                 id="sql-injection-key-name"),
    pytest.param(model_missing, "model.path: file not found: models/scores.joblib", id="model-missing"),
    pytest.param(model_corrupt, "scores.joblib: cannot load model file", id="model-corrupt"),
    pytest.param(model_not_a_model, "scores.joblib: a dict has no predict_proba() method", id="model-not-a-model"),
    pytest.param(model_fails_its_pin, ("scores.joblib: sha256 is ", "but the job pins", "refusing to load it"),
                 id="model-fails-sha256-pin"),
    pytest.param(features_missing, "model wants feature(s) the domain lacks: x3", id="model-feature-missing"),
    pytest.param(wrong_shape, "predict returned shape (199,) for 200 rows; expected 200 x 1",
                 id="model-returns-wrong-shape"),
    pytest.param(nan_predictions, "NULL, NaN or infinite predictions in prediction: 40 row(s)",
                 id="model-returns-nan"),
    pytest.param(empty_domain, "the domain is empty", id="empty-domain"),
    pytest.param(duplicate_keys, "the domain lists some keys more than once, e.g. customer_id=7",
                 id="duplicate-keys"),
    # "no such table: customer" on SQLite, 'relation "customer" does not exist' on PostgreSQL
    pytest.param(failing_query, ("domain query failed: ", "customer"), id="domain-query-fails"),
]


@pytest.mark.parametrize("breaker, message", CASES)
def test_bad_input_is_refused_in_one_line_and_changes_nothing(live: Live, write_job, breaker: Breaker,
                                                             message: str | tuple[str, ...]) -> None:
    breaker(live, write_job)
    assert_refused(invoke(live.db_url), message)
    assert_unchanged(live)


#: The cases a run meets once it has begun (the others are refused as the job file is read, before any run).
IN_A_RUN = {"model-corrupt", "model-not-a-model", "model-fails-sha256-pin", "model-feature-missing",
            "model-returns-wrong-shape", "model-returns-nan", "empty-domain", "duplicate-keys", "domain-query-fails"}


@pytest.mark.parametrize("breaker, message", [case for case in CASES if case.id in IN_A_RUN])
def test_a_run_refused_for_bad_input_is_recorded_as_failed(live: Live, write_job, breaker: Breaker,
                                                           message: str | tuple[str, ...]) -> None:
    """A model file that could not be loaded (or failed its pin) was refused before the run recorded itself:
    `pipeline runs` said nothing of it and status still showed the last run succeeded."""
    breaker(live, write_job)
    assert invoke(live.db_url).exit_code == 1
    with live.engine.connect() as conn:
        status, error = conn.execute(text("SELECT status, error FROM pipeline_runs WHERE job = 'scores' "
                                          "ORDER BY id DESC")).first()
    assert status == "failed" and all(part in error for part in (message if isinstance(message, tuple) else
                                                                 [message])), error


# -- the target database itself is the problem --------------------------------------

def unreachable_url(live: Live) -> str:
    if live.dialect == "postgresql":
        return live.db_url.replace("127.0.0.1:5432", "127.0.0.1:1", 1)
    if live.dialect == "mysql":
        return live.db_url.replace("127.0.0.1:3306", "127.0.0.1:1", 1)
    return f"sqlite:///{live.tmp_path / 'no-such-directory' / 'predictions.db'}"


def read_only_url(live: Live) -> str:
    if live.dialect == "postgresql":
        # The fixture's URL ends with options=-c%20search_path%3D<schema>: one options value holds both settings.
        assert "?options=-c%20search_path%3D" in live.db_url and live.db_url.count("options=") == 1
        return live.db_url + "%20-c%20default_transaction_read_only%3Don"
    if live.dialect == "mysql":
        return live.db_url + "?init_command=SET%20SESSION%20TRANSACTION%20READ%20ONLY"
    return f"sqlite:///file:{live.engine.url.database}?mode=ro&uri=true"


TARGET_CASES = [
    # SQLite: the file's directory does not exist; the message must name it.
    pytest.param(unreachable_url, {"sqlite": "no-such-directory", "postgresql": "Connection refused",
                                   "mysql": "Can't connect to server on '127.0.0.1'"}, id="target-unreachable"),
    pytest.param(read_only_url, {"sqlite": "readonly database", "postgresql": "read-only transaction",
                                 "mysql": "Cannot execute statement in a READ ONLY transaction"},
                 id="target-read-only"),
]


@pytest.mark.parametrize("make_url, messages", TARGET_CASES)
def test_bad_target_is_refused_in_one_line_and_changes_nothing(live: Live, make_url: Callable[[Live], str],
                                                              messages: dict[str, str]) -> None:
    url = make_url(live)
    assert url != live.db_url
    assert_refused(invoke(url), messages[live.dialect])
    assert_unchanged(live)  # checked on the real database


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_unreachable_sqlite_target_creates_nothing(live: Live) -> None:
    assert invoke(unreachable_url(live)).exit_code == 1
    assert not (live.tmp_path / "no-such-directory").exists()


# -- a disk that fills up -------------------------------------------------------

def test_full_disk_is_refused_in_one_line_and_changes_nothing(tmp_path: Path, write_job,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite target on a 600 KiB tmpfs: version 1 fits, version 2 cannot."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    monkeypatch.delenv("PIPELINE_JOBS_DIR", raising=False)
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 600 KiB tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    source_url = f"sqlite:///{tmp_path / 'source.db'}"
    target_url = f"sqlite:///{disk / 'predictions.db'}"
    source = make_engine(source_url)
    target = make_engine(target_url)
    try:
        write_table(source, "customers", customers_frame(CUSTOMERS))
        write_job(CUSTOMERS_JOB.replace("[domain]", f'[domain]\nsource = "{source_url}"'))
        first = invoke(target_url, "--quiet")
        assert first.exit_code == 0 and "scores: version 1 is active" in first.output, first.output
        served = view_rows(target)
        before = relations(target)
        assert len(served) == CUSTOMERS

        write_table(source, "customers", customers_frame(40_000))  # ~1.5 MB of predictions for a 600 KiB disk
        assert_refused(invoke(target_url), "database or disk is full")

        assert_frame_equal(view_rows(target), served)
        assert pointer_versions(target) == [1]
        assert_only_failed_versions_added(target, before)
    finally:
        source.dispose()
        target.dispose()
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- --debug, and the real console ----------------------------------------------

def console(live: Live, *options: str) -> subprocess.CompletedProcess[str]:
    """The installed CLI in a process of its own: what a person at a terminal sees."""
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_DATABASE_URL", "PIPELINE_JOBS_DIR")}
    tests = str(Path(__file__).parent.parent)  # joblib finds fakemodels.Scripted there
    env["PYTHONPATH"] = os.pathsep.join([tests, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "pipeline", *options, "run", "scores", "--db", live.db_url],
                          capture_output=True, text=True, cwd=live.tmp_path, env=env, timeout=120)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the same code path on both databases
def test_debug_shows_the_traceback_and_still_changes_nothing(live: Live, write_job) -> None:
    wrong_shape(live, write_job)
    done = console(live, "--debug")
    assert done.returncode == 1, done.stderr
    assert "Traceback (most recent call last)" in done.stderr
    assert "pipeline.errors.ModelError: predict returned shape (199,) for 200 rows" in done.stderr
    assert_unchanged(live)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_console_error_is_one_line_without_a_traceback(live: Live) -> None:
    """Without --debug, a terminal shows the progress log, then the error as the last line, never a traceback."""
    empty_domain(live, None)
    done = console(live)
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [done.stderr.splitlines()[-1]] and "the domain is empty" in errors[0], done.stderr
    assert_unchanged(live)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_quiet_console_error_is_exactly_one_line(live: Live) -> None:
    empty_domain(live, None)
    done = console(live, "--quiet")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith("Error: the domain is empty")
    assert_unchanged(live)
