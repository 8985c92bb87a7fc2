"""A long transaction holds the old version; a flip is attempted with a bounded wait; 4 readers measure their latency.
usage: holdflip.py CANDIDATE   (B_lwt1 B_nowait B_mst C_lwt1 C_nowait C_mst D1)"""
import sys, threading, time, statistics, MySQLdb
DB = "design_v1"
cand = sys.argv[1]
HOLD = 6.0          # seconds the holder keeps its transaction open
ATTEMPT_EVERY = 0.5
def conn():
    return MySQLdb.connect(host="127.0.0.1", user="root", passwd="", db=DB, autocommit=True)
name = {"B": "t_view", "C": "ct", "D": "t_gate"}[cand[0]]
stop = threading.Event(); lat = []; errs = []; seen = set()
def reader(i):
    c = conn(); cur = c.cursor(); k = i
    while not stop.is_set():
        k = (k * 7919 + 13) % 100000 + 1
        t0 = time.perf_counter()
        try:
            cur.execute(f"SELECT proba_true, model_version FROM {name} WHERE id = %s", (k,)); r = cur.fetchall()
            lat.append((time.time(), time.perf_counter() - t0)); seen.add(r[0][1])
        except Exception as e:
            errs.append(repr(e))
        time.sleep(0.002)
def holder(evt_started):
    c = conn(); cur = c.cursor(); cur.execute("START TRANSACTION"); cur.execute(f"SELECT COUNT(*) FROM {name}"); cur.fetchall()
    evt_started.set(); time.sleep(HOLD); cur.execute("COMMIT"); holder_end[0] = time.time()
holder_end = [None]
state = {"v": 1}
def flip_sql(to):
    frm = state["v"]
    if cand[0] == "B":
        return [f"CREATE OR REPLACE ALGORITHM=MERGE VIEW t_view AS SELECT id, proba_false, proba_true, ab_bucket, input_hash, {to} AS model_version FROM t__v{to}"]
    if cand[0] == "C":
        return [f"RENAME TABLE ct{' WAIT 0' if cand=='C_nowait' else ''} TO ct__v{frm}, ct__v{to} TO ct"]
    return ["START TRANSACTION", f"UPDATE t__gate SET version = {to} WHERE alias = 'champion'", "COMMIT"]
def main():
    c = conn(); cur = c.cursor()
    # C needs a model_version column to check what is served: use a virtual column in the real tables
    if cand[0] == "C":
        for t, v in (("ct", 1), ("ct__v2", 2)):
            cur.execute(f"SHOW COLUMNS FROM {t} LIKE 'model_version'")
            if not cur.fetchall(): cur.execute(f"ALTER TABLE {t} ADD COLUMN model_version INT AS ({v}) VIRTUAL")
    if cand[0] == "B": cur.execute(flip_sql(1)[0])
    if cand[0] == "D": cur.execute("UPDATE t__gate SET version=1")
    if cand == "B_lwt1" or cand == "C_lwt1": cur.execute("SET SESSION lock_wait_timeout = 1")
    if cand == "B_nowait": cur.execute("SET SESSION lock_wait_timeout = 0")
    if cand == "D1": cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
    ths = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    [t.start() for t in ths]
    time.sleep(1.0)
    ev = threading.Event(); h = threading.Thread(target=holder, args=(ev,)); h.start(); ev.wait()
    t_hold = time.time(); attempts = []; ok_at = None
    while time.time() - t_hold < HOLD + 2 and ok_at is None:
        to = 2 if state["v"] == 1 else 1
        t0 = time.perf_counter()
        try:
            for s in flip_sql(to):
                cur.execute(("SET STATEMENT max_statement_time=0.05 FOR " + s) if cand.endswith("mst") else s)
            state["v"] = to; ok_at = time.time(); attempts.append(("ok", time.perf_counter() - t0))
        except Exception as e:
            attempts.append((str(e.args[0]), time.perf_counter() - t0))
            try: cur.execute("ROLLBACK")
            except Exception: pass
            time.sleep(ATTEMPT_EVERY)
    time.sleep(0.5); stop.set(); [t.join() for t in ths]; h.join()
    # flip back for the next experiment
    if state["v"] == 2:
        for s in flip_sql(1): cur.execute(s)
    during = [l for (ts, l) in lat if t_hold <= ts <= (ok_at or holder_end[0] or time.time())]
    base = [l for (ts, l) in lat if ts < t_hold]
    fails = [a for a in attempts if a[0] != "ok"]
    if fails: print("   first failure:", fails[0])
    print(f"| {cand} | {len(fails)} x {fails[0][0] if fails else '-'} ({statistics.mean([a[1] for a in fails])*1e3:.0f} ms each) | " if fails else f"| {cand} | 0 | ",
          f"{'%.1f s after hold began' % (ok_at - t_hold) if ok_at else 'never'}{' (holder committed at %.1f s)' % (holder_end[0]-t_hold) if holder_end[0] else ''} | "
          f"{statistics.median(base)*1e3:.2f} / {sorted(base)[int(.99*len(base))]*1e3:.2f} | "
          f"{statistics.median(during)*1e3:.2f} / {sorted(during)[int(.99*len(during))]*1e3:.2f} / {max(during)*1e3:.0f} | {len(errs)} | {sorted(seen)} |")
    if errs: print("   errors:", errs[:3])
main()
