"""The CLI as the README shows it: every documented command form parses, global options go before or after
the command, and no command is silent about the database it used or creates one it should not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

from helpers import CUSTOMERS_JOB, customers_frame, scheduled, write_table

ROOT = Path(__file__).resolve().parent.parent.parent
COMMANDS = set(main.commands)
#: What a placeholder in a documented form stands for in the demo set up below.
PLACEHOLDERS = {"JOB": "scores", "NAME": "scores", "TABLE": "scores", "VERSION": "1", "N": "1", "A": "1", "B": "1",
                "P": "20", "D": "2026-01-02", "YYYY-MM-DD": "2026-01-02", "DIR": "jobs", "PATH": "out.prom",
                "FILE.html": "out.html", "URL": "sqlite:///other.db", "ADDRESS": "tcp://127.0.0.1:8786"}


def documented_forms() -> list[str]:
    """Every ``pipeline COMMAND ...`` the README shows in code: in backticks and in code blocks (comments cut)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()] + spans
    found = []
    for line in lines:
        for part in re.split(r"\s*(?:&&|\|\||;|>>?)\s*", line):
            words = part.split()
            if len(words) < 2 or words[0] != "pipeline":
                continue
            rest = [w for w in words[1:]]
            first = next((w for w in rest if not w.startswith("-")), None)
            if first in COMMANDS or (first is None and rest):
                found.append(" ".join(words))
    return sorted(set(found))


def expand(form: str) -> list[str]:
    """The arguments of a documented form, with every optional part in and placeholders filled in."""
    form = form.replace("\\|", "|")
    form = re.sub(r"\[([^\[\]]*)\]", r"\1", form)  # optional parts are all given
    args = []
    for word in form.split()[1:]:
        word = word.split("|")[0]  # the first of the alternatives
        args.append(PLACEHOLDERS.get(word, word))
    return args


def parses(args: list[str]) -> str | None:
    """None when click accepts ``args`` (the group's options, the command and its options); else its message."""
    try:
        with main.make_context("pipeline", list(args), resilient_parsing=False) as ctx, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # protected_args: click 8 keeps the command there
            name, command, rest = main.resolve_command(ctx, ctx.protected_args + ctx.args)
            command.make_context(name, rest, parent=ctx)
    except SystemExit:
        return None  # --help or --version: click exits after printing
    except Exception as exc:  # click's usage errors
        return f"{type(exc).__name__}: {exc}"
    return None


def test_the_readme_shows_every_command():
    forms = documented_forms()
    shown = {w for form in forms for w in form.split()[1:] if w in COMMANDS}
    assert COMMANDS <= shown, f"commands the README never shows: {sorted(COMMANDS - shown)}"
    assert len(forms) > 40


@pytest.mark.parametrize("form", [f for f in documented_forms() if len(f.split()) > 2])
def test_every_documented_form_parses(form):
    """Bare ``pipeline COMMAND`` mentions in the prose are names; every longer form must parse as written."""
    assert parses(expand(form)) is None, form


@pytest.mark.parametrize("option", [["--db", "sqlite:///x.db"], ["--jobs", "jobs"], ["--quiet"], ["--debug"],
                                    ["--log-format", "json"]])
@pytest.mark.parametrize("command", [["status"], ["schedule"], ["cron"], ["runs"], ["versions", "t"],
                                     ["rollback", "t"], ["activate", "t", "1"], ["gc", "t"], ["plan", "j"],
                                     ["run", "j"], ["backfill", "j", "--start", "2026-01-01", "--end", "2026-01-02"],
                                     ["split", "t", "--alias", "c", "--percent", "5"], ["history", "t"],
                                     ["audit", "t", "1"], ["diff", "t", "1", "2"], ["report", "t"]])
def test_global_options_go_before_or_after_the_command(command, option):
    assert parses([*option, *command]) is None
    assert parses([*command, *option]) is None


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_commands_help_lists_the_global_options(command):
    out = CliRunner().invoke(main, [command, "--help"]).output
    for option in ("--db URL", "--jobs DIR", "--quiet", "--debug", "--log-format"):
        assert option in out, f"{command} --help lacks {option}"


