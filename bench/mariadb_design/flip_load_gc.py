"""D1: load 1M rows into the shared serving table vs a standalone table (LOAD DATA LOCAL INFILE); flip time between a
1k-row and a 1M-row version; gc of the 1M-row version by chunked DELETE while readers look up keys."""
import csv, os, statistics, threading, time, MySQLdb
def conn(): return MySQLdb.connect(host="127.0.0.1", user="root", db="design_v1", autocommit=True, local_infile=1)
c = conn(); cur = c.cursor()
path = "/tmp/mariadb_design/v1m.csv"
if not os.path.exists(path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        for i in range(1, 1_000_001): w.writerow((i, 1 - (i % 997) / 997, (i % 997) / 997, i % 100, i * 31))
cols = "id BIGINT NOT NULL, proba_false DOUBLE, proba_true DOUBLE, ab_bucket SMALLINT, input_hash BIGINT"
cur.execute("DROP TABLE IF EXISTS big__s, big__v1, big__gate"); cur.execute("DROP VIEW IF EXISTS big")
cur.execute(f"CREATE TABLE big__s (model_version INT NOT NULL, {cols}, PRIMARY KEY (model_version, id))")
cur.execute(f"CREATE TABLE big__v1 ({cols}, PRIMARY KEY (id))")
cur.execute("CREATE TABLE big__gate (alias VARCHAR(64) PRIMARY KEY, version INT NOT NULL)")
cur.execute("CREATE ALGORITHM=MERGE VIEW big AS SELECT s.id, s.proba_true, s.model_version FROM big__s s JOIN big__gate g ON s.model_version = g.version WHERE g.alias = 'champion'")
# three older 1M-row versions already in the serving table, so the load is not into an empty table
for v in (7, 8, 9):
    cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE big__s FIELDS TERMINATED BY ',' (id, proba_false, proba_true, ab_bucket, input_hash) SET model_version = {v}")
out = []
t0 = time.time(); cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE big__v1 FIELDS TERMINATED BY ',' (id, proba_false, proba_true, ab_bucket, input_hash)"); out.append(("load 1M rows, standalone version table", time.time() - t0))
t0 = time.time(); cur.execute("START TRANSACTION"); cur.execute(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE big__s FIELDS TERMINATED BY ',' (id, proba_false, proba_true, ab_bucket, input_hash) SET model_version = 1"); cur.execute("COMMIT"); out.append(("load 1M rows into the shared serving table (3M rows already there), one transaction", time.time() - t0))
cur.execute("INSERT INTO big__s SELECT 2, id, proba_false, proba_true, ab_bucket, input_hash FROM big__v1 WHERE id <= 1000")
cur.execute("INSERT INTO big__gate VALUES ('champion', 2)")
ft = {1: [], 2: []}
for i in range(100):
    to = 1 if i % 2 == 0 else 2
    t0 = time.perf_counter(); cur.execute("START TRANSACTION"); cur.execute(f"UPDATE big__gate SET version = {to} WHERE alias = 'champion'"); cur.execute("COMMIT"); ft[to].append(time.perf_counter() - t0)
out.append(("flip to the 1M-row version, p50 ms", statistics.median(ft[1]) * 1e3)); out.append(("flip to the 1k-row version, p50 ms", statistics.median(ft[2]) * 1e3))
# gc of version 1 (1M rows, not served) while 4 readers look up keys of the served version 2 and of version 1 via a long holder
stop = threading.Event(); lat = []; errs = []
def reader(i):
    cc = conn(); k = cc.cursor(); n = i
    while not stop.is_set():
        n = (n * 7919 + 1) % 1000 + 1; t0 = time.perf_counter()
        try: k.execute("SELECT proba_true FROM big WHERE id = %s", (n,)); assert len(k.fetchall()) == 1; lat.append(time.perf_counter() - t0)
        except Exception as e: errs.append(repr(e))
        time.sleep(0.002)
hold = conn(); hc = hold.cursor(); hc.execute("START TRANSACTION"); hc.execute("UPDATE big__gate SET version=version WHERE alias='x'")  # no-op
hc.execute("SELECT COUNT(*) FROM big__s WHERE model_version = 1"); before = hc.fetchone()[0]   # a snapshot that sees version 1
ths = [threading.Thread(target=reader, args=(i,)) for i in range(4)]; [t.start() for t in ths]
time.sleep(1); idle = list(lat); lat.clear()
t0 = time.time(); chunks = 0
while True:
    cur.execute("DELETE FROM big__s WHERE model_version = 1 ORDER BY id LIMIT 10000"); chunks += 1
    if cur.rowcount == 0: break
gc_s = time.time() - t0
stop.set(); [t.join() for t in ths]
hc.execute("SELECT COUNT(*) FROM big__s WHERE model_version = 1"); after = hc.fetchone()[0]; hc.execute("COMMIT")
out.append((f"gc: DELETE 1M rows in {chunks} chunks of 10k (s)", gc_s))
out.append(("reader p50/p99/max ms before gc", "%.2f / %.2f / %.1f" % (statistics.median(idle)*1e3, sorted(idle)[int(.99*len(idle))]*1e3, max(idle)*1e3)))
out.append(("reader p50/p99/max ms during gc", "%.2f / %.2f / %.1f" % (statistics.median(lat)*1e3, sorted(lat)[int(.99*len(lat))]*1e3, max(lat)*1e3)))
out.append(("reader errors during gc", len(errs)))
out.append(("an open snapshot still sees the retired version, rows before/after gc", f"{before} / {after}"))
for k, v in out: print(f"| {k} | {v if isinstance(v, (str, int)) else round(v, 3)} |")
