"""The engine leaves the objects start-up made out of garbage collection (`gc.freeze`): a full collection
walked them all, about half a second with the process stopped, every few seconds at 20k payments/s."""

from __future__ import annotations

import gc
import json
import time

from engine_harness import EngineThread, wait_until
from ringwatch.connectors import FileSource
from ringwatch.graph import Transaction
from ringwatch.stream import Config
from ringwatch.stream.config import EngineConfig, GraphConfig, SinksConfig, SourceConfig

DEADLINE_S = 120.0
PAYMENTS = 200


def test_start_up_objects_are_frozen_before_the_first_batch(tmp_path):
    start = int(time.time() * 1000) - 86_400_000
    path = tmp_path / "payments.jsonl"
    path.write_text("".join(json.dumps(Transaction(f"t{i}", f"a{i % 11}", f"a{(i * 7 + 3) % 11}", "10",
                                                   start + 1_000 * i).to_dict()) + "\n" for i in range(PAYMENTS)))
    config = Config(source=SourceConfig(topics=["file"]), graph=GraphConfig(placement="in-process"),
                    engine=EngineConfig(state_dir=str(tmp_path / "state")),
                    sinks=SinksConfig(alerts_file=str(tmp_path / "alerts.jsonl"))).validate()
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    running = EngineThread(config, FileSource(path)).start()
    try:
        wait_until(lambda: running.engine.transactions == PAYMENTS or running.failures, DEADLINE_S,
                   "every payment consumed")
        frozen = gc.get_freeze_count()
    finally:
        running.stop(DEADLINE_S)
        gc.unfreeze()
    assert not running.failures, running.failures
    assert frozen > 0
