"""End-to-end benchmark: `ringwatch run` against raw kafka-python consumption of the same topic.

In one run, on one embedded Tansu broker (or --bootstrap for Apache Kafka):
(a) two baselines over the same payments: a plain kafka-python consumer group
    reads the topic (4 partitions) and decodes each JSON message, nothing else;
    and the raw graph: `LocalRingGraph.process` over the payments in memory,
    in batches of the engine's `batch_max_size`, in this process;
(b) `ringwatch run` consumes the same topic in a fresh group, once per graph
    placement (`actors`: shard actors on a local runtime; `in-process`: the
    graph in the engine's process), until every message is processed or
    --budget seconds pass (its own counter on /metrics); tx/s from its first
    consumed message, and the ratios to both baselines;
(c) latency at a fixed offered rate: first the raw produce-to-poll latency (a
    plain kafka-python consumer in a process of its own, with the engine's
    fetch wait: what the broker and client alone take), then once per
    placement: the engine is started first, payments are produced at
    --rate tx/s, and each alert's latency is
    its `detected_at` minus the time its closing payment was handed to the
    producer (p50/p99), and the part of it inside the engine (the alert's
    `latency_ms`: from the poll that returned the payment to the alert); the
    rate the producer really achieved is printed too, and where the floor's
    time and CPU go: each payment's hand-over-to-acknowledgement time (the
    producer and broker) and the CPU per payment of the producer (this
    process), the plain consumer and the embedded broker. On 2 cores these
    three alone take more than one core at 20k tx/s: the floor is mostly
    waiting for a core, and so is the rest of the latency;
(d) scale-out: on a ringwatch cluster (redis-server and one node on this
    machine, --address), one engine and then two engines in one group consume
    the topic (shared shard actors); tx/s of the group from its first consumed
    message. On a 2-core machine two engines share the same two cores with the
    node, the broker and the producer: the figure says what it costs, not what
    more machines would give.

    python bench/end_to_end.py                                   # 200k transactions, 20,000 tx/s offered
    python bench/end_to_end.py --transactions 100000 --latency-seconds 10 --placements in-process
    python bench/end_to_end.py --latency-only --placements in-process  # (c) alone
The machine's load average is printed at the start and the end: other
processes take cores from every rate. The CPU each side spends per payment
(the engine with its runtime's workers, from /proc) depends much less on that
load; the CPU ratios compare the engine with the baselines by it.
    python bench/end_to_end.py --backends ringwatch,ray          # (b) and (c) on ringwatch's runtime and on Ray
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from ringwatch.connectors import EmbeddedBroker, SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import LocalRingGraph, Transaction
from ringwatch.graph.warmup import warm_up
from ringwatch.stream import Config
from ringwatch.stream.config import search_options
from ringwatch.stream.engine_setup import MIN_FETCH_WAIT_MS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from runtime_cluster import TOKEN, Cluster  # noqa: E402
from runtime_micro import tree_cpu_s  # noqa: E402
from services import RedisServer  # noqa: E402

PARTITIONS = 4
TICK_S = 0.001  # the paced producer's wake-up interval
ACK_SAMPLE = 16  # every this many payments, the paced producer times the broker's acknowledgement


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=20_000, help="offered rate for the latency run, tx/s")
    parser.add_argument("--latency-seconds", type=float, default=15.0, help="length of the latency run")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="longest a throughput run may take, and how long a latency run waits after the "
                             "last payment, s")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start an embedded Tansu broker)")
    parser.add_argument("--window", default="48h")
    parser.add_argument("--placements", default="actors,in-process", help="graph placements to measure")
    parser.add_argument("--backends", default="ringwatch",
                        help="runtimes to run (b) and (c) on, side by side: ringwatch, ray (a local Ray per engine)")
    parser.add_argument("--no-scale-out", action="store_true", help="skip (d), 1 vs 2 engines on a cluster")
    parser.add_argument("--latency-only", action="store_true", help="only (c), the latency runs")
    parser.add_argument("--engine-args", default="",
                        help="more `ringwatch run` flags for every engine, e.g. '--batch-max-size 1024'")
    return parser.parse_args()


def create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()


def raw_consume(bootstrap: str, topic: str, expected: int) -> tuple[float, float]:
    """tx/s of a kafka-python group that only decodes JSON, and its CPU microseconds per message."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{time.time_ns()}",
                             auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000,
                             max_poll_interval_ms=10_000, session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
    seen, started = 0, None
    deadline = time.monotonic() + 600
    try:
        while seen < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                if started is None:
                    started, cpu, first = time.perf_counter(), time.process_time(), seen
                for record in records:
                    json.loads(record.value)
                seen += len(records)
        return seen / (time.perf_counter() - started), (time.process_time() - cpu) / (seen - first) * 1e6
    finally:
        consumer.close()


