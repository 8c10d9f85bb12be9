"""`ringwatch demo` as a user runs it: a real subprocess, its files, its score checked against the truth."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from engine_harness import wait_until
from ringwatch.connectors import SyntheticConfig, generate
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.stream import Client, EngineUnreachableError
from ringwatch.stream.cli import build_parser
from ringwatch.stream.display import money, moment

DEMO = ["--transactions", "6000", "--accounts", "1500", "--rings", "12", "--seed", "3"]
COMMANDS = ("demo", "detect", "run", "node", "status", "query", "webhook", "generate")


def ringwatch(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("through", [[], ["--kafka"]], ids=["embedded", "kafka"])
def test_demo_finds_every_injected_ring_and_reports_its_score(tmp_path, through):
    result = ringwatch("demo", "--out", str(tmp_path), *DEMO, *through)
    assert result.returncode == 0, result.stderr
    stream = generate(SyntheticConfig(n_transactions=6000, n_accounts=1500, n_rings=12, seed=3))
    alerts = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    found = {(a["trigger_tx_id"], tuple(a["accounts"])) for a in alerts}
    assert all((ring.tx_ids[-1], ring.accounts) in found for ring in stream.rings)
    assert len({a["alert_id"] for a in alerts}) == len(alerts)

    out = result.stdout
    true_alerts = sum((ring.tx_ids[-1], ring.accounts) in found for ring in stream.rings)
    assert f"precision {true_alerts / len(alerts):.2f} ({true_alerts} of {len(alerts)} alerts" in out
    assert "recall    1.00 (12 of 12 injected rings found)" in out
    assert f"rings found: {len(alerts)}" in out
    assert "6,000 payments streamed in" in out
    largest = max(alerts, key=lambda a: Decimal(a["total_amount"]))
    assert " -> ".join(largest["accounts"] + largest["accounts"][:1]) in out

    picture = (tmp_path / "rings.html").read_text()
    assert f"picture: {tmp_path / 'rings.html'}" in out
    assert picture.count("<figure ") == min(6, len(alerts))
    assert largest["alert_id"] in picture
    for account in largest["accounts"]:
        assert f"<title>account {account}</title>" in picture
    for tx_id in largest["tx_ids"]:  # every hop of the top ring is drawn with its amount, currency and date
        tx = next(t for t in stream.transactions if t.tx_id == tx_id)
        assert f"{money(tx.amount, tx.currency)}</tspan>" in picture and tx.currency
        assert f">{moment(tx.ts, seconds=False)} UTC</tspan>" in picture


def test_demo_starts_afresh_when_alerts_file_exists(tmp_path):
    (tmp_path / "alerts.jsonl").write_text('{"alert_id": "left over"}\n')
    result = ringwatch("demo", "--out", str(tmp_path), *DEMO)
    assert result.returncode == 0, result.stderr
    assert "left over" not in (tmp_path / "alerts.jsonl").read_text()


def test_demo_checks_its_arguments_before_it_touches_any_file(tmp_path):
    (tmp_path / "alerts.jsonl").write_text('{"alert_id": "from an earlier run"}\n')
    for bad, field in ((["--transactions", "10"], "n_transactions"), (["--accounts", "5"], "n_accounts"),
                       (["--shards", "0"], "graph.shards")):
        result = ringwatch("demo", "--out", str(tmp_path), *bad, timeout=60)
        assert result.returncode == 2 and field in result.stderr, (bad, result.stderr)
        assert "Traceback" not in result.stderr
    assert (tmp_path / "alerts.jsonl").read_text() == '{"alert_id": "from an earlier run"}\n'
    assert not (tmp_path / "rings.html").exists()


def test_demo_rate_counts_streaming_time_not_time_spent_serving_queries(tmp_path):
    port, token = free_port(), secrets.token_hex(16)
    began = time.monotonic()
    demo = subprocess.Popen([sys.executable, "-m", "ringwatch.stream.cli", "demo", "--out", str(tmp_path), *DEMO,
                             "--serve", str(port)], env={**os.environ, "RINGWATCH_QUERY_TOKEN": token},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(f"127.0.0.1:{port}", token=token) as client:
            def streamed() -> bool:
                try:
                    return client.health().transactions == 6000
                except EngineUnreachableError:
                    return demo.poll() is not None
            wait_until(streamed, 120, "every payment streamed")
            wall_to_streamed = time.monotonic() - began  # more than the streaming time: it includes start-up
            serving_until = time.monotonic() + wall_to_streamed + 1.0
            while time.monotonic() < serving_until:  # an analyst asks questions for longer than the stream took
                assert client.alerts(limit=5)
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, err
    reported = float(re.search(r"6,000 payments streamed in ([0-9.]+) s \(([0-9,]+) tx/s\)", out).group(1))
    assert 0 < reported <= wall_to_streamed


def test_help_lists_every_command_and_every_command_has_help(capsys):
    """The listing through the real command; each subcommand's help through the same parser in this process
    (a process per command cost ~1 s each, ~10 s each on a loaded CI box)."""
    listing = ringwatch("--help").stdout
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", listing, re.M), f"{command} missing from ringwatch --help"
    parser = build_parser()
    for argv in [[c] for c in COMMANDS] + [["node", "start"], ["webhook", "resend"]] + [
            ["query", q] for q in ("health", "stats", "alerts", "rings", "neighbors", "account", "subgraph")]:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*argv, "--help"])
        assert exit_.value.code == 0 and "usage: ringwatch " + " ".join(argv) in capsys.readouterr().out, argv
