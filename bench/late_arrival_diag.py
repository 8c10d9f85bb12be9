"""actdiag: CPU per payment of the sharded search (GraphShards in process, or actors) by arrival order and batch size."""
import argparse, os, time, sys
from collections import Counter
import numpy as np, pyarrow as pa
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ring_search import payments, shuffle_within
from ringwatch.connectors.synthetic import SyntheticConfig, generate
from ringwatch.graph import LocalRingGraph, SearchOptions, ShardedRingGraph
from ringwatch.graph import label_rounds as lr, sharded as shm
from ringwatch.graph.sharded import shard_of

p = argparse.ArgumentParser()
p.add_argument("--tx", type=int, default=100_000); p.add_argument("--accounts", type=int, default=50_000)
p.add_argument("--arrival", default="order")  # order | shuffle:B | parts:K (4 partitions keyed by src, fetched K at a time)
p.add_argument("--batch", default="4096")  # N or 'engine' (256 doubling to 8192)
p.add_argument("--graph", default="sharded")  # sharded | local | actors
p.add_argument("--no-late", action="store_true")
p.add_argument("--max-rings", type=int, default=100)
a = p.parse_args()
opts = SearchOptions(window_ms=48 * 3600_000, max_rings_per_tx=a.max_rings or None)
table = payments(generate(SyntheticConfig(n_transactions=a.tx, n_accounts=a.accounts, days=10, n_rings=50, seed=7)))
lateness = 0
if a.arrival.startswith("shuffle:"):
    lateness = int(a.arrival[8:]); table = shuffle_within(table, lateness, 7)
elif a.arrival.startswith("parts:"):
    k = int(a.arrival[6:]); src = table.column("src").to_pylist()
    parts = [np.array([i for i, s in enumerate(src) if shard_of(s, 4) == q]) for q in range(4)]
    order, pos = [], [0] * 4
    rng = np.random.default_rng(7)
    while any(pos[q] < len(parts[q]) for q in range(4)):
        q = int(rng.integers(4))
        order.extend(parts[q][pos[q]:pos[q] + k]); pos[q] += k
    table = table.take(pa.array(np.array(order, np.int64)))
    lateness = 4 * k
ts = table.column("ts").to_numpy()
late_rows = int(np.count_nonzero(ts < np.maximum.accumulate(ts)))
stats = Counter()
if a.graph != "local":
    orig_plan = lr.LabelRounds.plan
    def plan(self):
        reqs = orig_plan(self)
        for r in reqs.values():
            k = np.bincount(self.kind[r.job], minlength=3)
            stats["entries_search"] += int(k[0]); stats["entries_gather"] += int(k[1]); stats["entries_late"] += int(k[2])
            stats["scan_entries"] += int(r.scan_job.size); stats["join_entries"] += int(r.join_gid.size)
            stats["requests"] += 1
        return reqs
    lr.LabelRounds.plan = plan
    orig_exp = shm.GraphShard._expand
    def _expand(self, job, *rest, **kw):
        t0 = time.process_time(); out = orig_exp(self, job, *rest, **kw)
        stats["expand_cpu"] += time.process_time() - t0; stats["expand_in"] += int(job.size); stats["labels_out"] += int(out.job.size)
        return out
    shm.GraphShard._expand = _expand
    if hasattr(lr.LabelRounds, "_filter_late"):
        orig_fl = lr.LabelRounds._filter_late
        def _filter_late(self, jobs):
            stats["late_reopened"] += int(jobs.size); return orig_fl(self, jobs)
        lr.LabelRounds._filter_late = _filter_late
    if a.no_late:
        shm._older = lambda *x: np.zeros(0, np.int64)
if a.graph == "local":
    graph = LocalRingGraph(opts)
elif a.graph == "sharded":
    graph = ShardedRingGraph.in_process(opts, 2)
else:
    from ringwatch import runtime as rt
    rt.init(); graph = ShardedRingGraph.create(opts, 2)
    graph.process(table.slice(0, 1))
sizes = []
n, start = table.num_rows, (1 if a.graph == "actors" else 0)
cap = 256
while start < n:
    size = cap if a.batch == "engine" else int(a.batch)
    sizes.append((start, size)); start += size
    if a.batch == "engine": cap = min(cap * 2, 8192)
W = opts.window_ms; step = W // 16; evicted = None
alerts = set(); rounds = late = gathers = surv = searches = 0; gathered = 0
shard_cpu0 = sum(graph.cpu_seconds()) if a.graph == "actors" else 0
c0, w0 = time.process_time(), time.perf_counter()
for start, size in sizes:
    b = table.slice(start, size)
    res = graph.process(b)
    end = start + b.num_rows
    horizon = int(ts[end - 1] if not lateness else ts[end:end + lateness].min(initial=ts[end - 1])) - W
    horizon = min(horizon, int(ts[end:].min(initial=horizon + W)) - W)
    if evicted is None or horizon - evicted >= step:
        graph.evict(horizon); evicted = horizon
    alerts.update(x.alert_id for x in res.alerts)
    if a.graph != "local":
        f = graph.figures; rounds += f.rounds; late += f.late; gathers += f.gathers; surv += f.survivors; gathered += f.gathered_edges
cpu = time.process_time() - c0; wall = time.perf_counter() - w0
shard_cpu = (sum(graph.cpu_seconds()) - shard_cpu0) if a.graph == "actors" else 0
tot = cpu + shard_cpu
import zlib; idsum = zlib.crc32(','.join(sorted(alerts)).encode())
print(f"{a.graph:8} arrival={a.arrival:12} batch={a.batch:6} no_late={a.no_late} batches={len(sizes)} late_rows={late_rows:,} "
      f"| CPU {tot:.2f}s = {tot / n * 1e6:.1f} us/tx (driver {cpu:.2f} shards {shard_cpu:.2f}) wall {wall:.1f}s alerts={len(alerts)} ids#{idsum} load={os.getloadavg()[0]:.1f}")
if a.graph != "local":
    print(f"   rounds/batch={rounds / len(sizes):.1f} late_jobs={late:,} gathers={gathers:,} survivors={surv:,} gathered_edges={gathered:,} "
          f"expand_cpu={stats['expand_cpu']:.2f}s " + " ".join(f"{k}={v:,}" for k, v in sorted(stats.items()) if k != 'expand_cpu'))
if a.graph == "actors":
    c1, w1 = time.process_time(), time.perf_counter(); s1 = sum(graph.cpu_seconds())
    for _ in range(5):
        tabs = graph.checkpoint()
    print(f"   checkpoint (snapshot of {sum(t.num_rows for t in tabs):,} rows, 2 shards): wall {(time.perf_counter() - w1) / 5 * 1000:.1f} ms, "
          f"CPU driver {(time.process_time() - c1) / 5 * 1000:.1f} ms + shards {(sum(graph.cpu_seconds()) - s1) / 5 * 1000:.1f} ms each; evict calls every {step} ms of event time")
    graph.close(); rt.shutdown()
