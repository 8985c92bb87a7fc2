"""Which driver reads a MySQL/MariaDB domain best (issue 17): wall time, peak RSS and import time of each.

Makes a 1M-row table (an int key, 4 float features, a text column) in the database of ``--url``, reads it in
chunks as the pipeline reads a domain, one child process per driver and way of reading, and drops the table.
Ways of reading: ``sqlalchemy`` is the generic reader (``stream_results``, SQLAlchemy rows); ``cursor`` fetches
tuples from the driver's own server-side cursor; ``binary`` is the pipeline's reader (MariaDB Connector/Python's
unbuffered cursor in the binary protocol). Noisy: compare ratios within one run.

    .venv/bin/python bench/mysql_drivers.py [--url mysql://root@127.0.0.1:3306/test] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

DRIVERS = {"mysqlclient": ("mysql+mysqldb", "MySQLdb"), "pymysql": ("mysql+pymysql", "pymysql"),
           "mariadb": ("mariadb+mariadbconnector", "mariadb")}
WAYS = ("sqlalchemy", "cursor")
TABLE = f"scratch_driver_bench_{os.getpid()}"


def child(url: str, table: str, way: str, chunk_size: int) -> None:
    """Read the table in one process and print what it cost, as JSON."""
    import resource

    from sqlalchemy import create_engine

    from pipeline.contract import Contract
    from pipeline.database.dialects import reader_for
    from pipeline.database.dialects.base import Dialect

    engine = create_engine(url)
    query = f"SELECT * FROM {table}"
    start = time.perf_counter()
    rows, largest = 0, 0
    if way == "sqlalchemy":
        chunks = Dialect(engine.dialect).read_query(engine, query, None, chunk_size)
    elif way == "binary":
        chunks = reader_for(engine).read_query(engine, query, None, chunk_size)
    else:
        chunks = _cursor_chunks(engine, query, chunk_size, Contract())
    for chunk in chunks:
        rows += len(chunk)
        largest = max(largest, len(chunk))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"rows": rows, "chunk": largest, "seconds": seconds, "peak_mb": peak}))


def _cursor_chunks(engine, query, chunk_size, contract):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        name = engine.dialect.driver
        if name == "mysqldb":
            import MySQLdb.cursors
            cursor = raw.cursor(MySQLdb.cursors.SSCursor)
        elif name == "pymysql":
            import pymysql.cursors
            cursor = raw.cursor(pymysql.cursors.SSCursor)
        else:
            cursor = raw.cursor(buffered=False)
        cursor.execute(query)
        columns = [d[0] for d in cursor.description]
        while rows := cursor.fetchmany(chunk_size):
            yield contract.records(rows, columns)
        cursor.close()


def import_ms(module: str, repeat: int = 5) -> float:
    """The median cumulative import time of ``module`` (``python -X importtime``), in milliseconds."""
    times = []
    for _ in range(repeat):
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                             capture_output=True, text=True, check=True).stderr
        line = [x for x in err.splitlines() if re.search(rf"\|\s*{re.escape(module)}$", x)][-1]
        times.append(int(line.split("|")[1]) / 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("PIPELINE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("URL", "TABLE", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.chunk_size)
        return
    from sqlalchemy import create_engine

    rest = args.url.split("://", 1)[1]
    setup = create_engine("mysql+pymysql://" + rest)
    with setup.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {TABLE} (id INT PRIMARY KEY, f1 DOUBLE, f2 DOUBLE, f3 DOUBLE, "
                             "f4 DOUBLE, name VARCHAR(40))")
        conn.exec_driver_sql(f"INSERT INTO {TABLE} SELECT seq, RAND(1), RAND(), RAND(), RAND(), "
                             f"CONCAT('customer-', seq) FROM seq_1_to_{args.rows}")
    try:
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.repeat):
            for driver, (scheme, _module) in DRIVERS.items():
                for way in WAYS + (("binary",) if driver == "mariadb" else ()):
                    out = subprocess.run([sys.executable, __file__, "--chunk-size", str(args.chunk_size),
                                          "--child", f"{scheme}://{rest}", TABLE, way],
                                         capture_output=True, text=True, check=True).stdout
                    results.setdefault((driver, way), []).append(json.loads(out))
    finally:
        with setup.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
        setup.dispose()
    print(f"{args.rows:,} rows, chunks of {args.chunk_size:,}; best of {args.repeat}")
    print("| driver | import | read (sqlalchemy rows) | peak RSS | read (driver cursor) | peak RSS "
          "| read (binary protocol) | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for driver, (_scheme, module) in DRIVERS.items():
        cells = [f"{import_ms(module):.0f} ms"]
        for way in WAYS + ("binary",):
            if (driver, way) not in results:
                cells += ["-", "-"]
                continue
            best = min(results[(driver, way)], key=lambda r: r["seconds"])
            assert best["rows"] == args.rows, best
            cells += [f"{best['seconds']:.2f} s", f"{max(r['peak_mb'] for r in results[(driver, way)]):,} MB"]
        print(f"| {driver} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
