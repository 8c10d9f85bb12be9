"""The alert history: on disk, newest first, each alert id once, and still there after the engine restarts."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading

from engine_harness import EngineProcess, checkpointed_transactions, create_topic, jsonl_ids, wait_until
from ringwatch.connectors import SyntheticConfig, generate, produce_transactions
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.graph import Alert, Transaction, alert_id
from ringwatch.stream import AlertHistory, Client, EngineUnreachableError

DEADLINE_S = 120.0


def make_alert(i: int, accounts: tuple[str, ...] | None = None, detected_at: int | None = None) -> Alert:
    accounts = accounts or (f"a{i}", f"b{i}", f"c{i}")
    return Alert(alert_id=alert_id(f"tx{i}", accounts), trigger_tx_id=f"tx{i}", accounts=accounts,
                 tx_ids=tuple(f"p{i}-{k}" for k in range(len(accounts))), hops=len(accounts), total_amount=100 + i,
                 first_ts=1_000 * i, last_ts=1_000 * i + 500, detected_at=detected_at or 10_000 + i, latency_ms=2.0)


def test_alerts_come_back_newest_first_after_reopening_each_id_once(tmp_path):
    alerts = [make_alert(i) for i in range(20)]
    history = AlertHistory(tmp_path / "h.sqlite3")
    history.deliver(alerts[:12])
    history.deliver(alerts[5:])  # a replay re-raises alerts already recorded: ignored, not moved
    history.close()

    reopened = AlertHistory(tmp_path / "h.sqlite3")
    try:
        assert reopened.recent(limit=100) == alerts[::-1]
        assert len(reopened) == 20
        assert reopened.recent(limit=3) == alerts[:-4:-1]
    finally:
        reopened.close()


def test_filters_by_account_and_moment(tmp_path):
    shared = ("hub", "x", "y")
    alerts = [make_alert(i, shared if i % 3 == 0 else None, detected_at=50_000 + i) for i in range(12)]
    history = AlertHistory(tmp_path / "h.sqlite3")
    try:
        history.deliver(alerts)
        through_hub = [a for a in alerts if "hub" in a.accounts][::-1]
        assert history.recent(account="hub") == through_hub
        assert history.ids_through("hub") == [a.alert_id for a in through_hub]
        assert history.recent(account="nobody") == [] and history.ids_through("nobody") == []
        assert history.recent(since=50_008) == alerts[8:][::-1]
        assert history.recent(since=50_008, account="hub") == [alerts[9]]
    finally:
        history.close()


def test_the_oldest_alerts_beyond_keep_are_dropped(tmp_path):
    alerts = [make_alert(i) for i in range(1_000)]
    history = AlertHistory(tmp_path / "h.sqlite3", keep=100)
    try:
        for start in range(0, len(alerts), 50):
            history.deliver(alerts[start:start + 50])
        assert history.recent(limit=10_000) == alerts[:-101:-1]
        assert history.ids_through(alerts[0].accounts[0]) == []
    finally:
        history.close()


def test_readers_on_other_threads_see_a_consistent_prefix_while_the_engine_writes(tmp_path):
    alerts = [make_alert(i) for i in range(400)]
    history = AlertHistory(tmp_path / "h.sqlite3")
    seen: list[list[str]] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append([a.alert_id for a in history.recent(limit=1_000)])

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for start in range(0, len(alerts), 10):
            history.deliver(alerts[start:start + 10])
    finally:
        done.set()
        for reader in readers:
            reader.join()
    order = [a.alert_id for a in alerts]
    assert seen and all(view == order[:len(view)][::-1] for view in seen)
    history.close()


# ---- a real engine, restarted ------------------------------------------------------------------------


def _consumed(client: Client) -> int:
    try:
        return client.health().transactions
    except EngineUnreachableError:
        return -1


def test_alert_queries_remember_every_alert_after_the_engine_is_killed_and_restarted(kafka_bootstrap, unique_name,
                                                                                       tmp_path, engines):
    stream = generate(SyntheticConfig(n_transactions=2_000, n_accounts=500, n_rings=6, days=3, seed=21))
    create_topic(kafka_bootstrap, unique_name, 1)
    produce_transactions(kafka_bootstrap, unique_name, stream.transactions)
    token, port = secrets.token_hex(16), free_port()
    args = ["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name, "--group", f"{unique_name}-g",
            "--state-dir", str(tmp_path / "state"), "--alerts-file", str(tmp_path / "alerts.jsonl"),
            "--query-port", str(port), "--checkpoint-interval", "1s"]
    env = {"RINGWATCH_QUERY_TOKEN": token}
    client = Client(f"127.0.0.1:{port}", token=token)
    try:
        first = EngineProcess(args, tmp_path / "engine-1.log", env=env).start()
        engines.append(first)
        wait_until(lambda: not first.alive() or checkpointed_transactions(tmp_path / "state") == len(stream),
                   DEADLINE_S, "a checkpoint covering every payment: the restart replays none of them")
        before = [a.alert_id for a in client.alerts(limit=10_000)]
        assert before and before == jsonl_ids(tmp_path / "alerts.jsonl")[::-1]
        first.kill()  # SIGKILL: nothing is closed cleanly

        second = EngineProcess(args, tmp_path / "engine-2.log", env=env).start()
        engines.append(second)
        wait_until(lambda: not second.alive() or _consumed(client) == len(stream), DEADLINE_S,
                   "the restarted engine to restore its checkpoint")
        assert second.alive(), second.log()
        assert [a.alert_id for a in client.alerts(limit=10_000)] == before  # kept on disk, not raised again

        a, b = "RW-NEW-1", "RW-NEW-2"  # a new 2-hop ring after the stream, raised by the restarted engine
        last = int(stream.ts[-1])
        produce_transactions(kafka_bootstrap, unique_name, [Transaction("late-1", a, b, 700, last + 60_000),
                                                            Transaction("late-2", b, a, 690, last + 120_000)])
        wait_until(lambda: _consumed(client) == len(stream) + 2, DEADLINE_S, "the two new payments")
        # Alerts are handed to the sinks (the history among them) while the next batch runs: wait for it.
        wait_until(lambda: len(client.alerts(limit=10_000)) > len(before), DEADLINE_S, "the new ring's alert")
        newest, *rest = client.alerts(limit=10_000)
        assert newest.trigger_tx_id == "late-2" and [x.alert_id for x in rest] == before
        assert newest.alert_id in client.account(a).alert_ids

        cli = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "query", "alerts", "--address",
                              f"127.0.0.1:{port}", "--limit", "10000", "--json"], capture_output=True, text=True,
                             timeout=60, env={**os.environ, **env})
        assert [x["alert_id"] for x in json.loads(cli.stdout)] == [newest.alert_id, *before]
        assert second.terminate() == 0, second.log()
    finally:
        client.close()
