"""The run journal: where a run that cannot even record its start (another writer holds an SQLite file past
the job's ``publish_timeout``) leaves its record, one JSON line per run, until the next run folds it into
``pipeline_runs``. Only databases with a single writer have one (see :meth:`Dialect.journal`)."""

from __future__ import annotations

import json
import logging
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from pipeline.database import state

log = logging.getLogger("pipeline")


def append(journal: Path, record: dict[str, Any]) -> None:
    """Add one run's record (job, table, logical_date, trigger, scheduled_for, started_at, finished_at, host,
    pid, error; dates as ISO text; and ``run_id`` when an earlier try of the run recorded it).

    Raises:
        OSError: the file cannot be written.
    """
    with journal.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")


def fold(conn: Connection, journal: Path | None) -> int | None:
    """Move the runs a journal file holds into ``pipeline_runs`` (as failed); how many, None without a journal."""
    if journal is None or not journal.exists():
        return None
    lines = []
    for line in journal.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a line cut short by a crash while it was written
            log.warning("%s: skipped a line that is not a run record: %.80s", journal, line)
    for r in lines:
        finished = datetime.fromisoformat(r["finished_at"])
        if r.get("run_id") is not None and state.fail_recorded_run(conn, r["run_id"], finished, r["error"]):
            continue  # a later try of a run that recorded itself: its own row says how it ended
        run_id = state.start_run(
            conn, job=r["job"], table=r["table"], logical_date=date.fromisoformat(r["logical_date"]),
            trigger=r["trigger"], scheduled_for=datetime.fromisoformat(r["scheduled_for"]) if r["scheduled_for"]
            else None, now=datetime.fromisoformat(r["started_at"]), host=r["host"], pid=r["pid"])
        if run_id is not None:
            state.finish_run(conn, run_id, "failed", finished, None, r["error"])
    return len(lines)