@pytest.fixture
def demo(tmp_path, monkeypatch, write_job) -> str:
    """A folder as a user has it after `make demo`: jobs/scores.toml targeting a SQLite file (not the default
    one), one run done; the database's URL."""
    from pipeline.database.engines import make_engine

    sqlite_url = f"sqlite:///{tmp_path / 'demo.db'}"
    engine = make_engine(sqlite_url)
    write_table(engine, "customers", customers_frame(60))
    engine.dispose()
    write_job(scheduled(f'target = "{sqlite_url}"\n' + CUSTOMERS_JOB, "0 3 * * *"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    assert CliRunner().invoke(main, ["run", "scores"]).exit_code == 0
    return sqlite_url


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_options_after_the_command_take_effect(demo):
    sqlite_url = demo
    code, out = invoke("status", "--quiet")
    assert code == 0 and "scores" in out and " INFO " not in out
    code, out = invoke("--db", sqlite_url, "status")
    assert code == 0 and out.splitlines()[1].split()[:2] == ["scores", "1"]
    code, out = invoke("versions", "scores", "--jobs", "nowhere")  # no job to find the table by: said so
    assert code == 1 and "no job in nowhere/ writes 'scores'" in out and "--db URL" in out
    code, out = invoke("cron", "--jobs", "jobs", "--db", sqlite_url, "--log-dir", "logs")
    line = next(line for line in out.splitlines() if line.startswith("0 3 * * *"))
    assert code == 0 and f"--db {sqlite_url}" in line and "run scores --scheduled" in line


def test_a_table_two_jobs_write_to_different_databases_needs_db(demo, tmp_path, write_job):
    """A job copied beside another under the same table name but another target: a command given only the table
    cannot know which database is meant, and says so instead of reading the first job's."""
    from pipeline.database.engines import make_engine

    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    engine = make_engine(other_url)
    write_table(engine, "customers", customers_frame(30))
    engine.dispose()
    write_job(f'target = "{other_url}"\n' + CUSTOMERS_JOB, name="copy")
    assert invoke("run", "copy")[0] == 0
    for command in (["versions", "scores"], ["rollback", "scores"], ["gc", "scores"]):
        code, out = invoke(*command)
        assert code == 1 and out.strip() == (
            f"Error: jobs in jobs/ write 'scores' to different databases (copy.toml to {other_url}, scores.toml to "
            f"{demo}); name one with --db URL or $PIPELINE_DATABASE_URL"), out
    for url, rows in ((demo, "60"), (other_url, "30")):
        code, out = invoke("versions", "scores", "--db", url)
        assert code == 0 and out.splitlines()[1].split()[:5:4] == ["*", rows], out  # the active version, its rows
    code, out = invoke("status", "--json")  # each table with the next tick of the job writing it there
    ticks = {row["database"]: row["next_tick"] for row in json.loads(out)}
    assert code == 0 and ticks[other_url] is None and ticks[demo] is not None, out
    for url, scheduled_there in ((other_url, False), ("sqlite:///demo.db", True)):  # demo's, spelled otherwise
        code, out = invoke("status", "--json", "--db", url)
        assert code == 0 and (json.loads(out)[0]["next_tick"] is not None) is scheduled_there, out
    code, out = invoke("gc", "scores", "--db", "sqlite:///third.db")  # neither job's database: whose keep?
    assert code == 1 and out.strip().endswith(f"{demo}), none to sqlite:///third.db; name one with --db URL or "
                                              "$PIPELINE_DATABASE_URL"), out


def test_runs_of_a_job_whose_file_no_longer_loads_are_read_by_name_with_db(demo, tmp_path):
    """The model file gone: `pipeline runs scores --db URL` failed on the job file, when the history is wanted
    most. Without a database named, the job file says where to look, so its error stands."""
    (tmp_path / "jobs" / "models" / "scores.joblib").unlink()
    code, out = invoke("runs", "scores", "--db", demo)
    assert code == 0 and out.startswith("Warning: ") and "model.path: file not found" in out.splitlines()[0], out
    assert "its runs are read by the name 'scores'" in out and "succeeded" in out, out
    code, out = invoke("runs", "scores")
    assert code == 1 and out.startswith("Error: ") and "model.path: file not found" in out, out


def test_status_shows_the_soonest_tick_of_the_jobs_writing_a_table_there(demo, write_job):
    """A second job writing the same table to the same database (a challenger's, every minute, beside the demo's at
    03:00): status showed the tick of whichever job file came first, 03:00; the table is next written at the
    soonest."""
    write_job(scheduled(f'target = "{demo}"\n' + CUSTOMERS_JOB, "* * * * *"), name="scores_challenger")
    before = datetime.now(timezone.utc)
    code, out = invoke("status", "--json")
    (row,) = json.loads(out)
    assert code == 0 and before < datetime.fromisoformat(row["next_tick"]) <= before + timedelta(minutes=1), out


@pytest.mark.parametrize("a, b, same", [
    ("postgres://u@h/db", "postgresql+psycopg://u:secret@h:5432/db", True),
    ("postgresql://u@h/db", "postgresql://u@h/db?options=-csearch_path%3Dother", False),
    ("postgresql://u@h/db", "postgresql://u@h:5433/db", False),
    ("mariadb://root@h/test", "mariadb+mariadbconnector://root@h:3306/test", True),
    ("sqlite:///demo.db", "sqlite:///{cwd}/demo.db", True),
    ("sqlite:///demo.db", "sqlite:///other.db", False),
])
def test_database_of_compares_databases_not_spellings(a, b, same):
    from pipeline.database.engines import database_of

    assert (database_of(a) == database_of(b.format(cwd=os.getcwd()))) is same


def test_cron_names_a_broken_job_and_fails(demo, tmp_path):
    (tmp_path / "jobs" / "broken.toml").write_text("[domain]\nkeys = 1\n")
    result = CliRunner().invoke(main, ["cron"])
    assert result.exit_code == 1
    assert "broken.toml" in result.stderr and "left out of the crontab" in result.stderr
    assert "0 3 * * *" in result.stdout  # the good jobs' lines are still printed


def test_runs_lists_a_job_by_name_without_its_file(demo, tmp_path):
    sqlite_url = demo
    (tmp_path / "jobs" / "scores.toml").rename(tmp_path / "elsewhere.toml")
    code, out = invoke("runs", "scores", "--db", sqlite_url)
    row = out.splitlines()[1].split()
    assert code == 0 and (row[1], row[3], row[4]) == ("scores", "manual", "succeeded")
    code, out = invoke("runs", "nobody", "--db", sqlite_url)
    assert code == 0 and out.strip() == f"no runs of nobody recorded in {sqlite_url}"


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("args, said", [
    (["status"], "no prediction tables yet in sqlite:///predictions.db (no such file); name it with --db URL"),
    (["runs"], "no database at sqlite:///predictions.db (predictions.db does not exist)"),
    (["versions", "upsell_scores"], "no job in jobs/ writes 'upsell_scores'"),
    (["rollback", "upsell_scores"], "no job in jobs/ writes 'upsell_scores'"),
    (["activate", "upsell_scores", "2"], "no job in jobs/ writes 'upsell_scores'"),
    (["history", "upsell_scores"], "no job in jobs/ writes 'upsell_scores'"),
    (["gc", "upsell_scores"], "no job in jobs/ writes 'upsell_scores'"),
    (["split", "upsell_scores", "--alias", "challenger", "--percent", "10"], "no job in jobs/ writes 'upsell_scores'"),
    (["audit", "upsell_scores", "1"], "no job in jobs/ writes 'upsell_scores'"),
    (["diff", "upsell_scores", "1", "2"], "no job in jobs/ writes 'upsell_scores'"),
    (["report", "upsell_scores"], "no job in jobs/ writes 'upsell_scores'"),
    (["runs", "upsell"], "no database at sqlite:///predictions.db"),
    (["run", "upsell"], "no job file 'upsell'"),
    (["plan", "upsell"], "no job file 'upsell'"),
    (["backfill", "upsell", "--start", "2026-01-01", "--end", "2026-01-02"], "no job file 'upsell'"),
    (["validate"], "no job files in jobs/"),
    (["jobs"], "no job files in jobs/"),
    (["cron"], "no job with a schedule in"),
    (["schedule"], "no job with a schedule in jobs/"),
])
def test_from_an_empty_folder_no_command_creates_a_file_and_each_names_the_database(tmp_path, monkeypatch, args,
                                                                                   said):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PIPELINE_DATABASE_URL", raising=False)
    code, out = invoke(*args)
    assert said in out, out
    assert files(tmp_path) == set()


def test_a_table_in_no_database_names_the_one_it_looked_in(demo):
    sqlite_url = demo
    code, out = invoke("rollback", "upsell_scores", "--db", sqlite_url)
    assert code == 1 and f"no prediction table 'upsell_scores' in this database, {sqlite_url}" in out


def test_a_scheduler_started_with_jobs_after_the_command_runs(demo, tmp_path):
    sqlite_url = demo
    """`pipeline schedule --jobs DIR`, as the README documents it, starts (and stops on SIGTERM)."""
    env = {**os.environ, "PIPELINE_DATABASE_URL": sqlite_url}
    child = subprocess.Popen([sys.executable, "-m", "pipeline", "schedule", "--jobs", "jobs"], cwd=tmp_path, env=env,
                             stderr=subprocess.PIPE, text=True)
    try:
        first = child.stderr.readline()  # the scheduler says what it scheduled, then waits for ticks
        assert child.poll() is None and "scores: scheduled on '0 3 * * *'" in first, first + child.stderr.read()
    finally:
        child.terminate()
        child.wait(timeout=60)
    assert child.returncode == 0
