"""A password in a database URL is never printed or stored: every output of the CLI, its log files (text and JSON),
the report, the metrics file and the bookkeeping tables are searched for it. The crontab is the one exception."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from pipeline import load_job, run_job
from pipeline.database.engines import make_engine, redact
from pipeline.errors import SourceError, hide_in_traceback, hide_passwords

from helpers import customers_frame, write_table

SECRET = "Hunter2-x9Qz7secret"

JOB = """
target = "{target}"
schedule = "0 3 * * *"
[domain]
keys = ["customer_id"]
source = "{source}"
query = "SELECT customer_id, x1, x2, x3 FROM {table}"
[model]
path = "models/{{model}}"
method = "predict_proba"
[output]
table = "{name}"
"""


def with_password(url: str) -> tuple[str, str]:
    """``url`` with SECRET as its password, after the user's name and as a ``password=`` parameter (both
    connect on a server with trust authentication)."""
    parsed = make_url(url)
    if parsed.password is not None:
        pytest.skip("needs a test server URL without a password (trust authentication)")
    separator = "&" if "?" in url else "?"
    return parsed.set(password=SECRET).render_as_string(hide_password=False), f"{url}{separator}password={SECRET}"


def pipeline(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI as a user would, in its own process; return the exit status and all it wrote."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    done = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          env={**environ, **(env or {})}, timeout=300)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.postgres
def test_no_output_file_or_table_holds_the_password(postgresql_url, write_job, tmp_path):
    in_user, in_query = with_password(postgresql_url)
    engine = make_engine(postgresql_url)
    write_table(engine, "customers", customers_frame(50))
    write_job(JOB.format(target=in_query, source=in_user, table="customers", name="scores"), name="scores")
    write_job(JOB.format(target=in_user, source=in_query, table="missing", name="broken"), name="broken")
    refused_user = f"postgresql://postgres:{SECRET}@127.0.0.1:1/test"
    refused_query = f"postgresql://postgres@127.0.0.1:1/test?password={SECRET}"
    outputs: dict[str, str] = {}

    def cli(*args: str, code: int = 0, env: dict[str, str] | None = None) -> str:
        status, out = pipeline(tmp_path, *args, env=env)
        assert status == code, f"pipeline {' '.join(args)}: {out}"
        outputs[" ".join(args) + (f" with {sorted(env)}" if env else "")] = out
        return out

    assert "version 1 is active" in cli("--log-format", "json", "run", "scores", "--metrics-file", "scores.prom")
    cli("run", "scores", "--force", "--debug")  # every library's debug log
    failed = cli("--log-format", "json", "run", "broken", "--metrics-file", "broken.prom", code=1)
    assert '"level": "info"' in failed and 'relation "missing" does not exist' in failed
    assert "Traceback" in cli("--debug", "run", "broken", code=1)
    assert "password=***" in cli("status") and "scores" in cli("status", "--json")
    cli("plan", "scores")
    cli("plan", "scores", "--json")
    cli("plan", "broken", code=1)
    cli("runs", "scores")
    assert "domain query failed" in cli("runs", "broken")
    cli("versions", "scores")
    assert "failed" in cli("versions", "broken")
    cli("history", "scores")
    cli("jobs")
    cli("validate", code=1)
    cli("report", "scores", "--out", "report.html")
    for refused in (refused_user, refused_query):
        assert "Connection refused" in cli("status", "--db", refused, code=1)
        assert "Connection refused" in cli("--debug", "run", "scores", "--db", refused, code=1)
        assert "Connection refused" in cli("--log-format", "json", "runs", env={"PIPELINE_DATABASE_URL": refused},
                                           code=1)
    files = {path.name: path.read_text() for path in tmp_path.iterdir() if path.suffix in (".prom", ".html")}
    assert sorted(files) == ["broken.prom", "report.html", "scores.prom"]
    with engine.connect() as conn:
        tables = conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                                   "current_schema() AND table_name LIKE 'pipeline%'")).scalars().all()
        rows = {t: conn.execute(text(f'SELECT CAST(t AS text) FROM "{t}" AS t')).scalars().all() for t in tables}
    engine.dispose()
    assert any("domain query failed on" in row for row in rows["pipeline_runs"])

    assert [name for name, out in outputs.items() if SECRET in out] == []
    assert [name for name, content in files.items() if SECRET in content] == []
    assert [(t, row) for t, found in rows.items() for row in found if SECRET in row] == []
    # The one exception, documented in the README: cron runs what the crontab says, URL included.
    assert SECRET in cli("cron", "--db", in_user)


@pytest.mark.postgres
def test_library_callers_get_masked_errors_and_logs(postgresql_url, write_job, tmp_path, caplog):
    in_user, in_query = with_password(postgresql_url)
    path = write_job(JOB.format(target=in_user, source=in_query, table="missing", name="broken"), name="broken")
    engine = make_engine(in_user)
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceError) as failed:
        run_job(load_job(path), engine)
    engine.dispose()
    assert "domain query failed on" in str(failed.value) and SECRET not in str(failed.value)
    assert "version 1 failed" in caplog.text and SECRET not in caplog.text


@pytest.mark.parametrize("written, shown", [
    ("postgresql://app:s3cr:et@db:5432/app", "postgresql://app:***@db:5432/app"),
    ("failed on postgresql+psycopg://app:pw@db/app: refused", "failed on postgresql+psycopg://app:***@db/app: refused"),
    ("postgresql://app@db/app?password=pw&x=1", "postgresql://app@db/app?password=***&x=1"),
    ("host=db user=app password='a b' dbname=app", "host=db user=app password=*** dbname=app"),
    # a space, as typed and as SQLAlchemy renders a URL (it leaves spaces as they are, in the user's name too)
    ("failed on postgresql://app:s3cr et@db/app: refused", "failed on postgresql://app:***@db/app: refused"),
    ("mysql+mariadbconnector://pipe user:s3 cr%40et@db/app", "mysql+mariadbconnector://pipe user:***@db/app"),
    ("host=db password='it\\'s me' user=app", "host=db password=*** user=app"),  # libpq's escaped quote
    ("https://hook:t0ken@example.com/x, https://ex.com/y", "https://hook:***@example.com/x, https://ex.com/y"),
    ("sqlite:///tmp/a:b@c.db, models:/churn@champion, db:5432 x@y", None),
    ("postgresql://app@db:5432/app and postgresql://db/app, user x@y", None),
])
def test_hide_passwords(written, shown):
    assert hide_passwords(written) == (shown or written)


def test_redact_hides_a_password_parameter_too():
    assert redact("postgresql://app@db/app?password=pw") == "postgresql://app@db/app?password=***"
    assert redact("postgresql://app:pw@db/app") == "postgresql://app:***@db/app"


def test_debug_tracebacks_and_log_records_are_masked(caplog):
    try:
        try:
            raise OSError(f"cannot reach postgresql://app:{SECRET}@db/app")
        except OSError as cause:
            raise ValueError(f"password={SECRET}") from cause
    except ValueError as exc:
        logging.getLogger("pipeline").error("failed on %s", f"postgresql://app:{SECRET}@db/app", exc_info=True)
        hide_in_traceback(exc)
        shown = "".join(traceback.format_exception(exc))
    assert "OSError: cannot reach postgresql://app:***@db/app" in shown and SECRET not in shown
    assert "failed on postgresql://app:***@db/app" in caplog.text and "OSError" in caplog.text
    assert SECRET not in caplog.text
