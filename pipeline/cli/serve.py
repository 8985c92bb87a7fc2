"""Commands over what applications read: versions, activate, rollback, split, history, status, gc."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from pipeline.cli.base import (HOW_TO_POINT, Databases, Settings, main, pass_databases, pipeline_errors, print_table,
                               versions_text, writers_of)
from pipeline.errors import PipelineError
from pipeline.jobs import iter_jobs
from pipeline.jobspec import DEFAULT_KEEP
from pipeline.names import DEFAULT_ALIAS, labels_text, view_name

if TYPE_CHECKING:
    from pipeline.database import state

# The library is imported by each command when it runs, so that `--help` and a rollback start at once.


def alias_option(func):
    return click.option("--alias", default=DEFAULT_ALIAS, show_default=True,
                        help="Which pointer: champion is the table's own view; another alias serves "
                             "TABLE__ALIAS.")(func)


@main.command()
@click.argument("table")
@pass_databases
@pipeline_errors
def versions(table: str, db: Databases) -> None:
    """List the versions of a prediction table; * marks the active one.

    For a job with [domain] changed, watermark is the source's clock as the version's run
    began (the next top-up reads the changes since), and top-ups counts those since the
    last full run.

    \b
    Example:
      pipeline versions churn_scores
    """
    engine = db.for_table(table)
    from pipeline.serve import catalog

    rows = catalog.versions(engine, table)
    print_table(
        ["", "version", "status", "logical_date", "rows", "model_sha256", "model", "started", "finished", "error",
         "classes", "type changes", "watermark", "top-ups", "aliases"],
        [["*" if r.active else "", v.version, v.status, v.logical_date, v.row_count, v.model_sha256[:12],
          v.model_path if v.model_source else Path(v.model_path).name, v.started_at, v.finished_at, v.error,
          labels_text(v.output_labels or ()) or None, v.type_changes, v.watermark, v.top_ups,
          ", ".join(r.aliases) or None]
         for r in rows for v in [r.version]],
    )


@main.command()
@click.argument("table")
@click.argument("version", type=click.IntRange(min=1))
@alias_option
@pass_databases
@pipeline_errors
def activate(table: str, version: int, alias: str, db: Databases) -> None:
    """Point a table's view (or an alias view, TABLE__ALIAS) at a retained version.

    \b
    Example:
      pipeline activate churn_scores 2
      pipeline activate churn_scores 3 --alias challenger
    """
    from pipeline.serve.pointer import activate as activate_version

    flip = activate_version(db.for_table(table), table, version, alias=alias)
    was = "already" if flip.from_version == flip.to_version else f"(was {flip.from_version or 'none'})"
    click.echo(f"{view_name(table, alias)}: version {flip.to_version} is active {was}")


@main.command()
@click.argument("table")
@click.option("--to", "to", type=click.IntRange(min=1), help="Version to go back to (default: the previous one).")
@alias_option
@pass_databases
@pipeline_errors
def rollback(table: str, to: int | None, alias: str, db: Databases) -> None:
    """Flip a table back to the previous ready version (or to --to VERSION).

    \b
    Example:
      pipeline rollback churn_scores
      pipeline rollback churn_scores --to 3
    """
    from pipeline.serve.pointer import rollback as roll_back

    flip = roll_back(db.for_table(table), table, to, alias=alias)
    click.echo(f"{view_name(table, alias)}: rolled back from version {flip.from_version} to {flip.to_version}")


@main.command()
@click.argument("table")
@click.option("--alias", required=True, help="The alias whose versions serve the split's share (e.g. challenger).")
@click.option("--percent", required=True, type=int, help="Share of keys, 0..100, served by the alias (0 removes "
                                                          "the split).")
@pass_databases
@pipeline_errors
def split(table: str, alias: str, percent: int, db: Databases) -> None:
    """Serve an A/B split in the view TABLE__ab: keys whose ab_bucket is below PERCENT get the alias's row.

    Every key appears once, with variant (the alias or champion) and model_version. A
    key's bucket is a hash of the key, so it stays in its arm across runs and flips.

    \b
    Example:
      pipeline activate churn_scores 7 --alias challenger
      pipeline split churn_scores --alias challenger --percent 20
      pipeline split churn_scores --alias challenger --percent 0    # remove it
    """
    from pipeline.serve.split import set_split

    found = set_split(db.for_table(table), table, alias, percent)
    if found is None:
        click.echo(f"{table}__ab: removed; {table} serves every key")
    else:
        click.echo(f"{table}__ab: {percent}% of keys from {alias} ({table}__{alias}), the rest from {table}")


@main.command()
@click.argument("table")
@alias_option
@pass_databases
@pipeline_errors
def history(table: str, alias: str, db: Databases) -> None:
    """Show every pointer flip of a table, oldest first.

    \b
    Example:
      pipeline history churn_scores
    """
    from pipeline.database.engines import redact
    from pipeline.serve import catalog

    engine = db.for_table(table)
    flips = catalog.history(engine, table, alias)
    if not flips:  # no version was ever published for the alias
        click.echo(f"no flips of {view_name(table, alias)} recorded in {redact(str(engine.url))}")
        return
    print_table(["flipped_at", "from", "to", "reason", "by"],
                [[f.flipped_at, f.from_version, f.to_version, f.reason, f.actor] for f in flips])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per table, for machines.")
@pass_databases
@click.pass_obj
@pipeline_errors
def status(settings: Settings, as_json: bool, db: Databases) -> None:
    """Show every prediction table: what serves, how old it is, the last run, the next tick.

    Without --db it looks in every target named by the job files (and the default).
    Runs that died are found here and marked failed.

    \b
    Example:
      pipeline status --db postgresql://localhost/app
      pipeline status --json
    """
    from pipeline.cron import next_tick
    from pipeline.database import state
    from pipeline.database.engines import redact
    from pipeline.serve import catalog, retention

    jobs = iter_jobs(settings.jobs_dir)
    urls = db.urls(jobs)
    rows = []
    absent = {url for url in urls if db.absent(url)}  # only a run creates a database
    for url in urls:
        if url in absent:
            continue
        engine = db.for_reading(url)
        for table, version in retention.reap(engine):
            click.echo(f"{table}: version {version} was abandoned by a run that died; marked failed", err=True)
        rows.extend((url, s) for s in catalog.status(engine))
    now = state.utcnow()

    def tick(url: str, table: str) -> datetime | None:
        """The soonest next tick of the jobs writing ``table`` to ``url`` (another may write the same name
        elsewhere; two may write it here, a challenger's beside the champion's)."""
        try:
            writing = writers_of(jobs, table, url, settings.jobs_dir)
        except PipelineError:
            return None  # jobs write it elsewhere, none here
        return min((t for t in map(next_tick, writing) if t is not None), default=None)

    if as_json:
        click.echo(json.dumps([{**dataclasses.asdict(s), "database": redact(url),
                                "next_tick": tick(url, s.table),
                                "age_seconds": (now - s.activated_at).total_seconds() if s.activated_at else None}
                               for url, s in rows], default=str, indent=2))
        return
    if not rows:
        click.echo("no prediction tables yet in " + ", ".join(redact(u) + (" (no such file)" if u in absent else "")
                                                              for u in urls) + (f"; {HOW_TO_POINT}" if absent else ""))
        return
    print_table(["table", "active", "logical_date", "rows", "model", "age", "last run", "failing", "next tick",
                 "aliases", "database"],
                [[s.table, s.active_version, s.logical_date, s.row_count, (s.model_sha256 or "")[:12] or None,
                  _age(now - s.activated_at) if s.activated_at else None,
                  _last_run(s.last_run) if s.last_run else None,
                  (f"{s.failed_runs} ({s.missed_ticks} missed)" if s.missed_ticks else s.failed_runs or None),
                  tick(url, s.table),
                  ", ".join([f"{a}=v{v}" for a, v in s.aliases] + ([f"ab {s.split}"] if s.split else [])) or None,
                  redact(url)] for url, s in rows])


def _last_run(run: state.Run) -> str:
    gates = f" (gates {run.gates_summary})" if run.gates else ""
    return f"{run.status} {run.logical_date}{gates}"


def _age(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@main.command()
@click.argument("table")
@click.option("--keep", type=click.IntRange(min=1),
              help=f"Ready versions to keep (default: the job's [output] keep, else {DEFAULT_KEEP}).")
@pass_databases
@click.pass_obj
@pipeline_errors
def gc(settings: Settings, table: str, keep: int | None, db: Databases) -> None:
    """Drop old version tables; never the active version or its rollback target.

    Failed versions lose their partial tables too. A table that another view still
    reads is kept, and said so.

    \b
    Example:
      pipeline gc churn_scores --keep 2
    """
    job = db.job_for_table(table)
    keep = keep or (job.output.keep if job else DEFAULT_KEEP)
    from pipeline.serve.retention import gc as retire

    result = retire(db.for_table(table), table, keep)
    click.echo(f"{table}: retired {versions_text(result.retired)}; cleaned failed {versions_text(result.cleaned)}")
    for version, why in result.kept.items():
        click.echo(f"{table}: kept version {version}: {why}")
