"""The multi-partition backlog a new user meets first: one engine, a 4-partition topic filled before it starts.

kafka-python drains a backlog one partition after another. With one watermark
for the whole stream, a partition drained early made the others' payments
`late` and most rings went missing. With per-partition watermarks (a partition
not fetched yet holds the low watermark back) the engine raises exactly the
alerts `ringwatch detect` raises on the same payments, and dead-letters none.
"""

from __future__ import annotations

import json

from engine_harness import EngineProcess, checkpointed_transactions, create_topic, jsonl_ids, scrape, wait_until
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.stream import detect

N_TRANSACTIONS = 12_000
DEADLINE_S = 240.0


def test_a_four_partition_backlog_raises_exactly_what_detect_raises(kafka_bootstrap, unique_name, tmp_path,
                                                                   engines):
    stream = generate(SyntheticConfig(n_transactions=N_TRANSACTIONS, n_accounts=2_500, n_rings=20, days=10,
                                      seed=17))
    create_topic(kafka_bootstrap, unique_name, 4)
    assert produce_transactions(kafka_bootstrap, unique_name, stream.transactions) == N_TRANSACTIONS  # by payer
    offline = detect(stream.transactions, use_runtime=False)
    expected = {alert.alert_id for alert in offline}
    assert {ring.tx_ids[-1] for ring in stream.rings} <= {alert.trigger_tx_id for alert in offline}

    state_dir, alerts_file, metrics_port = tmp_path / "state", tmp_path / "alerts.jsonl", free_port()
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                            "--group", f"{unique_name}-engine", "--state-dir", str(state_dir),
                            "--alerts-file", str(alerts_file), "--checkpoint-interval", "1s",
                            "--metrics-port", str(metrics_port)], tmp_path / "engine.log").start()
    engines.append(engine)
    wait_until(lambda: checkpointed_transactions(state_dir) == N_TRANSACTIONS or not engine.alive(), DEADLINE_S,
               "a checkpoint covering every payment")
    assert engine.alive(), engine.log()
    metrics = scrape(metrics_port)
    assert engine.terminate() == 0, engine.log()

    dead_letters = {labels: value for (name, labels), value in metrics.items() if name == "ringwatch_dead_letters_total"}
    assert dead_letters == {}, f"valid payments were dead-lettered: {dead_letters}"
    raised = jsonl_ids(alerts_file)
    assert len(raised) == len(set(raised))
    assert set(raised) == expected, (f"{len(set(raised) - expected)} alerts detect does not raise, "
                                     f"{len(expected - set(raised))} it raises are missing")
    triggers = {json.loads(line)["trigger_tx_id"] for line in alerts_file.read_text().splitlines()}
    assert {ring.tx_ids[-1] for ring in stream.rings} <= triggers
