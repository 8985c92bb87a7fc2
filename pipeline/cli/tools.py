"""The operator's tools over a job or a table: validate, jobs, plan, diff and report."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import TYPE_CHECKING

import click

from pipeline.cli.base import Databases, Settings, fail_for_broken, main, pass_databases, pipeline_errors, print_table
from pipeline.cron import next_tick
from pipeline.database.engines import redact
from pipeline.errors import JobFileError, PipelineError
from pipeline.jobs import find_job, iter_jobs, job_files, load_job
from pipeline.names import labels_text

if TYPE_CHECKING:
    from pipeline.run.changes import Pending


@main.command()
@click.argument("jobs", nargs=-1)
@click.option("--date", "logical_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Logical date given to the domain queries (default: today in each job's time zone).")
@pass_databases
@click.pass_obj
@pipeline_errors
def validate(settings: Settings, jobs: tuple[str, ...], logical_date: datetime | None, db: Databases) -> None:
    """Check job files as a run would before it scores: the file, the model and its pin, the columns that
    [output] and [audits] name, the executor, the cron, and the domain's first chunk, read and scored.

    Without JOB, every job file in the jobs directory. One line per job; exits 1 if any fails.
    Nothing is written.

    \b
    Example:
      pipeline validate
      pipeline validate churn jobs/upsell.toml
    """
    from pipeline.run.context import today
    from pipeline.tools.validate import check_job  # loads pandas and the models' libraries

    paths = [find_job(j, settings.jobs_dir) for j in jobs] or job_files(settings.jobs_dir)
    if not paths:
        raise PipelineError(f"no job files in {settings.jobs_dir}/")
    failed = 0
    for path in paths:
        try:
            job = load_job(path)
            engine, absent = db.for_checking(job)
            checked = check_job(job, engine, logical_date.date() if logical_date else today(job))
        except PipelineError as exc:
            failed += 1
            why = str(exc).removeprefix(f"{path}: ")  # job file errors name the file already
            click.echo(f"{path}: FAILED: {why}")
            continue
        click.echo(f"{path}: ok: {checked.summary()}" + (f"; {absent}" if absent else ""))
    if failed:
        raise PipelineError(f"{failed} of {len(paths)} job file(s) failed")


@main.command(name="jobs")
@pass_databases
@click.pass_obj
@pipeline_errors
def list_jobs(settings: Settings, db: Databases) -> None:
    """List every job in the jobs directory: its table, schedule, next tick, and its last run.

    A job file that does not load is named, with why, and the exit status is 1.

    \b
    Example:
      pipeline jobs
    """
    from pipeline.serve import catalog

    broken: list[JobFileError] = []
    found = iter_jobs(settings.jobs_dir, on_error=broken.append)
    if not found and not broken:
        click.echo(f"no job files in {settings.jobs_dir}/")
        return
    rows = []
    for job in found:
        url = db.url(job)
        last = None
        if not db.absent(url):  # a database no run made yet has no runs to show
            last = next(iter(catalog.runs(db.open(url), job.name, 1)), None)
        rows.append([job.name, job.output.table, job.schedule, next_tick(job),
                     f"{last.status} {last.logical_date}" if last else None,
                     last.finished_at or last.started_at if last else None, redact(url)])
    if rows:
        print_table(["job", "table", "schedule", "next tick", "last run", "at", "database"], rows)
    fail_for_broken(broken, "do not load")


@main.command()
@click.argument("job")
@click.option("--date", "logical_date", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Logical date to plan for (default: today in the job's time zone).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--incremental", is_flag=True, help="Also count the keys an incremental run would score and copy.")
@pass_databases
@click.pass_obj
@pipeline_errors
def plan(settings: Settings, job: str, logical_date: datetime | None, as_json: bool, incremental: bool,
         db: Databases) -> None:
    """Show what a run would do, without writing: domain size, features, outputs, model, audits, SQL.

    It loads the model, lists and counts the domain and scores its first chunk, so it
    fails (exit 1) on the mistakes a run would fail on.

    \b
    Example:
      pipeline plan churn --date 2026-01-31
    """
    loaded = load_job(find_job(job, settings.jobs_dir))
    from pipeline.run.context import today
    from pipeline.tools.plan import plan_job  # loads pandas and the models' libraries

    engine, absent = db.for_checking(loaded)
    found = plan_job(loaded, engine, logical_date.date() if logical_date else today(loaded), incremental=incremental)
    if absent:
        found = dataclasses.replace(found, target=absent)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(found), default=str, indent=2))
        return
    active = f"v{found.active_version}" if found.active_version else "none"
    source = found.model_source
    for label, value in [
        ("job", f"{found.job} -> {found.table} on {found.target}"),
        ("run", f"skipped: {found.skipped}" if found.skipped else
                f"version {found.version} for {found.logical_date} (active: {active})"),
        ("domain", f"{found.domain_size} rows; keys {', '.join(found.keys)}; columns "
                   f"{', '.join(found.domain_columns)}"),
        ("model", f"{found.model_class} {found.method}, sha256 {found.model_sha256}"),
        ("source", found.model_location if source is None else
                   f"{found.model_location} (from {source.uri}), run {source.run_id or 'none'}"),
        ("library", _library(found.library)),
        ("features", ", ".join(found.features)),
        ("inputs", ", ".join(f"{f} {d}" + (f" categories {c}" if c is not None else "")
                             for f, d, c in found.input_schema)),
        *([("changed", "; ".join(found.type_changes) + " (allowed by [domain] allow_type_changes)")]
          if found.type_changes else []),
        ("outputs", ", ".join(f"{c} {t}" for c, t in found.outputs)),
        *([("classes", labels_text(found.labels))] if found.labels else []),
        ("audits", ", ".join(found.audits)),
        ("executor", found.executor),
        *(("serving", line) for line in found.serving),
        *([("top-up", f"{found.incremental[0]} rows to score (new or changed), {found.incremental[1]} copied, "
                      f"{found.incremental[2]} active rows changed or gone")] if found.incremental else []),
        *([("top-up", _changes(found.change_driven))] if found.change_driven else []),
        *([("top-up", f"none, a full run: {found.full_because}")] if found.full_because else []),
        ("schedule", f"{found.schedule}, next tick {found.next_tick}" if found.schedule else "none"),
    ]:
        click.echo(f"{label + ':':<10} {value}")
    click.echo("\nSQL:\n" + ";\n".join(found.sql) + ";")


def _changes(pending: Pending) -> str:
    """A change-driven top-up's plan in words (:class:`pipeline.run.changes.Pending`)."""
    active = pending.active
    removed = "" if pending.removed is None else f", {pending.removed} key(s) removed"
    carried = "copied" if active.lineage is None else f"kept in lineage {active.lineage}"
    return (f"from v{active.version} (watermark {pending.since}): {pending.changed} row(s) changed since{removed}; "
            f"the rest of v{active.version}'s {active.row_count} rows {carried}")


