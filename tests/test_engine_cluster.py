"""`ringwatch run --address redis://...`: the engine's shard actors and search tasks on a 2-node cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.gcs import RedisGcs

from engine_harness import EngineProcess, create_topic, group_checkpoint, jsonl_ids, wait_until
from runtime_cluster import TOKEN, Cluster
from services import RedisServer

N_TRANSACTIONS = 5_000
N_RINGS = 8


def test_the_engine_runs_its_shards_on_cluster_nodes(kafka_bootstrap, unique_name, tmp_path):
    stream = generate(SyntheticConfig(n_transactions=N_TRANSACTIONS, n_accounts=1_000, n_rings=N_RINGS, seed=3))
    redis_server = RedisServer(tmp_path / "redis").start()
    cluster = Cluster(redis_server.url, "default")
    engine = None
    try:
        cluster.start_node("node-1", workers=1)
        cluster.start_node("node-2", workers=1)
        create_topic(kafka_bootstrap, unique_name, 1)
        assert produce_transactions(kafka_bootstrap, unique_name, stream.transactions) == N_TRANSACTIONS
        state_dir, alerts_file = tmp_path / "state", tmp_path / "alerts.jsonl"
        engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                                "--group", f"{unique_name}-engine", "--state-dir", str(state_dir),
                                "--alerts-file", str(alerts_file), "--checkpoint-interval", "1s",
                                "--window", "7d", "--address", redis_server.url],
                               tmp_path / "engine.log", env={"RINGWATCH_TOKEN": TOKEN}).start()

        group = f"{unique_name}-engine"

        def checkpointed() -> int:
            checkpoint = group_checkpoint(redis_server.url, "default", group, TOKEN)
            return checkpoint.transactions if checkpoint else 0

        wait_until(lambda: checkpointed() == N_TRANSACTIONS or not engine.alive(), 180,
                   "a checkpoint (in the GCS) covering every produced transaction")
        assert engine.alive(), engine.log()
        status = ringwatch_status(redis_server.url, "--json")
        (listed,) = [g for g in json.loads(status)["engines"] if g["group"] == group]
        assert listed["checkpoints"] and all(c["age_s"] >= 0 and c["shards"] == 2 for c in listed["checkpoints"])
        assert [e["transactions"] for e in listed["engines"]] == [N_TRANSACTIONS]
        assert listed["engines"][0]["live"] and listed["engines"][0]["low_watermark"] is not None
        assert f"consumer group {group}: epoch {listed['checkpoints'][-1]['epoch']}" in ringwatch_status(
            redis_server.url)
        gcs = RedisGcs(redis_server.url, "default", keys=ClusterKeys.from_token(TOKEN))
        shards = [a for a in gcs.actors() if a.get("class_name") == "GraphShard" and a.get("state") == "alive"]
        gcs.close()
        assert engine.terminate() == 0, engine.log()

        assert shards and {a["node"] for a in shards} <= {"node-1", "node-2"}
        alerts = [json.loads(line) for line in alerts_file.read_text().splitlines()]
        found = {(a["trigger_tx_id"], tuple(sorted(a["accounts"]))) for a in alerts}
        assert all((ring.tx_ids[-1], tuple(sorted(ring.accounts))) in found for ring in stream.rings)
        ids = jsonl_ids(alerts_file)
        assert len(ids) == len(set(ids))
    finally:
        if engine is not None:
            engine.ensure_stopped()
        cluster.stop()
        redis_server.stop()


def ringwatch_status(address: str, *extra: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "status", "--address", address, *extra],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RINGWATCH_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr
    return done.stdout
