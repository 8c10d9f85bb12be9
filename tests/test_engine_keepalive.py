"""A batch that waits on its shard actors longer than the group's `max_poll_interval_ms` keeps the engine in
its consumer group.

kafka-python drops a member that does not poll for `max_poll_interval_ms`
(10 s in `KafkaSource`); its partitions go to another member, which repeats
the alerts of the batch in flight. Shards are made slow deterministically:
the worker processes of the engine's runtime (where the shard actors live)
are SIGSTOPped while payments arrive, so the batch waits for them until the
test sends SIGCONT, well after the poll interval. The engine says so in its
log (every 5 s a batch spends in the graph); meanwhile it must go on polling
(the next batch, or without reading), and afterwards it has never left the
group, and every ring arrives once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from engine_harness import SECRET, EngineProcess, create_topic, wait_until
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.stream import detect

DEADLINE_S = 180.0
LEFT_GROUP = ("poll timeout has expired", "partitions revoked", "lost membership")


def children(pid: int) -> list[int]:
    """The processes `pid` started (its runtime's workers), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def test_a_batch_waiting_on_stopped_shards_keeps_the_engine_in_its_group(kafka_bootstrap, unique_name, tmp_path,
                                                                           receiver, engines):
    stream = generate(SyntheticConfig(n_transactions=4_000, n_accounts=1_000, n_rings=10, days=6, seed=43))
    payments = stream.transactions
    half = len(payments) // 2
    expected = {alert.alert_id for alert in detect(payments, use_runtime=False)}
    first_half = {alert.alert_id for alert in detect(payments[:half], use_runtime=False)}
    create_topic(kafka_bootstrap, unique_name, 2)
    produce_transactions(kafka_bootstrap, unique_name, payments[:half])
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                            "--group", f"{unique_name}-engine", "--state-dir", str(tmp_path / "state"),
                            "--webhook-url", receiver.url, "--checkpoint-interval", "1s", "--placement", "actors"],
                           tmp_path / "engine.log", env={"RINGWATCH_WEBHOOK_SECRET": SECRET}).start()
    engines.append(engine)
    wait_until(lambda: set(receiver.accepted) >= first_half or not engine.alive(), DEADLINE_S,
               "the first half's rings")
    assert engine.alive(), engine.log()

    workers = children(engine.process.pid)
    assert workers, "the engine's runtime started no worker process"
    mark = len(engine.log())
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        produce_transactions(kafka_bootstrap, unique_name, payments[half:])
        # 15 s in the graph is past max_poll_interval_ms (10 s); an engine that stops polling leaves the group
        wait_until(lambda: "in the graph for 15 s" in engine.log()[mark:]
                   or any(sign in engine.log()[mark:] for sign in LEFT_GROUP) or not engine.alive(), DEADLINE_S,
                   "a batch 15 s in the stopped shards (or the engine leaving its group)")
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: set(receiver.accepted) >= expected or not engine.alive(), DEADLINE_S, "every ring")
    during = engine.log()[mark:]
    assert engine.terminate() == 0, engine.log()
    assert not [sign for sign in LEFT_GROUP if sign in during], during
    assert "in the graph for 15 s" in during, during
    receiver.assert_each_once(expected)