def _library(library: dict[str, str | None] | None) -> str:
    """The model's library and version, and the version it was trained with where that differs."""
    if not library:
        return "unknown"
    trained = library.get("trained_with")
    line = f"{library['name']} {library.get('installed') or '(not installed)'}"
    return line if not trained or trained == library.get("installed") else f"{line} (trained with {trained})"


@main.command()
@click.argument("table")
@click.argument("a", type=click.IntRange(min=1))
@click.argument("b", type=click.IntRange(min=1))
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0), help="Biggest movers to show.")
@pass_databases
@pipeline_errors
def diff(table: str, a: int, b: int, top: int, db: Databases) -> None:
    """Compare versions A and B: keys only in one, and how each output moved (B - A).

    Computed in the database; only figures and the top movers come back.

    \b
    Example:
      pipeline diff churn_scores 3 4 --top 5
    """
    from pipeline.tools.diff import diff_versions

    found = diff_versions(db.for_table(table), table, a, b, top)
    click.echo(f"{table}: v{a} {found.rows_a} rows, v{b} {found.rows_b} rows; keys only in v{a}: {found.only_in_a}, "
               f"only in v{b}: {found.only_in_b}, in both: {found.in_both}")
    for names, side in ((found.columns_only_in_a, a), (found.columns_only_in_b, b)):
        if names:
            click.echo(f"columns only in v{side}: {', '.join(names)}")
    for column in found.numeric:
        if column.mean_change is None:
            click.echo(f"\n{column.column}: nothing to compare")
            continue
        click.echo(f"\n{column.column}: {column.changed} of {column.shared} shared keys changed "
                   f"({column.changed_share:.1%}); mean change {column.mean_change:+.6g}, mean |change| "
                   f"{column.mean_abs_change:.6g}, max |change| {column.max_abs_change:.6g}")
        widest = max((b_.count for b_ in column.histogram), default=0) or 1
        for bar in column.histogram:
            span = f"[{bar.low:+.4g}, {bar.high:+.4g})"
            click.echo(f"  {span:<22} {bar.count:>9}  {'#' * round(30 * bar.count / widest)}")
        if column.top:
            print_table([*found.keys, f"v{a}", f"v{b}", "change"],
                        [[*m.key, m.a, m.b, f"{m.change:+.6g}"] for m in column.top])
    for column in found.labels:
        click.echo(f"\n{column.column}: {column.changed} of {column.shared} shared keys changed "
                   f"({column.changed_share:.1%})")
        for change in column.top:
            click.echo(f"  {change.a} -> {change.b}: {change.count}")


@main.command()
@click.argument("table")
@click.option("--out", "out", default=None, metavar="FILE.html", help="Where to write it (default: TABLE.html).")
@click.option("--a", "a", type=click.IntRange(min=1), help="The version to compare with (default: the previous).")
@click.option("--b", "b", type=click.IntRange(min=1), help="The version to show (default: the active one).")
@pass_databases
@pipeline_errors
def report(table: str, out: str | None, a: int | None, b: int | None, db: Databases) -> None:
    """Write a self-contained HTML report with plots: distributions, drift, versions, flips.

    \b
    Example:
      pipeline report churn_scores --out churn.html
    """
    from pipeline.tools.report import build_report

    found = build_report(db.for_table(table), table, a, b)
    path = out or f"{table}.html"
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(found.html)
    except OSError as exc:
        raise PipelineError(f"cannot write the report to {path}: {exc.strerror}") from exc
    click.echo(f"{table}: report of v{found.b}" + (f" against v{found.a}" if found.a else "")
               + f" with {found.plots} plots written to {path}")
