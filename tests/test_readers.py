"""Readers never notice a flip: 8 readers through the view while another connection flips 10 times a second.

Each reader alternates point lookups (checked against the version they claim to come
from) and full counts (one version, every row); a slow reader keeps the view open a
second at a time. The test runs once without flips for
a baseline and once with them; the p99 of lookups during flips must stay within 5x.
PIPELINE_READER_SECONDS sets the flipping phase's length (20 s by default).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
from sqlalchemy import text

from conftest import SCRIPTED_JOB, customers_frame, report, write_table
from fakemodels import Scripted
from pipeline import activate, load_job, run_job
from pipeline.db import make_engine

ROWS = 2000
READERS = 8
SECONDS = float(os.environ.get("PIPELINE_READER_SECONDS", "20"))
BASELINE_SECONDS = max(2.0, SECONDS / 4)


def hammer(url: str, seconds: float, flip: bool, engine) -> dict[str, object]:
    """Run the readers (and the flipper) for ``seconds``; return latencies, errors and mixed reads."""
    expected = {v: {k: k * v for k in range(1, ROWS + 1)} for v in (1, 2)}  # Scripted(scale=v): x1 = customer_id
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []
    mixed: list[object] = []
    flips = [0]

    def read(seed: int) -> None:
        rng = np.random.default_rng(seed)
        reader = make_engine(url)
        try:
            with reader.connect() as conn:
                while not stop.is_set():
                    try:
                        key = int(rng.integers(1, ROWS + 1))
                        started = time.perf_counter()
                        rows = conn.execute(text("SELECT prediction, model_version FROM scores "
                                                 "WHERE customer_id = :k"), {"k": key}).all()
                        latencies.append(time.perf_counter() - started)
                        if len(rows) != 1 or rows[0][0] != expected[rows[0][1]][key]:
                            mixed.append(("lookup", key, rows))
                        counts = conn.execute(text("SELECT model_version, COUNT(*) FROM scores "
                                                   "GROUP BY model_version")).all()
                        if len(counts) != 1 or counts[0][1] != ROWS:
                            mixed.append(("count", counts))
                        conn.commit()
                    except Exception as exc:  # every error a reader meets is a failure of the flip
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                        conn.rollback()
        finally:
            reader.dispose()

    def flipper() -> None:
        version, tick = 1, time.monotonic()
        while not stop.is_set():
            version = 3 - version
            activate(engine, "scores", version)
            flips[0] += 1
            tick += 0.1  # ten flips a second, however long each takes
            time.sleep(max(0.0, tick - time.monotonic()))

    def slow_reader() -> None:
        """Holds the view (and the old version's table) open for a second at a time."""
        reader = make_engine(url)
        with reader.connect() as conn:
            while not stop.is_set():
                conn.execute(text("SELECT COUNT(*) FROM scores")).scalar()
                time.sleep(1.0)
                conn.commit()
        reader.dispose()

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(READERS)]
    if flip:
        threads += [threading.Thread(target=flipper, daemon=True), threading.Thread(target=slow_reader, daemon=True)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(30)
    return {"latencies": np.array(latencies), "errors": errors, "mixed": mixed, "flips": flips[0]}


def test_readers_never_notice_flips(db_url, engine, write_job, request):
    frame = customers_frame(ROWS)
    frame["x1"] = frame.customer_id.astype(float)
    write_table(engine, "customers", frame)
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted(scale=1.0))), engine)
    run_job(load_job(write_job(SCRIPTED_JOB, model=Scripted(scale=2.0))), engine)

    quiet = hammer(db_url, BASELINE_SECONDS, flip=False, engine=engine)
    busy = hammer(db_url, SECONDS, flip=True, engine=engine)

    p = {name: np.percentile(run["latencies"], [50, 99]) * 1000 for name, run in (("quiet", quiet), ("busy", busy))}
    dialect = request.node.callspec.params["db_url"]
    report(f"reader test on {dialect}: {busy['flips']} flips in {SECONDS:g}s, {len(busy['latencies'])} lookups; "
           f"lookup p50/p99 without flips {p['quiet'][0]:.2f}/{p['quiet'][1]:.2f} ms, "
           f"during flips {p['busy'][0]:.2f}/{p['busy'][1]:.2f} ms; "
           f"errors {len(busy['errors'])}, mixed reads {len(busy['mixed'])}")
    assert busy["errors"] == [] and quiet["errors"] == []
    assert busy["mixed"] == [] and quiet["mixed"] == []
    assert busy["flips"] >= SECONDS * 8
    assert p["busy"][1] <= 5 * p["quiet"][1]
