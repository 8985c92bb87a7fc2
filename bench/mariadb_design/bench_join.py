"""1,000-key join, interleaved query by query (so drift cancels), text protocol and prepared."""
import statistics, sys, time, MySQLdb, mariadb
for nver in map(int, sys.argv[1:]):
    db = f"design_v{nver}"
    c = MySQLdb.connect(host="127.0.0.1", user="root", db=db, autocommit=True); cur = c.cursor()
    m = mariadb.connect(host="127.0.0.1", user="root", database=db, autocommit=True); mc = m.cursor(prepared=True)
    T = {"direct": f"t__v{nver}", "A_union": "t_union", "B_view": "t_view", "D1_gate_join": "t_gate", "D3_partitioned": "t_part"}
    res = {k: ([], []) for k in T}
    for i in range(60):
        for k, t in T.items():
            q = f"SELECT SUM(v.proba_true), COUNT(*) FROM keys1k k JOIN {t} v ON v.id = k.id WHERE k.id > ?"
            if k == "A_union" and i >= 15: continue
            t0 = time.perf_counter(); cur.execute(q.replace("?", "%s"), (0,)); cur.fetchall(); res[k][0].append(time.perf_counter() - t0)
            t0 = time.perf_counter(); mc.execute(q, (0,)); mc.fetchall(); res[k][1].append(time.perf_counter() - t0)
    b0, b1 = statistics.median(res["direct"][0]), statistics.median(res["direct"][1])
    print(f"\n## 1,000-key join, {nver} retained version(s)\n| stable name | text p50 ms | ratio | prepared p50 ms | ratio |\n|---|---|---|---|---|")
    for k in T:
        a, b = statistics.median(res[k][0]), statistics.median(res[k][1])
        print(f"| {k} | {a*1e3:.2f} | {a/b0:.2f}x | {b*1e3:.2f} | {b/b1:.2f}x |")
