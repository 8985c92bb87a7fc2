"""The CLI as a user types it: exit codes, one-line errors, the table commands, on both databases."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from pipeline.cli import main

from helpers import CUSTOMERS_JOB, customers_frame, train_model, write_table


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke ``pipeline`` in tmp_path (so ``jobs/`` resolves there) and return (exit code, output)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(main, ["--quiet", *args], catch_exceptions=False)
        return result.exit_code, result.output

    return invoke


@pytest.fixture
def job(engine, write_job) -> Path:
    write_table(engine, "customers", customers_frame(200))
    return write_job(CUSTOMERS_JOB)


def view_versions(engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(text("SELECT DISTINCT model_version FROM scores")).scalars())


def test_run_versions_rollback_activate_history_status(cli, db_url, engine, job):
    code, out = cli("run", "scores", "--db", db_url, "--date", "2026-01-31")
    assert code == 0, out
    assert "scores: version 1 is active (200 rows" in out
    train_model(job.parent / "models" / "scores.joblib", seed=4)
    code, out = cli("run", str(job), "--db", db_url)
    assert code == 0 and "version 2 is active" in out and "previous: 1" in out
    assert view_versions(engine) == {2}

    code, out = cli("rollback", "scores", "--db", db_url)
    assert (code, out.strip()) == (0, "scores: rolled back from version 2 to 1")
    assert view_versions(engine) == {1}
    code, out = cli("activate", "scores", "2", "--db", db_url)
    assert (code, out.strip()) == (0, "scores: version 2 is active (was 1)")
    assert view_versions(engine) == {2}

    code, out = cli("versions", "scores", "--db", db_url)
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:3] == ["version", "status", "logical_date"]
    assert lines[1].split()[:4] == ["1", "ready", "2026-01-31", "200"]
    assert lines[2].split()[:3] == ["*", "2", "ready"]

    code, out = cli("history", "scores", "--db", db_url)
    moves = [line.split()[2:4] for line in out.splitlines()[1:]]
    assert code == 0 and moves == [["-", "1"], ["1", "2"], ["2", "1"], ["1", "2"]]
    assert "rollback" in out and "activate" in out

    code, out = cli("status", "--db", db_url)
    assert code == 0 and out.splitlines()[1].split()[:2] == ["scores", "2"]


def test_no_activate_then_activate(cli, db_url, engine, job):
    assert cli("run", "scores", "--db", db_url)[0] == 0
    code, out = cli("run", "scores", "--db", db_url, "--no-activate")
    assert code == 0 and out.startswith("scores: skipped: version 1 already holds ")  # same model, same domain
    code, out = cli("run", "scores", "--db", db_url, "--no-activate", "--force")
    assert code == 0 and "version 2 is ready, not active" in out and "pipeline activate scores 2" in out
    assert view_versions(engine) == {1}


def test_database_comes_from_the_environment_then_the_job_target(cli, tmp_path, monkeypatch, write_job):
    from pipeline.database.engines import make_engine

    url = f"sqlite:///{tmp_path / 'target.db'}"
    engine = make_engine(url)
    write_table(engine, "customers", customers_frame(30))
    write_job(CUSTOMERS_JOB.replace("[domain]", f'target = "{url}"\n[domain]'))
    code, out = cli("run", "scores")
    assert code == 0 and "target.db" in out
    assert view_versions(engine) == {1}
    code, out = cli("versions", "scores")  # finds the database through the job that writes the table
    assert code == 0 and "* " in out
    monkeypatch.setenv("PIPELINE_DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    code, out = cli("versions", "scores")  # the environment wins; only a run would create other.db
    assert code == 1 and f"no database at sqlite:///{tmp_path / 'other.db'}" in out
    assert not (tmp_path / "other.db").exists()
    engine.dispose()


@pytest.mark.parametrize("args, message", [
    (["run", "missing"], "no job file 'missing'"),
    (["activate", "scores", "7"], "scores has no version 7"),
    (["rollback", "nope"], "no prediction table 'nope'"),
    (["history", "nope"], "no prediction table 'nope'"),
    (["versions", "nope"], "no prediction table 'nope'"),
])
def test_errors_are_one_line_and_exit_non_zero(cli, db_url, job, args, message):
    assert cli("run", "scores", "--db", db_url)[0] == 0
    code, out = cli(*args, "--db", db_url)
    assert code == 1
    assert out.count("\n") == 1 and out.startswith("Error: ") and message in out
    assert "Traceback" not in out


@pytest.mark.parametrize("url", ["postgresql://app:s3cret w@db:54x2/app", "mariadb://app:s3cret w@[::1:3306/app"])
@pytest.mark.parametrize("command", [["status"], ["run", "scores"], ["versions", "scores"], ["runs"]])
def test_a_malformed_url_is_refused_in_one_line(cli, write_job, url, command):
    """A port that is not a number failed as ``unexpected ValueError: invalid literal for int()``: the password
    masking and the SQLite file check parse the URL first, and took only SQLAlchemy's ArgumentError as unusable."""
    write_job(CUSTOMERS_JOB)
    code, out = cli(*command, "--db", url)
    assert code == 1 and out.count("\n") == 1 and "Traceback" not in out, out
    assert out.startswith("Error: not a usable database URL") and "unexpected" not in out, out
    assert "s3cret" not in out


