"""Design study: change-driven top-ups on range-versioned rows ("design R"), measured on PostgreSQL.

Run from the repository root (about 13 minutes at 10M rows on 2 cores):

    /work/main/.venv/bin/python bench/topup_design/study.py [--out FILE] [--keep]

Everything lives in schema ``topup_design`` of database ``test`` at 127.0.0.1:5432 (dropped and made again at
the start, dropped at the end unless --keep). It prints markdown: the figures REPORT.md quotes, the plans, and
the checks (an assertion stops the study when a check fails). TOPUP_ROWS and TOPUP_PGBENCH_SECONDS shrink it
for a quick try; the report's figures are from the defaults (10,000,000 rows, 10 s per pgbench run).

What is built (names as the pipeline would have them for a table ``t``):

- ``plain``: a plain 10M-row table with PRIMARY KEY (id): the direct-lookup baseline.
- the current design: ``c__v1`` and ``c__v2`` version tables (model_version column + CHECK), both attached to
  ``c__p`` (LIST on model_version), gate ``c__gate``, view ``c``. ``c__v2`` is built the way a change-driven
  top-up builds it today (copy of the active version less the changed keys, then the PRIMARY KEY), three times,
  interleaved with the design-R top-ups it is compared with.
- design R twice, the same but for the key of the lineage partition:
  ``r``: PRIMARY KEY (id, valid_from) (the brief's first index choice), ``s``: PRIMARY KEY (id, valid_to).
  Each has a lineage partition ``<p>__l1`` (lineage 1: versions 1, 2, ...) and a small ``<p>__l0`` (an older
  lineage, the rollback target a full run leaves attached) under ``<p>__p`` (LIST on lineage), a gate
  ``<p>__gate(alias, lineage, version)`` and the view ``<p>``; rows carry ``valid_from``/``valid_to``
  (valid_to = 2147483647 while current), and a changes log ``<p>__changes(lineage, version, id)``: the keys each
  top-up listed (what a rebase, retention and a diff look up).
- variants of the gated view over ``s__p``, for lookups only: ``s_range`` and ``s_bucket`` test the version with
  one gate reference (``int4range(valid_from, valid_to) @> v``, ``width_bucket(v, valid_from, valid_to, 1) = 1``:
  2 InitPlans instead of 3, no index condition on the version), ``s_join`` joins the gate instead.

The order: build; top-up rounds 1-3 (copy against R, interleaved; pgbench after round 1); top-ups up to version
21; pgbench with 2 lineages attached, then with 1; join lookups; whole-version scans; flips; long readers, locks
and pg_dump across top-up 22; rebase top-up 23 on version 21; retention and VACUUM; top-up 24 and VACUUM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg

S = "topup_design"
DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"
ROWS = int(os.environ.get("TOPUP_ROWS", "10000000"))
SECONDS = int(os.environ.get("TOPUP_PGBENCH_SECONDS", "10"))
UPD, INS, DEL = ROWS * 8 // 10_000, ROWS // 10_000, ROWS // 10_000   # 0.1% changed: 8,000 / 1,000 / 1,000
OLD_LINEAGE_ROWS = max(1000, ROWS // 100)
TOPUPS = 20
MAX = 2_147_483_647
COLS = "id, proba_false, proba_true, ab_bucket, input_hash"
TABLE_COLS = ("id bigint NOT NULL, proba_false double precision, proba_true double precision, ab_bucket bigint, "
              "input_hash bigint")
#: A checksum of a set of rows: equal sets give equal values whatever the order they are read in.
AGG = ("count(*), sum(id), sum((proba_true * 1e9)::bigint), "
       "sum((hashint8(id) % 1000003) * (proba_false * 1e6)::bigint)")
CONFLICTS = {  # PostgreSQL's table-level lock conflict matrix
    "AccessShareLock": {"AccessExclusiveLock"},
    "RowShareLock": {"ExclusiveLock", "AccessExclusiveLock"},
    "RowExclusiveLock": {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"},
    "ShareUpdateExclusiveLock": {"ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock",
                                 "AccessExclusiveLock"},
    "ShareLock": {"RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareRowExclusiveLock", "ExclusiveLock",
                  "AccessExclusiveLock"},
    "ShareRowExclusiveLock": {"RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock",
                              "ExclusiveLock", "AccessExclusiveLock"},
    "ExclusiveLock": {"RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
                      "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"},
    "AccessExclusiveLock": {"AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
                            "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"},
}

OUT: list[str] = []


def say(*lines: str) -> None:
    for line in lines:
        OUT.append(line)
        print(line, flush=True)


def connect() -> psycopg.Connection:
    return psycopg.connect(DSN, autocommit=True, options=f"-c search_path={S}")


def one(conn: psycopg.Connection, sql: str, params: tuple | None = None):
    return conn.execute(sql, params).fetchone()


def clock() -> float:
    return time.perf_counter()


def timed(conn: psycopg.Connection, t: dict[str, float], name: str, *statements: str) -> None:
    """Run ``statements`` in turn; their time goes to ``t[name]``."""
    t0 = clock()
    for sql in statements:
        conn.execute(sql)
    t[name] = clock() - t0


def wal_lsn(conn: psycopg.Connection) -> str:
    return one(conn, "SELECT pg_current_wal_insert_lsn()::text")[0]


def wal_since(conn: psycopg.Connection, start: str) -> int:
    return int(one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)", (start,))[0])


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def med(values: list[float]) -> float:
    return statistics.median(values)


def sizes(conn: psycopg.Connection, table: str) -> tuple[int, int]:
    return one(conn, "SELECT pg_relation_size(%s::regclass), pg_indexes_size(%s::regclass)", (table, table))


def plan(conn: psycopg.Connection, sql: str) -> str:
    return "\n".join(r[0] for r in conn.execute(f"EXPLAIN (ANALYZE, COSTS OFF) {sql}"))


def agg(conn: psycopg.Connection, source: str, where: str = "") -> tuple:
    row = one(conn, f"SELECT {AGG} FROM {source} {where}")
    return tuple(int(x or 0) for x in row)


def agg_version(conn: psycopg.Connection, p: str, v: int) -> tuple:
    """A version of lineage 1, read from the partition with the version as a constant (not through the gate)."""
    return agg(conn, f"{p}__l1", f"WHERE valid_from <= {v} AND valid_to > {v}")


def agg_expected(conn: psycopg.Connection, p: str, base_agg: tuple, base: int, n: int) -> tuple:
    """What version n made from version ``base`` and the changes of top-up n must hold: the base, less its rows
    whose key the top-up lists (changed or removed), plus the scored rows."""
    less = agg(conn, f"{p}__l1", f"WHERE valid_from <= {base} AND valid_to > {base} "
                                 f"AND id IN (SELECT id FROM gone_{n})")
    plus = agg(conn, f"stage_{n}")
    return tuple(b - l + a for b, l, a in zip(base_agg, less, plus))


# --------------------------------------------------------------------------------------------------------------
# building


def build_plain(conn: psycopg.Connection) -> None:
    conn.execute("SELECT setseed(0.42)")
    conn.execute(f"CREATE TABLE plain ({TABLE_COLS})")
    conn.execute(f"INSERT INTO plain SELECT g, 1 - r, r, g % 100, hashint8(g) "
                 f"FROM (SELECT g, random() AS r FROM generate_series(1, {ROWS}) g) s")
    conn.execute("ALTER TABLE plain ADD CONSTRAINT plain__key PRIMARY KEY (id)")
    conn.execute("ANALYZE plain")


def build_current(conn: psycopg.Connection) -> dict[str, float]:
    """Version 1 of the current design: a version table as a full run leaves it, attached under the gate."""
    t: dict[str, float] = {}
    timed(conn, t, "load", f"CREATE TABLE c__v1 ({TABLE_COLS})", f"INSERT INTO c__v1 SELECT {COLS} FROM plain")
    timed(conn, t, "key", "ALTER TABLE c__v1 ADD CONSTRAINT c__v1__key PRIMARY KEY (id)")
    timed(conn, t, "analyze", "ANALYZE c__v1")
    timed(conn, t, "mark", "ALTER TABLE c__v1 ADD COLUMN model_version integer NOT NULL DEFAULT 1, "
                           "ADD CONSTRAINT c__v1__ver CHECK (model_version = 1)")
    conn.execute(f"CREATE TABLE c__p ({TABLE_COLS}, model_version integer NOT NULL) PARTITION BY LIST (model_version)")
    conn.execute("ALTER TABLE c__p ATTACH PARTITION c__v1 FOR VALUES IN (1)")
    conn.execute("CREATE TABLE c__gate (alias text NOT NULL, version integer NOT NULL)")
    conn.execute("INSERT INTO c__gate VALUES ('champion', 1)")
    conn.execute(f"CREATE VIEW c AS SELECT {COLS}, model_version FROM c__p "
                 "WHERE model_version = (SELECT g.version FROM c__gate g WHERE g.alias = 'champion')")
    return t


def gate_sql(p: str, column: str) -> str:
    return f"(SELECT g.{column} FROM {p}__gate g WHERE g.alias = 'champion')"


def build_lineage(conn: psycopg.Connection, p: str, key: str) -> dict[str, float]:
    """Lineage 1 as a full run would leave it: its rows loaded as today, then three columns that are stored in
    no row (defaults), the key, ANALYZE; plus a small older lineage 0 attached, and the (empty) changes log."""
    t: dict[str, float] = {}
    timed(conn, t, "load", f"CREATE TABLE {p}__l1 ({TABLE_COLS})", f"INSERT INTO {p}__l1 SELECT {COLS} FROM plain")
    timed(conn, t, "mark", f"ALTER TABLE {p}__l1 ADD COLUMN lineage integer NOT NULL DEFAULT 1, "
                           f"ADD COLUMN valid_from integer NOT NULL DEFAULT 1, "
                           f"ADD COLUMN valid_to integer NOT NULL DEFAULT {MAX}, "
                           f"ADD CONSTRAINT {p}__l1__lin CHECK (lineage = 1), "
                           f"ADD CONSTRAINT {p}__l1__span CHECK (valid_to > valid_from)")
    timed(conn, t, "key", f"ALTER TABLE {p}__l1 ADD CONSTRAINT {p}__l1__key PRIMARY KEY (id, {key})")
    timed(conn, t, "analyze", f"ANALYZE {p}__l1")
    conn.execute(f"CREATE TABLE {p}__l0 ({TABLE_COLS}, lineage integer NOT NULL DEFAULT 0 "
                 f"CONSTRAINT {p}__l0__lin CHECK (lineage = 0), valid_from integer NOT NULL DEFAULT 0, "
                 f"valid_to integer NOT NULL DEFAULT {MAX})")
    conn.execute(f"INSERT INTO {p}__l0 ({COLS}) SELECT {COLS} FROM plain WHERE id <= {OLD_LINEAGE_ROWS}")
    conn.execute(f"ALTER TABLE {p}__l0 ADD CONSTRAINT {p}__l0__key PRIMARY KEY (id, {key})")
    conn.execute(f"ANALYZE {p}__l0")
    conn.execute(f"CREATE TABLE {p}__p ({TABLE_COLS}, lineage integer NOT NULL, valid_from integer NOT NULL, "
                 f"valid_to integer NOT NULL) PARTITION BY LIST (lineage)")
    conn.execute(f"ALTER TABLE {p}__p ATTACH PARTITION {p}__l0 FOR VALUES IN (0)")
    conn.execute(f"ALTER TABLE {p}__p ATTACH PARTITION {p}__l1 FOR VALUES IN (1)")
    conn.execute(f"CREATE TABLE {p}__changes (lineage integer NOT NULL, version integer NOT NULL, id bigint NOT NULL, "
                 "PRIMARY KEY (lineage, version, id))")
    conn.execute(f"CREATE TABLE {p}__gate (alias text NOT NULL, lineage integer NOT NULL, version integer NOT NULL)")
    conn.execute(f"INSERT INTO {p}__gate VALUES ('champion', 1, 1)")
    conn.execute(f"CREATE VIEW {p} AS SELECT {COLS}, {gate_sql(p, 'version')} AS model_version FROM {p}__p "
                 f"WHERE lineage = {gate_sql(p, 'lineage')} AND valid_from <= {gate_sql(p, 'version')} "
                 f"AND valid_to > {gate_sql(p, 'version')}")
    return t


def version_view(conn: psycopg.Connection, p: str, n: int) -> str:
    """``t__vN`` as a view over the lineage, for tools that read a version by name (constants: no gate)."""
    conn.execute(f"CREATE OR REPLACE VIEW {p}__v{n} AS SELECT {COLS}, {n} AS model_version FROM {p}__l1 "
                 f"WHERE valid_from <= {n} AND valid_to > {n}")
    return f"{p}__v{n}"


class Changes:
    """The changes of each top-up: UPD updated and DEL removed keys drawn from the keys alive at the head, INS new
    keys, scored afresh. ``stage_<n>`` holds the scored rows (what the run COPYs), ``gone_<n>`` (keyed) every key
    the top-up lists, changed or removed, as the pipeline's ``<physical>__gone`` table."""

    def __init__(self, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.alive = np.zeros(ROWS + 1 + 64 * INS, dtype=bool)
        self.alive[1:ROWS + 1] = True
        self.next = ROWS + 1
        self.updated: dict[int, np.ndarray] = {}

    def make(self, conn: psycopg.Connection, n: int) -> None:
        picked = self.rng.choice(np.flatnonzero(self.alive), UPD + DEL, replace=False)
        updated, removed = picked[:UPD], picked[UPD:]
        new = np.arange(self.next, self.next + INS)
        self.next += INS
        self.alive[removed] = False
        self.alive[new] = True
        self.updated[n] = updated
        ids = np.concatenate([updated, new])
        r = self.rng.random(len(ids))
        conn.execute(f"CREATE TABLE stage_{n} ({TABLE_COLS})")
        conn.execute(f"CREATE TABLE gone_{n} (id bigint PRIMARY KEY)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY stage_{n} ({COLS}) FROM STDIN") as copy:
                for i, x in zip(ids.tolist(), r.tolist()):
                    copy.write_row((i, 1 - x, x, i % 100, i * 7919))
            with cur.copy(f"COPY gone_{n} (id) FROM STDIN") as copy:
                for i in np.concatenate([updated, new, removed]).tolist():
                    copy.write_row((i,))
        conn.execute(f"ANALYZE stage_{n}")
        conn.execute(f"ANALYZE gone_{n}")


# --------------------------------------------------------------------------------------------------------------
# the two ways to make a top-up


def copy_topup(conn: psycopg.Connection, n: int) -> dict[str, float]:
    """Today's change-driven top-up of c__v1 into c__v2: one transaction making the new table, the scored rows,
    the copy of the unchanged rows (anti-join on the gone keys), the PRIMARY KEY; then ANALYZE."""
    conn.execute("DROP TABLE IF EXISTS c__v2")
    conn.execute("CHECKPOINT")
    start, t = wal_lsn(conn), {}
    t0 = clock()
    with conn.transaction():
        conn.execute(f"CREATE TABLE c__v2 ({TABLE_COLS})")
        conn.execute(f"INSERT INTO c__v2 ({COLS}) SELECT {COLS} FROM stage_{n}")
        t1 = clock()
        conn.execute(f"INSERT INTO c__v2 ({COLS}) SELECT {', '.join('a.' + c for c in COLS.split(', '))} FROM c__v1 a "
                     f"WHERE NOT EXISTS (SELECT 1 FROM gone_{n} g WHERE g.id = a.id)")
        t2 = clock()
        t["copy"] = t2 - t1
        conn.execute("ALTER TABLE c__v2 ADD CONSTRAINT c__v2__key PRIMARY KEY (id)")
        t["key"] = clock() - t2
    t["total"] = clock() - t0
    t["wal"] = wal_since(conn, start)
    timed(conn, t, "analyze", "ANALYZE c__v2")
    return t


def r_topup(conn: psycopg.Connection, p: str, n: int, checkpoint: bool = False, lock_timeout: str | None = None,
            before_commit=None) -> dict[str, float]:
    """Design R's top-up n on the head of lineage 1: close the head rows of every listed key, add the scored rows,
    log the listed keys in the lineage's changes log (what a rebase, retention and diff read)."""
    if checkpoint:
        conn.execute("CHECKPOINT")
    start, t = wal_lsn(conn), {}
    t0 = clock()
    with conn.transaction():
        if lock_timeout:
            conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        t["closed"] = conn.execute(f"UPDATE {p}__l1 SET valid_to = {n} WHERE valid_to = {MAX} "
                                   f"AND id IN (SELECT id FROM gone_{n})").rowcount
        t1 = clock()
        t["update"] = t1 - t0
        t["added"] = conn.execute(f"INSERT INTO {p}__l1 ({COLS}, lineage, valid_from, valid_to) "
                                  f"SELECT {COLS}, 1, {n}, {MAX} FROM stage_{n}").rowcount
        t["insert"] = clock() - t1
        conn.execute(f"INSERT INTO {p}__changes SELECT 1, {n}, id FROM gone_{n}")
        if before_commit is not None:
            before_commit()
    t["total"] = clock() - t0
    t["wal"] = wal_since(conn, start)
    return t


def r_rebase_topup(conn: psycopg.Connection, p: str, n: int, base: int, lock_timeout: str | None = None,
                   before_commit=None) -> dict[str, float]:
    """Top-up n of a version ``base`` that is not the head (after a rollback): version n is base + the changes.
    The keys whose rows differ between base and the head ("drift", from the changes log) get their
    head row closed and their base row copied forward, besides the changed keys. History stays linear."""
    start, t = wal_lsn(conn), {}
    t0 = clock()
    with conn.transaction():
        if lock_timeout:
            conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        t["drift"] = conn.execute(
            f"CREATE TEMP TABLE drift ON COMMIT DROP AS SELECT DISTINCT id FROM {p}__changes "
            f"WHERE lineage = 1 AND version > {base}").rowcount
        conn.execute(f"CREATE TEMP TABLE closing ON COMMIT DROP AS SELECT id FROM drift UNION SELECT id FROM gone_{n}")
        conn.execute("ANALYZE drift")
        conn.execute("ANALYZE closing")
        t["closed"] = conn.execute(f"UPDATE {p}__l1 SET valid_to = {n} WHERE valid_to = {MAX} "
                                   f"AND id IN (SELECT id FROM closing)").rowcount
        t["restored"] = conn.execute(
            f"INSERT INTO {p}__l1 ({COLS}, lineage, valid_from, valid_to) "
            f"SELECT {COLS}, 1, {n}, {MAX} FROM {p}__l1 l WHERE l.valid_from <= {base} AND l.valid_to > {base} "
            f"AND l.id IN (SELECT id FROM drift) AND NOT EXISTS (SELECT 1 FROM gone_{n} g WHERE g.id = l.id)"
        ).rowcount
        t["added"] = conn.execute(f"INSERT INTO {p}__l1 ({COLS}, lineage, valid_from, valid_to) "
                                  f"SELECT {COLS}, 1, {n}, {MAX} FROM stage_{n}").rowcount
        conn.execute(f"INSERT INTO {p}__changes SELECT 1, {n}, id FROM closing")
        if before_commit is not None:
            before_commit()
    t["total"] = clock() - t0
    t["wal"] = wal_since(conn, start)
    return t


def retire(conn: psycopg.Connection, p: str, kept: list[int], lock_timeout: str | None = None) -> tuple[int, float]:
    """Delete the rows of lineage 1 that no kept version sees (a row is seen by valid_from..valid_to-1)."""
    t0 = clock()
    with conn.transaction():
        if lock_timeout:
            conn.execute(f"SET LOCAL lock_timeout = '{lock_timeout}'")
        # every closed row was closed by a top-up that logged its key: (id, valid_to) = (id, version) of the log
        deleted = conn.execute(
            f"DELETE FROM {p}__l1 l USING {p}__changes c WHERE c.lineage = 1 AND l.id = c.id "
            f"AND l.valid_to = c.version AND NOT EXISTS (SELECT 1 FROM unnest(%s::int[]) k(v) "
            f"WHERE k.v >= l.valid_from AND k.v < l.valid_to)", (kept,)).rowcount
        # the log below the oldest kept version is needed no more (a rebase starts from a kept version)
        conn.execute(f"DELETE FROM {p}__changes WHERE lineage = 1 AND version <= %s", (min(kept),))
    return deleted, clock() - t0


def flip(conn: psycopg.Connection, p: str, version: int) -> float:
    t0 = clock()
    conn.execute(f"UPDATE {p}__gate SET version = %s WHERE alias = 'champion'", (version,))
    return clock() - t0


# --------------------------------------------------------------------------------------------------------------
# measuring


def pgbench_tps(source: str, protocol: str) -> float:
    fd, name = tempfile.mkstemp(suffix=".sql")
    with os.fdopen(fd, "w") as f:
        f.write(f"\\set k random(1, {ROWS})\nSELECT proba_true FROM {S}.{source} WHERE id = :k;\n")
    try:
        done = subprocess.run([PGBENCH, "-n", "-c", "8", "-j", "2", "-T", str(SECONDS), "-M", protocol, "-f", name,
                               "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "test"],
                              capture_output=True, text=True, check=True)
    finally:
        os.unlink(name)
    return float(next(line for line in done.stdout.splitlines() if line.startswith("tps")).split()[2])


def pgbench_phase(title: str, targets: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """Medians of three runs of each target, interleaved (target order inside each round), per protocol;
    the first target is the direct baseline."""
    tps: dict[tuple[str, str], list[float]] = {}
    for _ in range(3):
        for protocol in ("simple", "prepared"):
            for name, source in targets:
                tps.setdefault((protocol, name), []).append(pgbench_tps(source, protocol))
    m = {k: med(v) for k, v in tps.items()}
    base = targets[0][0]
    say(f"#### pgbench: {title}", "",
        "| lookup through | simple TPS (3 runs) | median | / direct | prepared TPS (3 runs) | median | / direct |",
        "|---|---|---|---|---|---|---|")
    for name, _ in targets:
        cells = []
        for protocol in ("simple", "prepared"):
            runs = ", ".join(f"{x:,.0f}" for x in tps[protocol, name])
            cells.append(f"{runs} | {m[protocol, name]:,.0f} | {m[protocol, name] / m[protocol, base]:.2f}x")
        say(f"| {name} | {' | '.join(cells)} |")
    say("")
    return m


def lock_rows(mon: psycopg.Connection, pids: dict[int, str]) -> list[tuple[str, str, str, bool]]:
    rows = mon.execute("SELECT l.pid, c.relname, l.mode, l.granted FROM pg_locks l JOIN pg_class c "
                       "ON c.oid = l.relation WHERE l.pid = ANY(%s) AND c.relnamespace = %s::regnamespace "
                       "ORDER BY 2, 1, 3", (list(pids), S)).fetchall()
    return [(pids[pid], rel, mode, granted) for pid, rel, mode, granted in rows]


def check_locks(mon: psycopg.Connection, pids: dict[int, str], writer: str, label: str) -> None:
    """Every lock of ``writer`` against every lock of the others on the same relation: none may conflict, and no
    session of ours may be waiting for any lock at all."""
    rows = lock_rows(mon, pids)
    waiting = one(mon, "SELECT count(*) FROM pg_locks WHERE pid = ANY(%s) AND NOT granted", (list(pids),))[0]
    held: dict[str, dict[str, set[str]]] = {}
    for who, rel, mode, _ in rows:
        held.setdefault(rel, {}).setdefault(who, set()).add(mode)
    conflicts = []
    for rel, by in held.items():
        for mine in by.get(writer, ()):
            for who, modes in by.items():
                if who != writer:
                    conflicts += [(rel, mine, who, m) for m in modes if m in CONFLICTS[mine]]
    say(f"{label}: the writer's locks, with the other sessions' locks on the same relations "
        f"(waiting locks of these sessions: {waiting}; conflicts: {len(conflicts)})", "",
        "| relation | " + " | ".join(dict.fromkeys(pids.values())) + " |",
        "|---|" + "---|" * len(set(pids.values())))
    for rel, by in held.items():
        if writer in by:
            say(f"| {rel} | " + " | ".join(", ".join(sorted(m.replace('Lock', '') for m in by.get(who, ())))
                                          or "-" for who in dict.fromkeys(pids.values())) + " |")
    say("")
    assert waiting == 0, f"{label}: a session waits for a lock"
    assert not conflicts, f"{label}: conflicting locks {conflicts}"


class Notices:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.messages: list[str] = []
        conn.add_notice_handler(lambda d: self.messages.append(d.message_primary or ""))

    def vacuum(self) -> str:
        text = "\n".join(self.messages)
        self.messages.clear()
        tuples = re.search(r"tuples: (\d+) removed, (\d+) remain, (\d+) are dead but not yet removable", text)
        scans = re.search(r"index scans: (\d+)", text)
        pages = re.search(r"pages: (\d+) removed, (\d+) remain, (\d+) scanned", text)
        parts = []
        if tuples:
            parts.append(f"{int(tuples[1]):,} dead tuples removed, {int(tuples[3]):,} dead but not yet removable")
        if pages:
            parts.append(f"{int(pages[3]):,} of {int(pages[2]):,} heap pages scanned")
        if scans:
            parts.append(f"index scans: {scans[1]}")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="also write the markdown output here")
    parser.add_argument("--keep", action="store_true", help="leave the schema behind")
    args = parser.parse_args()
    began = time.monotonic()
    conn = connect()
    say(f"# topup_design study: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
        f"- {one(conn, 'SELECT version()')[0].split(' on ')[0]}, {os.cpu_count()} cores; "
        f"shared_buffers {one(conn, 'SHOW shared_buffers')[0]}, autovacuum {one(conn, 'SHOW autovacuum')[0]}, "
        f"max_wal_size {one(conn, 'SHOW max_wal_size')[0]}; load average at start "
        f"{os.getloadavg()[0]:.1f}",
        f"- {ROWS:,} rows per version; each top-up: {UPD:,} updated, {INS:,} inserted, {DEL:,} removed keys; "
        f"pgbench 8 clients, -j 2, {SECONDS} s per run, medians of 3 interleaved with the direct baseline", "")
    conn.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
    conn.execute(f"CREATE SCHEMA {S}")
    try:
        study(conn, began)
    finally:
        if not args.keep:
            conn.execute(f"DROP SCHEMA IF EXISTS {S} CASCADE")
        conn.close()
        say(f"(study took {time.monotonic() - began:.0f} s; ended {dt.datetime.now(dt.timezone.utc):%H:%M} UTC; "
            f"load average at end {os.getloadavg()[0]:.1f})")
        if args.out:
            args.out.write_text("\n".join(OUT) + "\n")


def study(conn: psycopg.Connection, began: float) -> None:
    changes = Changes()
    build_plain(conn)
    built = {"current (c__v1)": build_current(conn)}
    built["R: key (id, valid_from)"] = build_lineage(conn, "r", "valid_from")
    built["R: key (id, valid_to)"] = build_lineage(conn, "s", "valid_to")
    say("### What a full run's version costs to make ready, by design", "",
        "The same 10M rows loaded by INSERT ... SELECT (standing for the run's COPY); then what each design adds "
        "(seconds, one run each).", "",
        "| design | load | mark (columns + CHECK) | key | ANALYZE | key + mark |",
        "|---|---|---|---|---|---|")
    for name, t in built.items():
        say(f"| {name} | {t['load']:.1f} | {t['mark']:.2f} | {t['key']:.1f} | {t['analyze']:.2f} | "
            f"{t['key'] + t['mark']:.1f} |")
    say("")
    size_rows = []
    for name, table in (("plain / c__v1", "c__v1"), ("R (id, valid_from)", "r__l1"), ("R (id, valid_to)", "s__l1")):
        heap, idx = sizes(conn, table)
        size_rows.append(f"| {name} | {mb(heap)} | {mb(idx)} |")
    say("| table (as built) | heap | indexes |", "|---|---|---|", *size_rows, "")

    # ---- 1. top-up time, interleaved: copy (today) against R, three rounds; versions 2, 3, 4 of R
    for n in range(2, TOPUPS + 5):   # versions 2..24
        changes.make(conn, n)
    say("### Top-up plans (EXPLAIN, COSTS OFF)", "")
    for p in ("r", "s"):
        say(f"`{p}` UPDATE:", "```",
            *[r[0] for r in conn.execute(f"EXPLAIN (COSTS OFF) UPDATE {p}__l1 SET valid_to = 2 "
                                         f"WHERE valid_to = {MAX} AND id IN (SELECT id FROM gone_2)")], "```")
    say("")
    copies: list[dict[str, float]] = []
    rtops: dict[str, list[dict[str, float]]] = {"r": [], "s": []}
    key1 = int(changes.updated[2][0])
    for rnd in range(3):
        n = 2 + rnd
        copies.append(copy_topup(conn, 2))   # the same top-up each round: c__v2 = c__v1 + the changes of version 2
        for p in ("r", "s"):
            rtops[p].append(r_topup(conn, p, n, checkpoint=True))
            flip(conn, p, n)
        if rnd == 0:
            # ---- 2a. lookups after one top-up (versions 1 and 2 in the lineage)
            pgbench_phase("after 1 top-up (lineage holds versions 1-2)",
                          [("direct: plain (PK id)", "plain"), ("R view, key (id, valid_from)", "r")])
            say("Plans after 1 top-up (key changed in version 2):", "")
            for p in ("r", "s"):
                say(f"`{p}`:", "```", plan(conn, f"SELECT proba_true FROM {p} WHERE id = {key1}"), "```")
    t0 = clock()
    conn.execute("ANALYZE s__l1")
    analyze_lineage = clock() - t0
    say("### 1. Top-up time (SQL only), 3 rounds interleaved, CHECKPOINT before each", "",
        "| approach | round 1 | round 2 | round 3 | median | / copy | WAL (median) |", "|---|---|---|---|---|---|---|")
    copy_med = med([c["total"] for c in copies])
    say("| today: copy 10M rows + PRIMARY KEY (one transaction) | "
        + " | ".join(f"{c['total']:.2f} s" for c in copies)
        + f" | {copy_med:.2f} s | 1.00x | {mb(med([c['wal'] for c in copies]))} |")
    for p, label in (("r", "R, key (id, valid_from)"), ("s", "R, key (id, valid_to)")):
        tops = rtops[p]
        m = med([x["total"] for x in tops])
        say(f"| {label}: UPDATE valid_to + INSERT (one transaction) | "
            + " | ".join(f"{x['total'] * 1000:.0f} ms" for x in tops)
            + f" | {m * 1000:.0f} ms | {m / copy_med:.3f}x | {mb(med([x['wal'] for x in tops]))} |")
    say("", f"- copy breakdown (medians): INSERT ... SELECT {med([c['copy'] for c in copies]):.2f} s, "
        f"PRIMARY KEY {med([c['key'] for c in copies]):.2f} s; ANALYZE of the new table afterwards "
        f"{med([c['analyze'] for c in copies]):.2f} s (not in the total).",
        f"- R breakdown (medians, key (id, valid_to)): UPDATE {med([x['update'] for x in rtops['s']]) * 1000:.0f} ms "
        f"({rtops['s'][0]['closed']:,} rows closed), INSERT {med([x['insert'] for x in rtops['s']]) * 1000:.0f} ms "
        f"({rtops['s'][0]['added']:,} rows); ANALYZE of the whole lineage if one wanted it: {analyze_lineage:.2f} s "
        "(not needed: 0.1% of the rows changed; autovacuum's analyze follows).", "")

    # correctness: version 2 of both lineages is exactly the copy-built c__v2
    conn.execute("ALTER TABLE c__v2 ADD COLUMN model_version integer NOT NULL DEFAULT 2, "
                 "ADD CONSTRAINT c__v2__ver CHECK (model_version = 2)")
    conn.execute("ALTER TABLE c__p ATTACH PARTITION c__v2 FOR VALUES IN (2)")
    conn.execute("UPDATE c__gate SET version = 2")
    want = agg(conn, "c__v2")
    for p in ("r", "s"):
        got = agg_version(conn, p, 2)
        assert got == want, f"{p} version 2 {got} differs from the copy-built c__v2 {want}"
    say(f"Check: version 2 read from each lineage has the checksum of the copy-built c__v2 ({want[0]:,} rows): yes.", "")

    # ---- the other top-ups up to 20 (versions 5..21)
    later: dict[str, list[dict[str, float]]] = {"r": [], "s": []}
    for n in range(5, 2 + TOPUPS):
        for p in ("r", "s"):
            later[p].append(r_topup(conn, p, n))
            flip(conn, p, n)
    head = 1 + TOPUPS   # 21
    say(f"Top-ups 4-{TOPUPS} (versions 5-{head}, no CHECKPOINT before, so fewer full-page images in the WAL):", "",
        "| lineage key | median | max | WAL (median) |", "|---|---|---|---|")
    for p, label in (("r", "(id, valid_from)"), ("s", "(id, valid_to)")):
        totals = [x["total"] for x in later[p]]
        say(f"| {label} | {med(totals) * 1000:.0f} ms | {max(totals) * 1000:.0f} ms | "
            f"{mb(med([x['wal'] for x in later[p]]))} |")
    say("")
    counts = {p: one(conn, f"SELECT count(*) FROM {p}__l1 WHERE valid_from <= {head} AND valid_to > {head}")[0]
              for p in ("r", "s")}
    assert counts["r"] == counts["s"] == int(changes.alive.sum()), (counts, int(changes.alive.sum()))
    size_rows = []
    for name, table in (("R (id, valid_from)", "r__l1"), ("R (id, valid_to)", "s__l1")):
        heap, idx = sizes(conn, table)
        rows_total = one(conn, f"SELECT count(*) FROM {table}")[0]
        size_rows.append(f"| {name} | {rows_total:,} | {mb(heap)} | {mb(idx)} |")
    say(f"After {TOPUPS} top-ups (version {head} holds {counts['s']:,} rows, as the key tracker says):", "",
        "| lineage | rows stored | heap | indexes |", "|---|---|---|---|", *size_rows, "")
    conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(1.2)
    st = one(conn, "SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup FROM pg_stat_user_tables WHERE relid = 's__l1'::regclass")
    say(f"s__l1 statistics: {st[0]:,} rows updated, of which HOT {st[1]:,}; dead tuples {st[2]:,}.", "")

    # ---- 2b. lookups after 20 top-ups, with the current design in the same run
    key = int(changes.updated[head][0])
    conn.execute(f"CREATE VIEW s_range AS SELECT {COLS}, {gate_sql('s', 'version')} AS model_version FROM s__p "
                 f"WHERE lineage = {gate_sql('s', 'lineage')} "
                 f"AND int4range(valid_from, valid_to) @> {gate_sql('s', 'version')}")
    # the same with a cheaper per-row test than building a range: width_bucket(v, from, to, 1) = 1 iff from <= v < to
    conn.execute(f"CREATE VIEW s_bucket AS SELECT {COLS}, {gate_sql('s', 'version')} AS model_version FROM s__p "
                 f"WHERE lineage = {gate_sql('s', 'lineage')} "
                 f"AND width_bucket({gate_sql('s', 'version')}, valid_from, valid_to, 1) = 1")
    conn.execute("CREATE VIEW s_join AS SELECT l.id, l.proba_false, l.proba_true, l.ab_bucket, l.input_hash, "
                 "g.version AS model_version FROM s__gate g JOIN s__p l ON l.lineage = g.lineage "
                 "AND l.valid_from <= g.version AND l.valid_to > g.version WHERE g.alias = 'champion'")
    pgbench_phase(f"after {TOPUPS} top-ups (lineage holds versions 1-{head}); current design with 2 partitions; "
                  "R with 2 lineages attached",
                  [("direct: plain (PK id)", "plain"), ("current design view c", "c"),
                   ("R view, key (id, valid_from)", "r"), ("R view, key (id, valid_to)", "s"),
                   ("R variant s_bucket: width_bucket, 2 InitPlans", "s_bucket")])
    vview = version_view(conn, "s", head)
    say(f"Plans after {TOPUPS} top-ups, key {key} (changed in version {head}, so it has 2 rows in the lineage):", "")
    for name, src in (("direct", "plain"), ("current design c", "c"), ("R (id, valid_from)", "r"),
                      ("R (id, valid_to)", "s"), ("variant s_range: int4range, 2 InitPlans", "s_range"),
                      ("variant s_bucket: width_bucket, 2 InitPlans", "s_bucket"),
                      ("variant: gate as a join", "s_join"), (f"{vview} (a version by name)", vview)):
        say(f"{name}:", "```", plan(conn, f"SELECT proba_true FROM {src} WHERE id = {key}"), "```")
    say("")

    # ---- 2c. the steady state of R: the rollback target is in the same lineage, so only one lineage is attached
    conn.execute("ALTER TABLE s__p DETACH PARTITION s__l0 CONCURRENTLY")
    pgbench_phase("R with only its lineage attached (s__l0 detached)",
                  [("direct: plain (PK id)", "plain"), ("R view s, key (id, valid_to), 1 lineage", "s"),
                   ("R variant s_bucket, 1 lineage", "s_bucket")])
    for src in ("s", "s_bucket"):
        say(f"Plan of {src} with 1 lineage:", "```", plan(conn, f"SELECT proba_true FROM {src} WHERE id = {key}"),
            "```", "")
    conn.execute("ALTER TABLE s__p ATTACH PARTITION s__l0 FOR VALUES IN (0)")

    # ---- 3. join lookup: 1,000 ids from a temp table
    sources = [("direct: plain", "plain"), ("current design c", "c"), ("R (id, valid_from)", "r"),
               ("R (id, valid_to)", "s"), ("R variant s_range", "s_range"), ("R variant s_bucket", "s_bucket")]
    conn.execute("SELECT setseed(0.5)")
    conn.execute(f"CREATE TEMP TABLE ids AS SELECT (1 + floor(random() * {ROWS}))::bigint AS id "
                 f"FROM generate_series(1, 1000)")
    conn.execute("ANALYZE ids")
    join = "SELECT count(*), sum(v.proba_true) FROM ids k JOIN {} v ON v.id = k.id"
    spent: dict[str, list[float]] = {}
    for _ in range(15):
        for name, src in sources:
            t0 = clock()
            conn.execute(join.format(src)).fetchone()
            spent.setdefault(name, []).append(clock() - t0)
    base = med(spent["direct: plain"])
    say("### 3. Join lookup: 1,000 ids from an analyzed temp table, one client, median of 15 interleaved", "",
        "| through | median | / direct |", "|---|---|---|")
    for name, _ in sources:
        say(f"| {name} | {med(spent[name]) * 1000:.2f} ms | {med(spent[name]) / base:.2f}x |")
    say("")
    for name, src in sources:
        say(f"{name}:", "```", plan(conn, join.format(src)), "```")
    say("")

    # ---- audits and exports read a version whole: a full scan through each
    scan: dict[str, list[float]] = {}
    for _ in range(3):
        for name, src in (("c__v2 (version table)", "c__v2"), (f"{vview} (view over the lineage)", vview),
                          ("s (gated view)", "s"), ("s_range (gated view, int4range)", "s_range"),
                          ("s_bucket (gated view, width_bucket)", "s_bucket")):
            t0 = clock()
            conn.execute(f"SELECT count(*), avg(proba_true), min(proba_false) FROM {src}").fetchone()
            scan.setdefault(name, []).append(clock() - t0)
    base = med(scan["c__v2 (version table)"])
    say("### Reading a whole version (an audit's or an export's scan), median of 3 interleaved", "",
        "| reads | median | / version table |", "|---|---|---|")
    for name, v in scan.items():
        say(f"| {name} | {med(v):.2f} s | {med(v) / base:.2f}x |")
    say("")

    # ---- 4. rollback in a lineage, and long readers across a top-up
    mon = connect()
    a20, a21 = agg_version(conn, "s", head - 1), agg_version(conn, "s", head)
    a19 = agg_version(conn, "s", head - 2)
    flips: dict[str, list[float]] = {"R: s gate 21 -> 20 -> 21": [], "current: c gate 2 -> 1 -> 2": []}
    for _ in range(10):
        flips["R: s gate 21 -> 20 -> 21"] += [flip(conn, "s", head - 1), flip(conn, "s", head)]
        flips["current: c gate 2 -> 1 -> 2"] += [flip(conn, "c", 1), flip(conn, "c", 2)]
    say("### 4. Rollback and long readers", "",
        "A flip is one autocommitted UPDATE of the gate row (median of 20 flips; the pipeline adds its bookkeeping "
        "in the same transaction):", "")
    for name, v in flips.items():
        say(f"- {name}: {med(v) * 1000:.2f} ms (max {max(v) * 1000:.2f} ms)")
    flip(conn, "s", head - 1)
    stage_value = one(conn, f"SELECT proba_true FROM stage_{head} WHERE id = {key}")[0]
    old_value = one(conn, f"SELECT proba_true FROM s__l1 WHERE id = {key} AND valid_from <= {head - 1} "
                          f"AND valid_to > {head - 1}")[0]
    seen = one(conn, f"SELECT proba_true, model_version FROM s WHERE id = {key}")
    assert seen == (old_value, head - 1) and old_value != stage_value, (seen, old_value, stage_value)
    say(f"- after the rollback, key {key} (changed in {head}) reads version {head - 1}'s value: yes", "")

    # readers: A (REPEATABLE READ) reads version 20 whole; B (REPEATABLE READ) version 21; I idle in transaction
    reader_a, reader_b, idle = connect(), connect(), connect()
    reader_a.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    assert agg(reader_a, "s") == a20
    flip(conn, "s", head)
    reader_b.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    assert agg(reader_b, "s") == a21
    idle.execute("BEGIN")
    idle.execute(f"SELECT proba_true FROM s WHERE id = {key}").fetchone()
    dump = subprocess.Popen([PG_DUMP, "-h", "127.0.0.1", "-U", "postgres", "-t", f"{S}.s__l1", "-t", f"{S}.s__gate",
                             "-f", os.devnull, "test"], stderr=subprocess.PIPE, text=True)
    for _ in range(200):   # until pg_dump holds its locks
        if one(mon, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE a.application_name = 'pg_dump' AND l.relation = 's__l1'::regclass")[0]:
            break
        time.sleep(0.02)
    dump_pid = one(mon, "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump'")
    pids = {conn.info.backend_pid: "top-up", reader_a.info.backend_pid: "reader A (RR, v20)",
            reader_b.info.backend_pid: "reader B (RR, v21)", idle.info.backend_pid: "idle in transaction"}
    if dump_pid:
        pids[dump_pid[0]] = "pg_dump"
    n = head + 1   # 22, on the head
    fresh_seen: list = []
    dump_running: list[bool] = []

    def during_topup() -> None:
        dump_running.append(dump.poll() is None)
        check_locks(mon, pids, "top-up", f"Top-up {n} before its COMMIT")
        with connect() as fresh:   # a new reader while the top-up is uncommitted: neither waits nor sees it
            fresh.execute("SET statement_timeout = '1s'")
            fresh_seen.append(one(fresh, f"SELECT proba_true, model_version FROM s WHERE id = {key}"))

    t_top = r_topup(conn, "s", n, lock_timeout="100ms", before_commit=during_topup)
    assert fresh_seen[0] == (stage_value, head), fresh_seen
    t_flip = clock()
    with conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '100ms'")
        conn.execute(f"UPDATE s__gate SET version = {n} WHERE alias = 'champion'")
        check_locks(mon, pids, "top-up", f"Flip to {n} before its COMMIT")
    t_flip = clock() - t_flip
    a22 = agg(conn, "s")
    assert a22 == agg_expected(conn, "s", a21, head, n), "version 22 is not version 21 + its changes"
    assert agg(reader_a, "s") == a20 and agg(reader_b, "s") == a21
    say(f"Top-up {n} with readers A, B, an idle-in-transaction session and a pg_dump holding their locks, under "
        f"lock_timeout 100 ms (pg_dump still running then: {'yes' if dump_running[0] else 'no'}): {t_top['total'] * 1000:.0f} ms (no wait), flip {t_flip * 1000:.1f} ms. A new reader "
        f"during the uncommitted top-up read version {head} at once. After the commit and the flip: reader A still "
        f"reads version {head - 1} whole and reader B version {head} whole (same checksums as before: "
        f"{a20[0]:,} / {a21[0]:,} rows); a fresh statement reads version {n} = version {head} + its changes "
        "(checksum): yes.", "")

    # ---- 6a. rollback before a later top-up, then a new top-up: a rebase inside the lineage
    flip(conn, "s", head)   # roll back to 21, whose successor 22 exists
    n = head + 2            # 23, on base 21 while the head is 22
    t_reb = r_rebase_topup(conn, "s", n, head, lock_timeout="100ms")
    flip(conn, "s", n)
    a23 = agg(conn, "s")
    assert a23 == agg_expected(conn, "s", a21, head, n), "version 23 is not version 21 + its changes"
    assert agg_version(conn, "s", head + 1) == a22, "version 22 changed"
    say(f"### 6. Branching: rollback to {head}, then top-up {n} on it (the head being {head + 1})", "",
        f"Rebase top-up {n} on base {head}: {t_reb['total'] * 1000:.0f} ms, {mb(t_reb['wal'])} WAL "
        f"(drift keys {t_reb['drift']:,}, rows closed {t_reb['closed']:,}, base rows copied forward "
        f"{t_reb['restored']:,}, scored rows {t_reb['added']:,}); version {n} = version {head} + its changes "
        f"(checksum): yes; version {head + 1} unchanged and still servable: yes.", "")

    # ---- 6b. retention while the readers still hold versions 20 and 21
    heap0, idx0 = sizes(conn, "s__l1")
    tail, t_tail = retire(conn, "s", [head - 2, head - 1, head, head + 1, n], lock_timeout="100ms")
    middle, t_middle = retire(conn, "s", [head - 2, head, head + 1, n], lock_timeout="100ms")
    assert agg(reader_a, "s") == a20 and agg(reader_b, "s") == a21
    say(f"Retention (keep 5): retiring versions 1-{head - 3} deletes the rows no kept version sees: {tail:,} rows in "
        f"{t_tail * 1000:.0f} ms. Retiring version {head - 1} alone (in the middle, keeping {head - 2}, {head}, "
        f"{head + 1}, {n}) deletes only rows born in {head - 1} and closed in {head}: {middle:,} rows in "
        f"{t_middle * 1000:.0f} ms. Both ran under lock_timeout 100 ms while the readers were open; reader A still "
        f"reads the retired version {head - 1} whole (MVCC): yes.", "")
    notes = Notices(conn)
    conn.execute("SELECT pg_stat_force_next_flush()")
    time.sleep(1.2)
    dead0 = one(conn, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 's__l1'::regclass")[0]
    t0 = clock()
    conn.execute("VACUUM (VERBOSE) s__l1")
    t_vac1, v1 = clock() - t0, notes.vacuum()
    for c in (reader_a, reader_b, idle):
        c.execute("COMMIT")
        c.close()
    dump.wait(timeout=120)
    assert dump.returncode == 0, dump.stderr.read()
    t0 = clock()
    conn.execute("VACUUM (VERBOSE) s__l1")
    t_vac2, v2 = clock() - t0, notes.vacuum()
    n2 = head + 3   # 24: one more top-up, then a vacuum that has only its pages to visit
    t24 = r_topup(conn, "s", n2)
    flip(conn, "s", n2)
    t0 = clock()
    conn.execute("VACUUM (VERBOSE) s__l1")
    t_vac3, v3 = clock() - t0, notes.vacuum()
    heap1, idx1 = sizes(conn, "s__l1")
    for v, want_agg in ((head - 2, a19), (head, a21), (n, a23)):
        assert agg_version(conn, "s", v) == want_agg, f"kept version {v} changed"
    say("pg_dump of s__l1 and the gate, running across the top-up, the flip and the retention: exit 0.", "",
        f"Vacuum (dead tuples before: {dead0:,}; heap {mb(heap0)} and indexes {mb(idx0)} before):", "",
        f"- first VACUUM of the lineage, readers A/B still open: {t_vac1:.1f} s ({v1})",
        f"- again after the readers ended: {t_vac2:.1f} s ({v2})",
        f"- after one more top-up ({n2}, {t24['total'] * 1000:.0f} ms): {t_vac3:.1f} s ({v3})",
        f"- heap {mb(heap1)}, indexes {mb(idx1)} after; kept versions {head - 2}, {head}, {n} unchanged "
        "(checksums): yes", "")
    mon.close()
    say(f"All checks passed. ({time.monotonic() - began:.0f} s so far)", "")


if __name__ == "__main__":
    sys.exit(main())
