"""Show progress: a run's rows as a bar on a terminal, else a log line every few seconds (cron, scheduler); a
backfill's dates as a line each, under a bar over the dates on a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable, Iterator

import click

log = logging.getLogger("pipeline")
LOG_EVERY = 10.0  # seconds between progress lines when nobody watches a terminal


@contextlib.contextmanager
def reporter(label: str, quiet: bool = False, terminal: bool | None = None,
             every: float = LOG_EVERY) -> Iterator[Callable[[int, int | None], None] | None]:
    """A progress callback for :func:`pipeline.run_job` (None when ``quiet``).

    On a terminal it drives a tqdm bar with rows, rows per second and, when the active
    version's size gives an expected total, an ETA; otherwise it logs a line every
    ``every`` seconds.
    """
    if quiet:
        yield None
        return
    if sys.stderr.isatty() if terminal is None else terminal:
        from tqdm import tqdm

        with tqdm(desc=label, unit="rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True) as bar:
            def update(rows: int, expected: int | None) -> None:
                if expected and bar.total != expected:
                    bar.total = max(expected, rows)
                bar.update(rows - bar.n)

            yield update
        return
    started = time.monotonic()
    last = [started]

    def log_line(rows: int, expected: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < every:
            return
        last[0] = now
        rate = rows / max(now - started, 1e-9)
        eta = f", about {max(expected - rows, 0) / rate:.0f}s left" if expected and rate else ""
        log.info("%s: %d rows written, %.0f rows/s%s", label, rows, rate, eta)

    yield log_line


@contextlib.contextmanager
def date_reporter(label: str, dates: int, quiet: bool = False,
                  terminal: bool | None = None) -> Iterator[Callable[[str], None]]:
    """A callback for one line per finished date of a backfill: printed, and on a terminal (unless ``quiet``) kept
    above a tqdm bar over the ``dates``, with rate and ETA."""
    if quiet or not (sys.stderr.isatty() if terminal is None else terminal):
        yield click.echo
        return
    from tqdm import tqdm

    with tqdm(total=dates, desc=label, unit="date", file=sys.stderr) as bar:
        def say(line: str) -> None:
            bar.write(line)
            bar.update(1)

        yield say