def test_bad_job_file_leaves_the_view_alone(cli, db_url, engine, job):
    assert cli("run", "scores", "--db", db_url)[0] == 0
    job.write_text(job.read_text().split("[model]")[0] + '[output]\ntable = "scores"\n')
    code, out = cli("run", "scores", "--db", db_url)
    assert code == 1 and "[model]: section is missing" in out and out.count("\n") == 1
    assert view_versions(engine) == {1}


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--debug", "run", "missing"])
    assert result.exit_code == 1 and result.exc_info is not None
    assert "no job file 'missing'" in str(result.exception)


def test_python_dash_m_and_console_script_run_the_cli(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "rollback" in out.stdout
    script = Path(sys.executable).parent / "pipeline"
    out = subprocess.run([str(script), "run", "nothing-here"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["Error: no job file 'nothing-here': not a file, and no "
                                               "jobs/nothing-here.toml or job named 'nothing-here' in jobs/"]


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path):
    """``pipeline plan churn | head -3`` ended with ``Error: unexpected BrokenPipeError: [Errno 32] Broken pipe
    (run `pipeline --debug ...` for the traceback)`` once ``head`` had its lines: the error boundary took the closed
    pipe for a bug, where click ends quietly with exit 1."""
    command = [sys.executable, "-m", "pipeline", "runs", "churn", "--db", f"sqlite:///{tmp_path / 'p.db'}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    proc.stdout.close()  # the reader is gone before the command writes, as `head` is once it has its lines
    assert proc.wait(timeout=60) == 1
    assert proc.stderr.read() == ""


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output, name


def test_status_json_reports_the_last_run_and_failures(cli, db_url, engine, job):
    import json

    assert cli("run", "scores", "--db", db_url)[0] == 0
    job.write_text(job.read_text().replace("FROM customers", "FROM missing_table"))
    assert cli("run", "scores", "--db", db_url, "--force")[0] == 1
    code, out = cli("status", "--json", "--db", db_url)
    (row,) = json.loads(out)
    assert code == 0 and row["table"] == "scores" and row["active_version"] == 1
    assert row["last_run"]["status"] == "failed" and "missing_table" in row["last_run"]["error"]
    assert row["failed_runs"] == 1 and row["latest_status"] == "failed" and row["age_seconds"] >= 0
    code, out = cli("status", "--db", db_url)
    assert out.splitlines()[1].split()[:2] == ["scores", "1"] and "failed" in out


def test_diff_command(cli, db_url, engine, job):
    assert cli("run", "scores", "--db", db_url)[0] == 0
    train_model(job.parent / "models" / "scores.joblib", seed=2)
    assert cli("run", "scores", "--db", db_url)[0] == 0
    code, out = cli("diff", "scores", "1", "2", "--top", "2", "--db", db_url)
    lines = out.splitlines()
    assert code == 0 and lines[0] == ("scores: v1 200 rows, v2 200 rows; keys only in v1: 0, only in v2: 0, "
                                      "in both: 200")
    assert "proba_true: 200 of 200 shared keys changed (100.0%)" in out
    assert sum(int(line.split()[2]) for line in lines if line.startswith("  [") and "proba_true" not in line) == 400
    code, out = cli("diff", "scores", "1", "9", "--db", db_url)
    assert code == 1 and "scores has no version 9" in out


def test_history_without_flips_names_the_database(cli, db_url, job):
    """``pipeline history churn_scores --alias nosuch`` printed a bare header, ``flipped_at  from  to  reason  by``,
    where the README says every command that finds nothing names the database it looked in."""
    assert cli("run", "scores", "--db", db_url, "--no-activate")[0] == 0
    code, out = cli("history", "scores", "--db", db_url)
    assert code == 0 and out.startswith("no flips of scores recorded in "), out
    code, out = cli("history", "scores", "--alias", "challenger", "--db", db_url)
    assert code == 0 and out.startswith("no flips of scores__challenger recorded in "), out


def test_a_metrics_file_in_a_missing_folder_is_refused_before_the_run(cli, db_url, engine, job, tmp_path):
    """``pipeline run churn --force --metrics-file /nonexistent/dir/m.prom`` published version 15, then exited 1 with
    ``Error: unexpected FileNotFoundError: ... '/nonexistent/dir/m.prom.26962.140633263811456'``: a published run
    reported as a bug, with prometheus_client's temporary file for a name."""
    code, out = cli("run", "scores", "--db", db_url, "--metrics-file", str(tmp_path / "nowhere" / "scores.prom"))
    assert code == 2 and f"folder {tmp_path / 'nowhere'} does not exist" in out and "unexpected" not in out, out
    with engine.connect() as conn:
        assert not engine.dialect.has_table(conn, "pipeline_versions")


def test_a_report_to_a_missing_folder_fails_in_one_line(cli, db_url, job, tmp_path):
    """``pipeline report churn_scores --out /nonexistent/dir/r.html`` said ``Error: unexpected FileNotFoundError:
    [Errno 2] ... (run `pipeline --debug ...` for the traceback)``, the CLI's wording for a bug."""
    assert cli("run", "scores", "--db", db_url)[0] == 0
    out_file = tmp_path / "nowhere" / "scores.html"
    code, out = cli("report", "scores", "--db", db_url, "--out", str(out_file))
    assert (code, out.strip()) == (1, f"Error: cannot write the report to {out_file}: No such file or directory")


def test_alias_commands(cli, db_url, engine, job):
    assert cli("run", "scores", "--db", db_url)[0] == 0
    assert cli("run", "scores", "--db", db_url, "--force", "--no-activate")[0] == 0
    code, out = cli("activate", "scores", "2", "--alias", "challenger", "--db", db_url)
    assert (code, out.strip()) == (0, "scores__challenger: version 2 is active (was none)")
    code, out = cli("versions", "scores", "--db", db_url)
    assert out.splitlines()[1].split()[-1] == "champion" and out.splitlines()[2].split()[-1] == "challenger"
    code, out = cli("history", "scores", "--alias", "challenger", "--db", db_url)
    assert code == 0 and [line.split()[2:4] for line in out.splitlines()[1:]] == [["-", "2"]]
    code, out = cli("activate", "scores", "2", "--alias", "Bad-Name", "--db", db_url)
    assert code == 1 and "alias 'Bad-Name' must be lower-case" in out
