"""Build design_v1 and design_v20: version tables, shared serving table, gate, views."""
import sys, time, MySQLdb
ROWS = 100_000

def conn(db=None):
    c = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", db=db or "", autocommit=True, local_infile=1)
    return c

def build(nver):
    db = f"design_v{nver}"
    c = conn(); cur = c.cursor()
    cur.execute(f"DROP DATABASE IF EXISTS {db}"); cur.execute(f"CREATE DATABASE {db}"); cur.execute(f"USE {db}")
    cols = "id BIGINT NOT NULL, proba_false DOUBLE, proba_true DOUBLE, ab_bucket SMALLINT, input_hash BIGINT"
    cur.execute("CREATE TABLE pipeline_pointer (tbl VARCHAR(64), alias VARCHAR(64), version INT, PRIMARY KEY(tbl, alias))")
    cur.execute("CREATE TABLE t__gate (alias VARCHAR(64) PRIMARY KEY, version INT NOT NULL)")
    cur.execute(f"CREATE TABLE t__s (model_version INT NOT NULL, {cols}, PRIMARY KEY (model_version, id))")
    for v in range(1, nver + 1):
        t0 = time.time()
        cur.execute(f"CREATE TABLE t__v{v} ({cols}, PRIMARY KEY (id))")
        cur.execute(f"""INSERT INTO t__v{v} SELECT seq, 1-((seq*{v}*7919) % 1000)/1000.0, ((seq*{v}*7919) % 1000)/1000.0,
                         seq % 100, seq*{v} FROM seq_1_to_{ROWS}""")
        cur.execute(f"INSERT INTO t__s SELECT {v}, t.* FROM t__v{v} t")
        print(db, "version", v, round(time.time() - t0, 2), "s", flush=True)
    cur.execute(f"INSERT INTO pipeline_pointer VALUES ('t','champion',{nver})")
    cur.execute(f"INSERT INTO t__gate VALUES ('champion',{nver})")
    # A: pointer-gated UNION ALL view
    branches = [f"SELECT id, proba_false, proba_true, ab_bucket, input_hash, {v} AS model_version FROM t__v{v} "
                f"WHERE (SELECT version FROM pipeline_pointer WHERE tbl='t' AND alias='champion') = {v}"
                for v in range(1, nver + 1)]
    cur.execute("CREATE VIEW t_union AS " + " UNION ALL ".join(branches))
    # B: one-table MERGE view re-pointed by CREATE OR REPLACE VIEW
    cur.execute(f"CREATE ALGORITHM=MERGE VIEW t_view AS SELECT id, proba_false, proba_true, ab_bucket, input_hash, {nver} AS model_version FROM t__v{nver}")
    # D1: shared serving table joined with a one-row gate (const table)
    cur.execute("CREATE ALGORITHM=MERGE VIEW t_gate AS SELECT s.id, s.proba_false, s.proba_true, s.ab_bucket, s.input_hash, s.model_version "
                "FROM t__s s JOIN t__gate g ON s.model_version = g.version WHERE g.alias = 'champion'")
    # D2: same, gate as a scalar subquery
    cur.execute("CREATE ALGORITHM=MERGE VIEW t_gsub AS SELECT s.id, s.proba_false, s.proba_true, s.ab_bucket, s.input_hash, s.model_version "
                "FROM t__s s WHERE s.model_version = (SELECT version FROM t__gate WHERE alias = 'champion')")
    # D3: LIST-partitioned serving table (one partition per version) + gate join, for pruning checks
    parts = ", ".join(f"PARTITION p{v} VALUES IN ({v})" for v in range(1, nver + 1))
    cur.execute(f"CREATE TABLE t__sp (model_version INT NOT NULL, {cols}, PRIMARY KEY (model_version, id)) PARTITION BY LIST (model_version) ({parts})")
    cur.execute("INSERT INTO t__sp SELECT * FROM t__s")
    cur.execute("CREATE ALGORITHM=MERGE VIEW t_part AS SELECT s.id, s.proba_false, s.proba_true, s.ab_bucket, s.input_hash, s.model_version "
                "FROM t__sp s JOIN t__gate g ON s.model_version = g.version WHERE g.alias = 'champion'")
    # 1,000 keys to join
    cur.execute("CREATE TABLE keys1k (id BIGINT PRIMARY KEY)")
    cur.execute(f"INSERT INTO keys1k SELECT DISTINCT (seq*7907) % {ROWS} + 1 FROM seq_1_to_1000")
    cur.execute("ANALYZE TABLE t__s, t__sp, keys1k, t__gate, pipeline_pointer"); cur.fetchall()
    c.close()

if __name__ == "__main__":
    for n in map(int, sys.argv[1:]):
        build(n)
