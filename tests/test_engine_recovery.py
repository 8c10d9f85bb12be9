"""The engine SIGKILLed mid-stream and started again: every ring delivered, no transaction lost.

Delivery is checked against what the sinks document: the JSONL file holds each
alert once; the webhook delivers each alert once except for the one window it
documents (an alert the receiver acknowledged just before the crash, not yet
recorded as settled, is sent again with the same `webhook-id`). The sender
posts one alert at a time, so one SIGKILL can repeat at most one alert.
"""

from __future__ import annotations

import json

import pytest

from engine_harness import (
    SECRET,
    EngineProcess,
    checkpointed_transactions,
    create_topic,
    jsonl_ids,
    wait_until,
)
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.stream import FileCheckpointRecords

N_TRANSACTIONS = 20_000
N_RINGS = 20
DEADLINE_S = 180.0


@pytest.mark.parametrize("placement", ["actors", "in-process"])
def test_sigkill_mid_stream_then_restart_delivers_every_ring_once(kafka_bootstrap, unique_name, tmp_path,
                                                                  receiver, engines, placement):
    stream = generate(SyntheticConfig(n_transactions=N_TRANSACTIONS, n_accounts=4_000, n_rings=N_RINGS, seed=11))
    transactions = stream.transactions
    half = N_TRANSACTIONS // 2
    create_topic(kafka_bootstrap, unique_name, 1)
    produce_transactions(kafka_bootstrap, unique_name, transactions[:half])
    state_dir, alerts_file = tmp_path / "state", tmp_path / "alerts.jsonl"
    args = ["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name, "--group", f"{unique_name}-engine",
            "--state-dir", str(state_dir), "--webhook-url", receiver.url, "--alerts-file", str(alerts_file),
            "--checkpoint-interval", "2s", "--batch-max-size", "64", "--placement", placement]
    env = {"RINGWATCH_WEBHOOK_SECRET": SECRET}

    first = EngineProcess(args, tmp_path / "first.log", env).start()
    engines.append(first)
    wait_until(lambda: checkpointed_transactions(state_dir) == half or not first.alive(), DEADLINE_S,
               "a checkpoint covering the first half")
    assert first.alive(), first.log()
    produce_transactions(kafka_bootstrap, unique_name, transactions[half:])
    second_half = set(t.tx_id for t in transactions[half:])
    wait_until(lambda: len(jsonl_ids(alerts_file)) > 0 and any(
        json.loads(line)["trigger_tx_id"] in second_half for line in alerts_file.read_text().splitlines()),
        DEADLINE_S, "an alert raised by the second half")
    first.kill()
    killed_at = checkpointed_transactions(state_dir)

    second = EngineProcess(args, tmp_path / "second.log", env).start()
    engines.append(second)
    wait_until(lambda: checkpointed_transactions(state_dir) == N_TRANSACTIONS or not second.alive(), DEADLINE_S,
               "a checkpoint covering every transaction after the restart")
    assert second.alive(), second.log()
    assert "restored checkpoint" in second.log()
    wait_until(lambda: receiver.delivered_rings(stream.rings) == N_RINGS, DEADLINE_S, "every injected ring")
    assert second.terminate() == 0, second.log()

    assert half <= killed_at <= N_TRANSACTIONS
    assert receiver.bad_signatures == 0
    repeated = [(alert_id, count) for alert_id, count in receiver.accepted.items() if count > 1]
    assert len(repeated) <= 1 and all(count == 2 for _, count in repeated), (
        f"more than the one alert the webhook's documented crash window allows was delivered twice: {repeated}")
    file_ids = jsonl_ids(alerts_file)
    assert len(file_ids) == len(set(file_ids)), "an alert was written to the file twice"
    wait_until(lambda: set(receiver.accepted) == set(file_ids), 30, "the webhook to catch up with the file")
    final = FileCheckpointRecords(state_dir).latest()
    assert final.transactions == N_TRANSACTIONS
    assert final.graph["next_seq"] == N_TRANSACTIONS, "a transaction was lost or counted twice in the graph"
