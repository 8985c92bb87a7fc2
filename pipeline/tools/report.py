"""``pipeline report``: one self-contained HTML page about a prediction table, with plots.

Distributions of each numeric output for two versions (the active one and the one
before it, by default), drift statistics, row counts and run durations over the recent
versions, the upstream gates of recent runs, and the flip history. The plots are matplotlib
SVG written into the page, so it opens anywhere without a network. Histograms are counted in the database.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from pipeline.database import state
from pipeline.database.dialects import dialect_for
from pipeline.database.transactions import reading
from pipeline.errors import TableError
from pipeline.names import previous_version, version_table
from pipeline.run.audits import histogram, population_stability
from pipeline.serve import catalog
from pipeline.tools.diff import NUMERIC_TYPES, diff_versions

BINS = 20
RECENT = 20  # versions in the history plots


@dataclass(frozen=True)
class Report:
    table: str
    a: int | None
    b: int
    html: str
    plots: int


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prologue: the SVG sits inside HTML


def build_report(engine: Engine, table: str, a: int | None = None, b: int | None = None) -> Report:
    """The report of ``table`` comparing version ``a`` with ``b`` (default: previous and active)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = catalog.versions(engine, table)
    history = catalog.history(engine, table)
    ready = [r.version.version for r in rows if r.version.status == "ready"]
    active = next((r.version.version for r in rows if r.active), None)
    b = b or active or (ready[-1] if ready else None)
    if b is None:
        raise TableError(f"{table} has no ready version to report on")
    a = a if a is not None else previous_version(ready, b)
    by_number = {r.version.version: r.version for r in rows}
    versions = [v for v in (a, b) if v is not None]
    with reading(engine) as conn:
        for v in versions:
            if (v not in by_number or by_number[v].status not in ("ready", "failed")
                    or not conn.dialect.has_table(conn, version_table(table, v))):
                raise TableError(f"{table} has no version {v} with a table to report on")
    dialect = dialect_for(engine)
    outputs = [(c, t) for c, t in by_number[b].outputs if t in NUMERIC_TYPES]
    sections, plots = [], 0
    with reading(engine) as conn:
        for column, _ in outputs:
            edges, counts = histogram(conn, dialect, [version_table(table, v) for v in versions], column, BINS)
            if not edges:
                continue
            figure, axis = plt.subplots(figsize=(7, 3))
            for v, row in zip(versions, counts):
                axis.stairs(row, edges, label=f"v{v}", fill=(v == b), alpha=0.45 if v == b else 1.0)
            axis.set_title(f"{column}: distribution")
            axis.set_ylabel("keys")
            axis.legend()
            stats = ""
            if a is not None:
                psi = population_stability(conn, dialect, version_table(table, a), version_table(table, b), column)
                stats = f"<p>PSI v{a} to v{b}: <b>{psi:.4f}</b></p>"
            sections.append(f"<h3>{html.escape(column)}</h3>{stats}<figure class='plot'>{_svg(figure)}</figure>")
            plots += 1
    drift = ""
    if a is not None:
        found = diff_versions(engine, table, a, b, top=5)
        lines = "".join(f"<tr><td>{html.escape(n.column)}</td><td>{n.changed_share:.1%}</td>"
                        f"<td>{(n.mean_change or 0):+.5g}</td><td>{(n.max_abs_change or 0):.5g}</td></tr>"
                        for n in found.numeric)
        drift = (f"<p>keys only in v{a}: {found.only_in_a}, only in v{b}: {found.only_in_b}, in both: "
                 f"{found.in_both}</p><table><tr><th>output</th><th>keys changed</th><th>mean change</th>"
                 f"<th>max |change|</th></tr>{lines}</table>")
    recent = [r.version for r in rows][-RECENT:]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3))
    numbers = [f"v{v.version}" for v in recent]
    left.bar(numbers, [v.row_count or 0 for v in recent],
             color=["tab:red" if v.status == "failed" else "tab:blue" for v in recent])
    left.set_title("rows per version (red: failed)")
    right.plot(numbers, [((v.finished_at or v.started_at) - v.started_at).total_seconds() for v in recent],
               marker="o")
    right.set_title("run duration (s)")
    history_plot = f"<figure class='plot'>{_svg(figure)}</figure>"
    plots += 1
    flips = "".join(f"<tr><td>{f.flipped_at:%Y-%m-%d %H:%M:%S}</td><td>{f.from_version or '-'}</td>"
                    f"<td>{f.to_version}</td><td>{html.escape(f.reason)}</td><td>{html.escape(f.actor or '')}</td></tr>"
                    for f in reversed(history))
    with reading(engine) as conn:
        gated = [r for r in state.list_runs(conn, table=table, limit=RECENT) if r.gates]
    gates = "".join(f"<tr><td>{r.id}</td><td>{r.logical_date}</td><td>{r.status}</td><td>{html.escape(name)}</td>"
                    f"<td>{'pass' if passed else 'FAIL'}</td><td>{html.escape(detail)}</td></tr>"
                    for r in gated for name, passed, detail in r.gates)
    title = f"{table}: v{b} against v{a}" if a is not None else f"{table}: v{b}"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}figure{{margin:0}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Active version: {active or 'none'}. Generated {state.utcnow():%Y-%m-%d %H:%M UTC} by pipeline report.</p>
<h2>Output distributions</h2>{''.join(sections) or '<p>No numeric outputs.</p>'}
<h2>Drift</h2>{drift or '<p>No earlier version to compare with.</p>'}
<h2>Recent versions</h2>{history_plot}
<h2>Upstream gates of recent runs</h2>{f"<table><tr><th>run</th><th>date</th><th>status</th><th>gate</th>"
    f"<th>result</th><th>detail</th></tr>{gates}</table>" if gates else "<p>No gates were checked.</p>"}
<h2>Flip history</h2><table><tr><th>when</th><th>from</th><th>to</th><th>why</th><th>who</th></tr>{flips}</table>
</body></html>
"""
    return Report(table, a, b, page, plots)
