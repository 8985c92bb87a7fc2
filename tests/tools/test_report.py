"""``pipeline report``: one self-contained HTML page whose plots can be found and which needs no network."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from pipeline import load_job, run_job
from pipeline.cli import main
from pipeline.errors import AuditError, TableError
from pipeline.serve.retention import gc
from pipeline.tools.report import build_report

from helpers import CUSTOMERS_JOB, customers_frame, train_model, write_table


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.headings: list[str] = []
        self.links: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_heading = tag in ("h1", "h2", "h3")
        self.links += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        if self._in_heading and data.strip():
            self.headings.append(data.strip())
            self._in_heading = False


def test_report_has_a_plot_per_output_and_the_history(engine, db_url, write_job, tmp_path, monkeypatch):
    write_table(engine, "customers", customers_frame(300))
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), engine)
    train_model(load_job(path).model.path, seed=3)
    run_job(load_job(path), engine)
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(main, ["report", "scores", "--out", "r.html", "--db", db_url])
    assert out.exit_code == 0 and "report of v2 against v1 with 3 plots written to r.html" in out.output
    text = (tmp_path / "r.html").read_text()
    page = Page()
    page.feed(text)
    assert page.tags.count("svg") == 3 and page.links == []
    assert {"scores: v2 against v1", "Output distributions", "proba_false", "proba_true", "Drift",
            "Recent versions", "Flip history"} <= set(page.headings)
    assert re.search(r"PSI v1 to v2: <b>\d+\.\d{4}</b>", text)
    assert "keys only in v1: 0, only in v2: 0, in both: 300" in text
    assert text.count("run of job scores") == 2


def test_report_of_a_single_version(engine, write_job):
    write_table(engine, "customers", customers_frame(50))
    run_job(load_job(write_job(CUSTOMERS_JOB)), engine)
    found = build_report(engine, "scores")
    assert (found.a, found.b, found.plots) == (None, 1, 3)
    assert "No earlier version to compare with." in found.html


def test_a_version_whose_table_is_gone_is_refused_by_name(engine, write_job):
    """`pipeline report scores --a 2` of a version whose run failed its audits, its table dropped by `pipeline gc`,
    said "database error: no such table: scores__v2"."""
    write_table(engine, "customers", customers_frame(50))
    path = write_job(CUSTOMERS_JOB)
    run_job(load_job(path), engine)
    path.write_text(path.read_text() + "[audits]\nbounds = { proba_true = { max = 0.0 } }\n")
    with pytest.raises(AuditError):
        run_job(load_job(path), engine, force=True)
    assert gc(engine, "scores").cleaned == [2]
    with pytest.raises(TableError, match="no version 2 with a table to report on"):
        build_report(engine, "scores", a=2)
