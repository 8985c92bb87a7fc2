"""Single-client lookup latency: point lookups and a 1,000-key join, through each stable-name candidate vs the version table."""
import random, statistics, sys, time, MySQLdb

def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(p * len(xs)))]

def run(nver, rounds=15, per=200, joins=10):
    db = f"design_v{nver}"
    c = MySQLdb.connect(host="127.0.0.1", user="root", passwd="", db=db, autocommit=True); cur = c.cursor()
    targets = {"direct": f"t__v{nver}", "A_union": "t_union", "B_view": "t_view", "D1_gate_join": "t_gate",
               "D2_gate_subq": "t_gsub", "D3_partitioned": "t_part"}
    pt = {k: [] for k in targets}; jn = {k: [] for k in targets}
    rnd = random.Random(1)
    for k, t in targets.items():  # warm
        for _ in range(200):
            cur.execute(f"SELECT proba_true FROM {t} WHERE id = %s", (rnd.randint(1, 100000),)); cur.fetchall()
        cur.execute(f"SELECT SUM(v.proba_true) FROM keys1k k JOIN {t} v ON v.id = k.id"); cur.fetchall()
    for r in range(rounds):
        order = list(targets.items()); rnd.shuffle(order)
        for k, t in order:
            q = f"SELECT proba_true FROM {t} WHERE id = %s"
            for _ in range(per):
                key = rnd.randint(1, 100000)
                t0 = time.perf_counter(); cur.execute(q, (key,)); rows = cur.fetchall(); pt[k].append(time.perf_counter() - t0)
                assert len(rows) == 1, (k, key, rows)
            for _ in range(joins):
                t0 = time.perf_counter(); cur.execute(f"SELECT SUM(v.proba_true), COUNT(*) FROM keys1k k JOIN {t} v ON v.id = k.id"); rows = cur.fetchall()
                jn[k].append(time.perf_counter() - t0); assert rows[0][1] == 1000
    base_p, base_j = statistics.median(pt["direct"]), statistics.median(jn["direct"])
    print(f"\n## {nver} retained version(s), 100k rows each; point n={len(pt['direct'])}, join n={len(jn['direct'])}")
    print("| stable name | point p50 ms | point p99 ms | point p50 ratio | join p50 ms | join p99 ms | join p50 ratio |")
    print("|---|---|---|---|---|---|---|")
    for k in targets:
        print(f"| {k} | {statistics.median(pt[k])*1e3:.3f} | {pct(pt[k],.99)*1e3:.3f} | {statistics.median(pt[k])/base_p:.2f}x "
              f"| {statistics.median(jn[k])*1e3:.2f} | {pct(jn[k],.99)*1e3:.2f} | {statistics.median(jn[k])/base_j:.2f}x |")

if __name__ == "__main__":
    for n in map(int, sys.argv[1:]): run(n)