def raw_graph(transactions: list[Transaction], window: str) -> tuple[float, float]:
    """tx/s of the in-process graph alone (apply + search), in the engine's default micro-batches; CPU us/tx."""
    graph = LocalRingGraph(search_options(window=window))
    batch = Config().engine.batch_max_size
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(transactions), batch):
        graph.process(transactions[start:start + batch])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    graph.close()
    return len(transactions) / elapsed, cpu / len(transactions) * 1e6


def load_average() -> str:
    return "/".join(f"{load:.2f}" for load in os.getloadavg())


def consumed(metrics_port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1.0
    for line in text.splitlines():
        if line.startswith("ringwatch_transactions_consumed_total"):
            return float(line.split()[-1])
    return 0.0


class Engine:
    """`ringwatch run` in a subprocess, with its metrics port."""

    extra_args: list[str] = []  # --engine-args, for every engine

    def __init__(self, bootstrap: str, topic: str, group: str, window: str, *extra: str, env: dict | None = None):
        self.workdir = Path(tempfile.mkdtemp(prefix="ringwatch-bench-"))
        self.port = free_port()
        args = [sys.executable, "-m", "ringwatch.stream.cli", "run", "--kafka-bootstrap", bootstrap, "--topic", topic,
                "--group", group, "--state-dir", str(self.workdir / "state"),
                "--alerts-file", str(self.workdir / "alerts.jsonl"), "--metrics-port", str(self.port),
                "--window", window, "--checkpoint-interval", "10s", *extra, *self.extra_args]
        log = open(self.workdir / "engine.log", "wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, **(env or {})})

    def consumed(self) -> float:
        if self.process.poll() is not None:
            raise RuntimeError(f"the engine exited; see {self.workdir / 'engine.log'}")
        return consumed(self.port)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)


def group_throughput(engines: list[Engine], expected: int, budget_s: float) -> tuple[float, float]:
    """tx/s of `engines` together, from the first consumed message to all `expected` (or the budget's end),
    and the CPU microseconds they (with their runtime's workers) spent per payment meanwhile."""
    first = None
    try:
        while True:
            count = sum(max(0.0, e.consumed()) for e in engines)
            now = time.perf_counter()
            if count > 0 and first is None:
                first = (now, count, sum(tree_cpu_s(e.process.pid) for e in engines))
            if first is not None and (count >= expected or now - first[0] > budget_s):
                cpu = sum(tree_cpu_s(e.process.pid) for e in engines) - first[2]
                return (count - first[1]) / (now - first[0]), cpu / max(1.0, count - first[1]) * 1e6
            time.sleep(0.2)
    finally:
        for engine in engines:
            engine.stop()


def latency_payments(bootstrap: str, rate: int, seconds: float, accounts: int) -> tuple[str, list]:
    """A fresh topic and the payments of a latency run: (tx_id, key, value) each."""
    topic = f"latency-{time.time_ns()}"
    create_topic(bootstrap, topic)
    total = int(rate * seconds)
    stream = generate(SyntheticConfig(n_transactions=total, n_accounts=accounts, days=max(2.0, seconds / 8640),
                                      n_rings=max(50, total // 300), seed=11))
    return topic, [(tx.tx_id, tx.src.encode(), json.dumps(tx.to_dict()).encode()) for tx in stream.transactions]


@dataclass
class Paced:
    """What `produce_paced` measured: when each payment was handed to the producer (epoch ms), the rate really
    offered, hand-over-to-acknowledgement times (ms, ascending, every `ACK_SAMPLE`th payment: the producer's and
    the broker's share)
    and the CPU this process (the producer) spent per payment."""

    produced_at: dict[str, float]
    offered: float
    acked: list[float]
    cpu_us: float


def produce_paced(bootstrap: str, topic: str, values: list, rate: int, ready: Callable[[], bool]) -> Paced:
    """Send the first value and wait until `ready()` (the reader got it), then the others at `rate`/s.

    The producer wakes once per `TICK_S` and sends every payment due by then
    (20k wake-ups a second, one per payment, cost this process more CPU than
    the sends on a small machine, and the broker sees the same batches either
    way with `linger_ms=1`); each payment's time is taken when it is sent.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=1, acks=1)
    _, key, value = values[0]
    producer.send(topic, key=key, value=value).get(timeout=60)
    while not ready():
        time.sleep(0.2)
    produced_at: dict[str, float] = {}
    acked: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    sent, total = 1, len(values)
    while sent < total:
        pause = started + (sent - 1) / rate + TICK_S - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        due = min(total, 1 + int((time.perf_counter() - started) * rate) + 1)
        for index in range(sent, due):
            tx_id, key, value = values[index]
            at = produced_at[tx_id] = time.time() * 1000
            future = producer.send(topic, key=key, value=value)
            if index % ACK_SAMPLE == 0:
                future.add_callback(lambda _, at=at: acked.append(time.time() * 1000 - at))
        sent = max(sent, due)
    offered = (total - 1) / (time.perf_counter() - started)
    producer.flush()
    cpu = time.process_time() - cpu
    producer.close()
    return Paced(produced_at, offered, sorted(acked), cpu / max(1, total - 1) * 1e6)


def _receive(bootstrap: str, topic: str, fetch_max_wait_ms: int, out: str) -> None:
    """(A child process.) Read `topic` as a group member would, writing `tx_id received_ms` per message."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-latency-{time.time_ns()}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             fetch_max_wait_ms=fetch_max_wait_ms, max_poll_interval_ms=10_000,
                             session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
    with open(out, "w") as lines:
        while True:
            for records in consumer.poll(timeout_ms=100).values():
                now = time.time() * 1000
                for record in records:
                    lines.write(f"{json.loads(record.value)['tx_id']} {now}\n")
                lines.flush()


@dataclass
class Floor:
    """The raw produce-to-poll run: latencies (ms, ascending), the producer's share, CPU per payment of each party."""

    polled: list[float]
    paced: Paced
    reader_cpu_us: float
    broker_cpu_us: float | None  # the embedded broker's (None with --bootstrap)
    load: str


def raw_latency(bootstrap: str, rate: int, seconds: float, accounts: int, drain_s: float) -> Floor:
    """Produce-to-poll latencies (ms) of a plain kafka-python consumer in its own process, at the same rate and
    fetch wait as the engine's latency run: the broker's and client's share of payment-to-alert latency."""
    topic, values = latency_payments(bootstrap, rate, seconds, accounts)
    out = Path(tempfile.mkdtemp(prefix="ringwatch-bench-")) / "received.txt"
    reader = multiprocessing.get_context("fork").Process(
        target=_receive, args=(bootstrap, topic, fetch_wait_ms(), str(out)), daemon=True)
    reader.start()
    broker = broker_pid()
    cpu_at_start: list[float] = []

    def received() -> dict[str, float]:
        text = out.read_text() if out.exists() else ""
        return {tx_id: float(at) for tx_id, at in (line.split() for line in text.splitlines() if " " in line)}

    def ready() -> bool:
        if not received():
            return False
        cpu_at_start.extend([tree_cpu_s(reader.pid), tree_cpu_s(broker) if broker else 0.0])
        return True

    try:
        paced = produce_paced(bootstrap, topic, values, rate, ready)
        cpu = [tree_cpu_s(reader.pid), tree_cpu_s(broker) if broker else 0.0]
        load = load_average()
        deadline = time.monotonic() + drain_s
        while len(got := received()) < len(values) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        reader.kill()
    reader_cpu, broker_cpu = ((end - start) / len(paced.produced_at) * 1e6 for start, end in zip(cpu_at_start, cpu))
    return Floor(sorted(got[tx_id] - at for tx_id, at in paced.produced_at.items() if tx_id in got), paced,
                 reader_cpu, broker_cpu if broker else None, load)


def fetch_wait_ms() -> int:
    """The consumer fetch wait the engine uses by default (stream/engine_setup.py)."""
    return max(MIN_FETCH_WAIT_MS, Config().engine.batch_max_delay_ms)


def broker_pid() -> int | None:
    """The embedded Tansu broker's process (a child of this one), for its CPU; None with --bootstrap."""
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as children:
        for pid in children.read().split():
            try:
                with open(f"/proc/{pid}/comm") as comm:
                    if comm.read().startswith("tansu"):
                        return int(pid)
            except FileNotFoundError:
                continue
    return None


@dataclass
class Live:
    """One placement's latency run: alert latencies from the closing payment's hand-over to the producer and,
    inside the engine, from the poll that returned it (ms, ascending); the producer's run; the engine's CPU per
    payment meanwhile (with its runtime's workers); the share consumed when it was stopped; the load average."""

    latencies: list[float]
    inside: list[float]
    paced: Paced
    engine_cpu_us: float
    share: float
    load: str


def latency_run(bootstrap: str, rate: int, seconds: float, accounts: int, window: str, drain_s: float,
                *extra: str) -> Live:
    """The engine on a live stream at `rate`: it gets `drain_s` after the last payment is produced (one that
    cannot keep up falls further behind, and its latencies say how far)."""
    topic, values = latency_payments(bootstrap, rate, seconds, accounts)
    total = len(values)
    engine = Engine(bootstrap, topic, f"bench-{time.time_ns()}", window, *extra)
    cpu_at_start: list[float] = []

    def ready() -> bool:  # timed from the moment the engine has joined its group and consumed the first payment
        if engine.consumed() < 1:
            return False
        cpu_at_start.append(tree_cpu_s(engine.process.pid))
        return True

    try:
        paced = produce_paced(bootstrap, topic, values, rate, ready)
        load = load_average()
        deadline = time.monotonic() + drain_s
        while (consumed_now := engine.consumed()) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        engine_cpu = (tree_cpu_s(engine.process.pid) - cpu_at_start[0]) / max(1.0, consumed_now - 1) * 1e6
    finally:
        engine.stop()
    latencies, inside = [], []
    alerts_path = engine.workdir / "alerts.jsonl"
    for line in alerts_path.read_text().splitlines() if alerts_path.exists() else []:
        alert = json.loads(line)
        if alert["trigger_tx_id"] in paced.produced_at:
            latencies.append(alert["detected_at"] - paced.produced_at[alert["trigger_tx_id"]])
            inside.append(alert["latency_ms"])
    return Live(sorted(latencies), sorted(inside), paced, engine_cpu, min(1.0, consumed_now / total), load)


def scale_out(bootstrap: str, topic: str, expected: int, window: str, budget_s: float,
              workers: int = 2) -> dict[str, float]:
    """Group tx/s of 1 and of 2 engines sharing one graph on a one-node ringwatch cluster of `workers` workers."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="ringwatch-scale-") as work:
        redis_server = RedisServer(Path(work) / "redis").start()
        cluster = Cluster(redis_server.url, f"bench-{time.time_ns()}")
        try:
            cluster.start_node("node-1", workers=workers)
            env = {"RINGWATCH_TOKEN": TOKEN}
            for count in (1, 2):
                group = f"scale-{count}-{time.time_ns()}"
                engines = [Engine(bootstrap, topic, group, window, "--address", redis_server.url,
                                  "--namespace", cluster.namespace, env=env) for _ in range(count)]
                label = f"{count} engine{'s' if count > 1 else ''}"
                results[f"{label}, group tx/s"], results[f"{label}, CPU us per payment"] = group_throughput(
                    engines, expected, budget_s)
        finally:
            cluster.stop()
            redis_server.stop()
    results["2 engines / 1 engine"] = results["2 engines, group tx/s"] / results["1 engine, group tx/s"]
    return results


class Row(dict):
    """One backend's measures; each is printed as soon as it is known (a long run shows its progress)."""

    def __setitem__(self, measure: str, value: float) -> None:
        super().__setitem__(measure, value)
        print(f"  {measure}: {value:,.2f}", flush=True)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    args = parse_args()
    Engine.extra_args = shlex.split(args.engine_args)
    backends = args.backends.split(",")
    placements = args.placements.split(",")
    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or broker.bootstrap
    results: dict[str, dict[str, float]] = {}
    scaled: dict[str, float] = {}
    loads: dict[str, str] = {}
    # the engines load the compiled kernel from numba's cache; a kernel changed since is compiled here, not in
    # the middle of a measured run
    print(f"graph kernel ready in {warm_up():.1f} s", flush=True)
    load_at_start = load_average()
    try:
        floor_rows: dict[str, float] = {}
        if not args.latency_only:
            topic = f"payments-{time.time_ns()}"
            create_topic(bootstrap, topic)
            stream = generate(SyntheticConfig(n_transactions=args.transactions, n_accounts=args.accounts, days=10,
                                              n_rings=50, seed=7))
            print(f"producing {args.transactions:,} transactions to {topic} ...", flush=True)
            produce_transactions(bootstrap, topic, stream.transactions, timeout_s=600)
            raw, raw_cpu = raw_consume(bootstrap, topic, args.transactions)
            graph_rate, graph_cpu = raw_graph(stream.transactions, args.window)
            print(f"  raw consume {raw:,.0f} tx/s ({raw_cpu:.1f} us CPU each), raw graph {graph_rate:,.0f} tx/s "
                  f"({graph_cpu:.1f} us CPU each)", flush=True)
            floor_rows = {"raw kafka-python consume + JSON decode, tx/s": raw,
                          "raw graph: LocalRingGraph.process in memory, tx/s": graph_rate,
                          "raw consume, CPU us per message": raw_cpu, "raw graph, CPU us per payment": graph_cpu}
        floor = raw_latency(bootstrap, args.rate, args.latency_seconds, args.accounts, args.budget)
        loads["raw produce-to-poll run"] = floor.load
        floor_rows.update({
            "raw produce-to-poll: offered rate really achieved, tx/s": floor.paced.offered,
            "raw produce-to-poll latency p50, ms": percentile(floor.polled, 0.50),
            "raw produce-to-poll latency p99, ms": percentile(floor.polled, 0.99),
            "  of which hand-over to broker ack p50, ms": percentile(floor.paced.acked, 0.50),
            "  of which hand-over to broker ack p99, ms": percentile(floor.paced.acked, 0.99),
            "  CPU us per payment: producer (this process)": floor.paced.cpu_us,
            "  CPU us per payment: plain consumer": floor.reader_cpu_us,
            **({"  CPU us per payment: embedded broker (Tansu)": floor.broker_cpu_us}
               if floor.broker_cpu_us is not None else {}),
        })
        for measure, value in floor_rows.items():
            if "produce-to-poll" in measure or measure.startswith("  "):
                print(f"  {measure}: {value:,.2f}", flush=True)
        print(f"  load average during the raw produce-to-poll run: {floor.load}", flush=True)
        for backend in backends:
            row = results[backend] = Row()
            for placement in placements if not args.latency_only else ():
                engine = Engine(bootstrap, topic, f"bench-{time.time_ns()}", args.window, "--backend", backend,
                                "--placement", placement)
                rate, cpu = group_throughput([engine], args.transactions, args.budget)
                row[f"ringwatch run ({placement}), tx/s"] = rate
                row[f"ratio engine ({placement}) / raw consume"] = rate / raw
                row[f"ratio engine ({placement}) / raw graph"] = rate / graph_rate
                row[f"ringwatch run ({placement}), CPU us per payment"] = cpu
                row[f"CPU ratio raw consume / engine ({placement})"] = raw_cpu / cpu
                row[f"CPU ratio raw graph / engine ({placement})"] = graph_cpu / cpu
            for placement in placements:
                live = latency_run(bootstrap, args.rate, args.latency_seconds, args.accounts, args.window,
                                   args.budget, "--backend", backend, "--placement", placement)
                loads[f"latency run ({placement}, {backend})"] = live.load
                row[f"offered rate really achieved ({placement}), tx/s"] = live.paced.offered
                row[f"share consumed {args.budget:.0f} s after the last ({placement})"] = live.share
                row[f"alert latency p50 ({placement}), ms"] = percentile(live.latencies, 0.50)
                row[f"alert latency p99 ({placement}), ms"] = percentile(live.latencies, 0.99)
                row[f"  of which in the engine, p50 ({placement}), ms"] = percentile(live.inside, 0.50)
                row[f"  of which in the engine, p99 ({placement}), ms"] = percentile(live.inside, 0.99)
                row[f"  hand-over to broker ack p99 ({placement}), ms"] = percentile(live.paced.acked, 0.99)
                row[f"engine CPU us per payment, live ({placement})"] = live.engine_cpu_us
                row[f"alerts in the latency run ({placement})"] = len(live.latencies)
                print(f"  load average during the latency run ({placement}): {live.load}", flush=True)
        if not (args.no_scale_out or args.latency_only):
            scaled = scale_out(bootstrap, topic, args.transactions, args.window, args.budget)
    finally:
        if broker is not None:
            broker.stop()
    print(f"\n{os.cpu_count()} cores, load average (1/5/15 min) {load_at_start} at the start, {load_average()} at the end;"
          f" latency runs offered {args.rate:,} tx/s")
    for run, load in loads.items():
        print(f"load average at the end of the {run}'s production: {load}")
    print(f"\n{'measure':<52}" + "".join(f" {backend:>12}" for backend in backends))
    for measure, value in floor_rows.items():
        print(f"{measure:<52}" + f" {value:>12,.1f}" * len(backends))
    for measure in results[backends[0]]:
        print(f"{measure:<52}" + "".join(f" {results[b][measure]:>12,.2f}" for b in backends))
    if scaled:
        print(f"\nscale-out on a one-node ringwatch cluster, {os.cpu_count()} cores (shard actors shared by the group)")
        for measure, value in scaled.items():
            print(f"{measure:<52} {value:>12,.2f}")


if __name__ == "__main__":
    main()
