"""Progress: a bar on a terminal, periodic log lines elsewhere, nothing with --quiet."""

from __future__ import annotations

from pipeline import load_job, run_job
from pipeline.cli.progress import reporter

from helpers import CUSTOMERS_JOB, customers_frame, write_table


def test_a_run_reports_rows_as_it_writes(engine, write_job):
    write_table(engine, "customers", customers_frame(1000))
    path = write_job(CUSTOMERS_JOB.replace('keys = ["customer_id"]', 'keys = ["customer_id"]\nchunk_size = 300'))
    seen = []
    run_job(load_job(path), engine, progress=lambda rows, expected: seen.append((rows, expected)))
    assert seen == [(300, None), (600, None), (900, None), (1000, None)]
    seen.clear()
    run_job(load_job(path), engine, force=True, progress=lambda rows, expected: seen.append((rows, expected)))
    assert seen[-1] == (1000, 1000)  # the active version's size is the expected total


def test_log_lines_without_a_terminal(caplog):
    caplog.set_level("INFO", logger="pipeline")
    with reporter("scores", terminal=False, every=0) as update:
        update(500, 1000)
        update(1000, 1000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("scores: 500 rows written, ") and "rows/s, about" in lines[0]
    assert lines[1].startswith("scores: 1000 rows written")


def test_a_bar_on_a_terminal_and_nothing_when_quiet(capsys):
    with reporter("scores", terminal=True) as update:
        update(250_000, 1_000_000)
        update(1_000_000, 1_000_000)
    err = capsys.readouterr().err
    assert "scores: 100%" in err and "1.00M/1.00M" in err and "rows/s" in err
    with reporter("scores", quiet=True) as update:
        assert update is None
