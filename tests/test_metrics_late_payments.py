"""`ringwatch_late_payments_total`: the payments that reached the graph after a newer one had been applied (the
late search path), counted once each, with the graph in process and over shard actors."""

from __future__ import annotations

import json
import time

import pytest

from engine_harness import EngineThread, wait_until
from ringwatch.connectors import FileSource
from ringwatch.graph import Transaction
from ringwatch.stream import Config
from ringwatch.stream.config import EngineConfig, GraphConfig, SinksConfig, SourceConfig

DEADLINE_S = 120.0
PAYMENTS = 300
BATCH = 100
MOVED = (10, 11, 12)  # sent last: about 15 minutes older than payments applied before them (within lateness)


@pytest.mark.parametrize("placement", ["in-process", "actors"])
def test_payments_older_than_an_applied_one_are_counted_as_late(tmp_path, placement):
    start = int(time.time() * 1000) - 86_400_000
    payments = [Transaction(f"t{i}", f"a{i % 37}", f"a{(i * 7 + 3) % 37}", "10", start + 3_000 * i)
                for i in range(PAYMENTS)]
    order = [p for i, p in enumerate(payments) if i not in MOVED] + [payments[i] for i in MOVED]
    path = tmp_path / "payments.jsonl"
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in order))
    config = Config(source=SourceConfig(topics=["file"]), graph=GraphConfig(placement=placement),
                    engine=EngineConfig(state_dir=str(tmp_path / "state"), batch_max_size=BATCH),
                    sinks=SinksConfig(alerts_file=str(tmp_path / "alerts.jsonl"))).validate()
    running = EngineThread(config, FileSource(path)).start()
    engine = running.engine
    try:
        wait_until(lambda: engine.transactions == PAYMENTS or running.failures, DEADLINE_S, "every payment consumed")
    finally:
        running.stop(DEADLINE_S)
    assert not running.failures, running.failures
    assert engine.metrics.registry.get_sample_value("ringwatch_late_payments_total") == len(MOVED)
    assert engine.metrics.registry.get_sample_value("ringwatch_transactions_consumed_total") == PAYMENTS
