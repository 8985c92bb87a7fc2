"""The issue's reader test, shortened: 8 reader threads (point lookups + full-version checks), a slow reader holding the
stable name 1 s at a time, a flipper flipping 10 times a second. Phase 1: no flips (DUR s); phase 2: flips (DUR s).
usage: readers.py CANDIDATE [DUR]   (D1 B_mst C_mst B_nowait C_nowait)"""
import sys, threading, time, statistics, MySQLdb
cand = sys.argv[1]; DUR = float(sys.argv[2]) if len(sys.argv) > 2 else 10
DB = "design_v1"; name = {"B": "t_view", "C": "ct", "D": "t_gate"}[cand[0]]
def conn(): return MySQLdb.connect(host="127.0.0.1", user="root", passwd="", db=DB, autocommit=True)
c0 = conn(); k0 = c0.cursor()
SUMS = {}
for v in (1, 2):
    k0.execute(f"SELECT COUNT(*), SUM(input_hash) FROM t__v{v}"); SUMS[v] = tuple(int(x) for x in k0.fetchone())
stop = threading.Event(); flipping = threading.Event()
lat = {"idle": [], "flip": []}; errs = []; mixed = []; checks = [0]
def reader(i):
    c = conn(); cur = c.cursor(); k = i + 1; n = 0
    while not stop.is_set():
        ph = "flip" if flipping.is_set() else "idle"
        k = (k * 7919 + 13) % 100000 + 1; n += 1
        try:
            t0 = time.perf_counter()
            cur.execute(f"SELECT proba_true, model_version FROM {name} WHERE id = %s", (k,)); r = cur.fetchall()
            lat[ph].append(time.perf_counter() - t0)
            if len(r) != 1: mixed.append(("rows", k, r))
            if n % 50 == 0:   # a whole-version read: one version, complete
                cur.execute(f"SELECT COUNT(*), SUM(input_hash), MIN(model_version), MAX(model_version) FROM {name}")
                cnt, s, lo, hi = cur.fetchone(); checks[0] += 1
                if lo != hi or (int(cnt), int(s)) != SUMS[lo]: mixed.append((cnt, s, lo, hi))
        except Exception as e:
            errs.append(repr(e)[:120])
        time.sleep(0.001)
def slow():
    c = conn(); cur = c.cursor()
    while not stop.is_set():
        try:
            cur.execute("START TRANSACTION"); cur.execute(f"SELECT COUNT(*) FROM {name}"); cur.fetchall()
            time.sleep(1.0); cur.execute("COMMIT")
        except Exception as e: errs.append("slow " + repr(e)[:100])
state = {"v": 1}
def flip_sql(to):
    frm = state["v"]
    if cand[0] == "B":
        return [f"CREATE OR REPLACE ALGORITHM=MERGE VIEW t_view AS SELECT id, proba_false, proba_true, ab_bucket, input_hash, {to} AS model_version FROM t__v{to}"]
    if cand[0] == "C":
        return [f"RENAME TABLE ct{' WAIT 0' if cand.endswith('nowait') else ''} TO ct__v{frm}, ct__v{to} TO ct"]
    return ["START TRANSACTION", f"UPDATE t__gate SET version = {to} WHERE alias = 'champion'", "COMMIT"]
fl = {"ok": 0, "fail": 0, "t": []}
def flipper():
    c = conn(); cur = c.cursor()
    if cand == "B_nowait": cur.execute("SET SESSION lock_wait_timeout = 0")
    while not stop.is_set():
        to = 2 if state["v"] == 1 else 1
        t0 = time.perf_counter()
        try:
            for s in flip_sql(to):
                cur.execute(("SET STATEMENT max_statement_time=0.05 FOR " + s) if cand.endswith("mst") else s)
            state["v"] = to; fl["ok"] += 1; fl["t"].append(time.perf_counter() - t0)
        except Exception as e:
            fl["fail"] += 1
            try: cur.execute("ROLLBACK")
            except Exception: pass
        time.sleep(max(0, 0.1 - (time.perf_counter() - t0)))
ths = [threading.Thread(target=reader, args=(i,)) for i in range(8)] + [threading.Thread(target=slow)]
[t.start() for t in ths]
time.sleep(DUR); flipping.set(); f = threading.Thread(target=flipper); f.start(); time.sleep(DUR); stop.set()
[t.join() for t in ths + [f]]
def pp(x): x = sorted(x); return f"{statistics.median(x)*1e3:.2f} / {x[int(.99*len(x))]*1e3:.2f} / {x[-1]*1e3:.0f}"
print(f"| {cand} | {fl['ok']} ok, {fl['fail']} failed | {statistics.median(fl['t'])*1e3 if fl['t'] else float('nan'):.1f} | {len(lat['idle'])+len(lat['flip'])} | {pp(lat['idle'])} | {pp(lat['flip'])} | {len(errs)} | {len(mixed)} of {checks[0]} |")
if errs: print("  errors:", errs[:3])
if mixed: print("  mixed:", mixed[:3])
# leave version 1 served
if state["v"] == 2:
    cur = c0.cursor()
    for s in flip_sql(1): cur.execute(s)
