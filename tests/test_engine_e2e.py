"""`ringwatch run` end to end: a real Tansu topic in, a real signature-checking webhook receiver out."""

from __future__ import annotations

import json

import pytest

from engine_harness import (
    SECRET,
    EngineProcess,
    Receiver,
    checkpointed_transactions,
    create_topic,
    jsonl_ids,
    read_topic,
    scrape,
    wait_until,
)
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.stream import Config

N_TRANSACTIONS = 20_000
N_RINGS = 20
DEADLINE_S = 180.0


@pytest.fixture(scope="module")
def stream():
    return generate(SyntheticConfig(n_transactions=N_TRANSACTIONS, n_accounts=4_000, n_rings=N_RINGS, seed=7))


def write_config(path, bootstrap: str, topic: str, state_dir, receiver: Receiver, alerts_file):
    """The deployment's TOML file; the test adds flags on top, and the secret comes from the environment."""
    path.write_text(f"""
[source]
kafka_bootstrap = "{bootstrap}"
topics = ["{topic}"]
group = "{topic}-engine"

[graph]
window = "7d"

[engine]
state_dir = "{state_dir}"
checkpoint_interval = "1s"

[sinks]
webhook_url = "{receiver.url}"
alerts_file = "{alerts_file}"
""")
    return path


def test_every_injected_ring_reaches_the_webhook_once(kafka_bootstrap, unique_name, tmp_path, stream, receiver,
                                                     engines):
    create_topic(kafka_bootstrap, unique_name, 1)
    assert produce_transactions(kafka_bootstrap, unique_name, stream.transactions) == N_TRANSACTIONS
    state_dir, alerts_file = tmp_path / "state", tmp_path / "alerts.jsonl"
    metrics_port = free_port()
    config = write_config(tmp_path / "ringwatch.toml", kafka_bootstrap, unique_name, state_dir, receiver, alerts_file)
    engine = EngineProcess(["--config", str(config), "--metrics-port", str(metrics_port),
                            "--alerts-topic", f"{unique_name}.alerts"],
                           tmp_path / "engine.log", env={"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()
    engines.append(engine)

    wait_until(lambda: checkpointed_transactions(state_dir) == N_TRANSACTIONS or not engine.alive(), DEADLINE_S,
               "a checkpoint covering every produced transaction")
    assert engine.alive(), engine.log()
    wait_until(lambda: receiver.delivered_rings(stream.rings) == N_RINGS, DEADLINE_S, "every injected ring")
    wait_until(lambda: len(receiver.accepted) == len(jsonl_ids(alerts_file)), 30, "the webhook to catch up")
    metrics = scrape(metrics_port)
    assert engine.terminate() == 0, engine.log()

    assert metrics[("ringwatch_transactions_consumed_total", ())] == N_TRANSACTIONS
    assert metrics[("ringwatch_batches_total", ())] >= N_TRANSACTIONS / Config().engine.batch_max_size
    raised = metrics[("ringwatch_alerts_raised_total", ())]
    assert raised == len(jsonl_ids(alerts_file))
    assert metrics[("ringwatch_alerts_total", (("outcome", "delivered"), ("sink", "webhook")))] == raised
    assert metrics[("ringwatch_alerts_total", (("outcome", "handed"), ("sink", "file")))] == raised
    assert metrics[("ringwatch_ingest_to_alert_seconds_count", ())] == raised
    assert metrics[("ringwatch_checkpoint_duration_seconds_count", ())] >= 1

    assert receiver.bad_signatures == 0
    assert all(count == 1 for count in receiver.accepted.values()), receiver.accepted.most_common(3)
    file_ids = jsonl_ids(alerts_file)
    assert len(file_ids) == len(set(file_ids))
    assert set(receiver.accepted) == set(file_ids)
    on_topic = read_topic(kafka_bootstrap, f"{unique_name}.alerts", len(file_ids))
    assert sorted(m.key.decode() for m in on_topic) == sorted(file_ids)
    assert all(json.loads(m.value)["alert_id"] == m.key.decode() for m in on_topic)
    assert checkpointed_transactions(state_dir) == N_TRANSACTIONS
