"""Where the view's extra cost goes: direct table, inline gate join (no view), the gate view, a trivial MERGE view; and
the same through server-side prepared statements (MariaDB Connector/Python, binary protocol)."""
import statistics, time, random, MySQLdb, mariadb
qs = {"direct t__v20": "SELECT proba_true FROM t__v20 WHERE id = %s",
      "inline gate join (no view)": "SELECT s.proba_true FROM t__s s JOIN t__gate g ON s.model_version = g.version WHERE g.alias = 'champion' AND s.id = %s",
      "D1 view t_gate": "SELECT proba_true FROM t_gate WHERE id = %s",
      "B view t_view": "SELECT proba_true FROM t_view WHERE id = %s"}
rnd = random.Random(2)
def bench(cur, q, n=4000, conv=lambda q: q):
    xs = []
    for _ in range(n):
        k = rnd.randint(1, 100000); t0 = time.perf_counter(); cur.execute(conv(q), (k,)); cur.fetchall(); xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e3
c = MySQLdb.connect(host="127.0.0.1", user="root", db="design_v20", autocommit=True); cur = c.cursor()
m = mariadb.connect(host="127.0.0.1", user="root", database="design_v20", autocommit=True); mc = m.cursor(prepared=True)
print("| query | text protocol p50 ms (mysqlclient) | prepared p50 ms (Connector/Python, binary) |\n|---|---|---|")
res = {k: ([], []) for k in qs}
for r in range(3):
    for k, q in qs.items():
        res[k][0].append(bench(cur, q)); res[k][1].append(bench(mc, q, conv=lambda q: q.replace("%s", "?")))
for k in qs: print(f"| {k} | {statistics.median(res[k][0]):.3f} | {statistics.median(res[k][1]):.3f} |")
