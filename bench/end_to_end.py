"""End-to-end benchmark: `ringwatch run` against raw kafka-python consumption of the same topic.

In one run, on one embedded Tansu broker (or --bootstrap for Apache Kafka):
(a) a plain kafka-python consumer group reads the topic and decodes each JSON
    message, nothing else: the baseline;
(b) `ringwatch run` consumes the same topic in a fresh group until every
    message is processed (its own counter on /metrics), delivering alerts to a
    file; throughput and its ratio to (a);
(c) latency at a fixed offered rate: the engine is started first, payments are
    produced at --rate tx/s, and each alert's latency is its `detected_at` minus
    the time its closing payment was produced (p50/p99).

    python bench/end_to_end.py                      # 500k transactions, 5,000 tx/s
    python bench/end_to_end.py --transactions 100000 --latency-seconds 20
    python bench/end_to_end.py --backends ringwatch,ray   # the same run on ringwatch's runtime and on Ray
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from ringwatch.connectors import EmbeddedBroker, SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port

PARTITIONS = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", type=int, default=500_000)
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5_000, help="offered rate for the latency run, tx/s")
    parser.add_argument("--latency-seconds", type=float, default=30.0, help="length of the latency run")
    parser.add_argument("--bootstrap", help="an existing Kafka (default: start an embedded Tansu broker)")
    parser.add_argument("--window", default="48h")
    parser.add_argument("--backends", default="ringwatch",
                        help="runtimes to run the engine on, side by side: ringwatch, ray (a local Ray per engine)")
    return parser.parse_args()


def create_topic(bootstrap: str, topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        admin.close()


def raw_consume(bootstrap: str, topic: str, expected: int) -> float:
    """tx/s of a kafka-python group that only decodes JSON."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{time.time_ns()}",
                             auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000,
                             max_poll_interval_ms=10_000, session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
    seen, started = 0, None
    deadline = time.monotonic() + 600
    try:
        while seen < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                if started is None:
                    started = time.perf_counter()
                for record in records:
                    json.loads(record.value)
                seen += len(records)
        return seen / (time.perf_counter() - started)
    finally:
        consumer.close()


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


def start_engine(bootstrap: str, topic: str, workdir: Path, metrics_port: int, window: str,
                 backend: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "ringwatch.stream.cli", "run", "--kafka-bootstrap", bootstrap, "--topic", topic,
            "--group", f"bench-{time.time_ns()}", "--state-dir", str(workdir / "state"),
            "--alerts-file", str(workdir / "alerts.jsonl"), "--metrics-port", str(metrics_port),
            "--window", window, "--checkpoint-interval", "10s", "--backend", backend]
    log = open(workdir / "engine.log", "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_engine(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def engine_throughput(bootstrap: str, topic: str, expected: int, window: str, backend: str) -> tuple[float, float]:
    """(tx/s from the first message consumed, tx/s including start-up) of `ringwatch run`."""
    workdir = Path(tempfile.mkdtemp(prefix="ringwatch-bench-"))
    port = free_port()
    launched = time.perf_counter()
    engine = start_engine(bootstrap, topic, workdir, port, window, backend)
    try:
        first = None
        while True:
            count = consumed(port)
            if count > 0 and first is None:
                first = (time.perf_counter(), count)
            if count >= expected:
                done = time.perf_counter()
                break
            if engine.poll() is not None:
                raise RuntimeError(f"the engine exited; see {workdir / 'engine.log'}")
            time.sleep(0.2)
    finally:
        stop_engine(engine)
    return (expected - first[1]) / (done - first[0]), expected / (done - launched)


def latency_run(bootstrap: str, rate: int, seconds: float, accounts: int, window: str, backend: str) -> list[float]:
    """Alert latencies (ms) from the closing payment's production to the alert, at `rate` tx/s."""
    topic = f"latency-{time.time_ns()}"
    create_topic(bootstrap, topic)
    total = int(rate * seconds)
    stream = generate(SyntheticConfig(n_transactions=total, n_accounts=accounts, days=max(2.0, seconds / 8640),
                                      n_rings=max(20, total // 2000), seed=11))
    workdir = Path(tempfile.mkdtemp(prefix="ringwatch-latency-"))
    port = free_port()
    engine = start_engine(bootstrap, topic, workdir, port, window, backend)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    warm_up = stream.transactions[0]  # timed from the moment the engine has joined its group and consumed it
    producer.send(topic, key=warm_up.src.encode(), value=json.dumps(warm_up.to_dict()).encode()).get(timeout=60)
    while consumed(port) < 1:
        if engine.poll() is not None:
            raise RuntimeError(f"the engine exited; see {workdir / 'engine.log'}")
        time.sleep(0.2)
    produced_at: dict[str, float] = {}
    started = time.perf_counter()
    for i, tx in enumerate(stream.transactions[1:]):
        target = started + i / rate
        pause = target - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        produced_at[tx.tx_id] = time.time() * 1000
        producer.send(topic, key=tx.src.encode(), value=json.dumps(tx.to_dict()).encode())
    producer.flush()
    producer.close()
    try:
        deadline = time.monotonic() + 600
        while consumed(port) < total:
            if engine.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the engine stopped or stalled short of {total:,} payments; "
                                   f"see {workdir / 'engine.log'}")
            time.sleep(0.2)
    finally:
        stop_engine(engine)
    latencies = []
    alerts_path = workdir / "alerts.jsonl"
    for line in alerts_path.read_text().splitlines() if alerts_path.exists() else []:
        alert = json.loads(line)
        if alert["trigger_tx_id"] in produced_at:
            latencies.append(alert["detected_at"] - produced_at[alert["trigger_tx_id"]])
    return sorted(latencies)


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    args = parse_args()
    backends = args.backends.split(",")
    broker = None if args.bootstrap else EmbeddedBroker().start()
    bootstrap = args.bootstrap or broker.bootstrap
    results: dict[str, dict[str, float]] = {}
    try:
        topic = f"payments-{time.time_ns()}"
        create_topic(bootstrap, topic)
        stream = generate(SyntheticConfig(n_transactions=args.transactions, n_accounts=args.accounts, days=10,
                                          n_rings=50, seed=7))
        print(f"producing {args.transactions:,} transactions to {topic} ...", flush=True)
        produce_transactions(bootstrap, topic, stream.transactions, timeout_s=600)
        raw = raw_consume(bootstrap, topic, args.transactions)
        for backend in backends:
            engine, engine_with_startup = engine_throughput(bootstrap, topic, args.transactions, args.window, backend)
            latencies = latency_run(bootstrap, args.rate, args.latency_seconds, args.accounts, args.window, backend)
            results[backend] = {
                "ringwatch run, tx/s (steady)": engine,
                "ringwatch run, tx/s (incl. start-up)": engine_with_startup,
                "ratio engine / raw (steady)": engine / raw,
                f"alert latency p50 at {args.rate:,} tx/s, ms": percentile(latencies, 0.50),
                f"alert latency p99 at {args.rate:,} tx/s, ms": percentile(latencies, 0.99),
                "alerts in the latency run": len(latencies),
            }
    finally:
        if broker is not None:
            broker.stop()
    print(f"\n{'measure':<44}" + "".join(f" {backend:>12}" for backend in backends))
    print(f"{'raw kafka-python consume + JSON decode, tx/s':<44}" + f" {raw:>12,.0f}" * len(backends))
    for measure in results[backends[0]]:
        print(f"{measure:<44}" + "".join(f" {results[b][measure]:>12,.2f}" for b in backends))


if __name__ == "__main__":
    main()
