"""Part (d) of bench/end_to_end.py alone: 1 vs 2 engines in one group on a ringwatch cluster (issue 11).

For the 16-core device run (bench/device/run.sh e2e), whose few minutes go to the figure that only that
machine gives; parts (a)-(c) are measured on the 2-core box. The broker, topic, payments and measure are
end_to_end.py's own (`scale_out`): an embedded Tansu broker, a 4-partition topic, the same synthetic
stream, redis-server and one node, group tx/s from the first consumed message. On a big machine the node
and the shared graph grow with it (--node-workers, --shards; 2 each below 8 cores, 4 each from 8), so the
2-engine figure is not capped by a graph sized for a laptop.

    python bench/device/e2e_scale_out.py --transactions 200000
    python bench/device/e2e_scale_out.py --node-workers 8 --shards 8
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import end_to_end  # noqa: E402  (bench/end_to_end.py; it puts tests/ on sys.path for the cluster helpers)

from ringwatch.connectors import EmbeddedBroker, SyntheticConfig, generate, produce_transactions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--window", default="48h")
    parser.add_argument("--budget", type=float, default=60.0, help="longest one group's run may take, s")
    default_size = 4 if (os.cpu_count() or 1) >= 8 else 2
    parser.add_argument("--node-workers", type=int, default=default_size, help="workers of the cluster's node")
    parser.add_argument("--shards", type=int, default=default_size, help="GraphShard actors shared by the group")
    parser.add_argument("--engine-args", default="", help="more `ringwatch run` flags for every engine")
    args = parser.parse_args()
    end_to_end.Engine.extra_args = ["--shards", str(args.shards), *shlex.split(args.engine_args)]
    load_at_start = end_to_end.load_average()
    broker = EmbeddedBroker().start()
    try:
        topic = f"payments-{time.time_ns()}"
        end_to_end.create_topic(broker.bootstrap, topic)
        stream = generate(SyntheticConfig(n_transactions=args.transactions, n_accounts=args.accounts, days=10,
                                          n_rings=50, seed=7))
        started = time.perf_counter()
        produce_transactions(broker.bootstrap, topic, stream.transactions, timeout_s=600)
        print(f"produced {args.transactions:,} transactions to {topic} in {time.perf_counter() - started:.1f} s",
              flush=True)
        scaled = end_to_end.scale_out(broker.bootstrap, topic, args.transactions, args.window, args.budget,
                                      workers=args.node_workers)
    finally:
        broker.stop()
    print(f"\nscale-out on a one-node ringwatch cluster of {args.node_workers} workers, {args.shards} shard actors shared"
          f" by the group, {os.cpu_count()} cores;"
          f" load average {load_at_start} at the start, {end_to_end.load_average()} at the end")
    for measure, value in scaled.items():
        print(f"{measure:<52} {value:>12,.2f}")


if __name__ == "__main__":
    main()
