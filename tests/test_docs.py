"""The README's snippets and the demos, run as a reader would run them, against a real engine."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine_harness import wait_until
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.connectors import FileSource
from ringwatch.stream import Client, EngineUnreachableError, detect

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
DOC_ADDRESS = "127.0.0.1:7070"
DEMO_TRANSACTIONS = 20_000  # the README's examples use the default demo's accounts


def blocks(language: str) -> list[str]:
    """The README's fenced code blocks tagged `language` ("" for untagged), in order."""
    found, current, tag = [], None, None
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, tag = [], line[3:].strip()
            else:
                if tag == language:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


@pytest.fixture(scope="module")
def served_demo(tmp_path_factory) -> Iterator[tuple[str, dict[str, str], subprocess.Popen, Path]]:
    """`ringwatch demo --serve PORT`, as the README says, until every payment is in.

    Its output goes to files in its folder, not pipes: a pipe nobody reads while the demo runs fills up and
    stalls it. It is stopped whatever happens, setup failures included.
    """
    port, out = free_port(), tmp_path_factory.mktemp("demo")
    env = {**os.environ, "RINGWATCH_QUERY_TOKEN": secrets.token_hex(16)}
    with open(out / "stdout.txt", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        demo = subprocess.Popen([sys.executable, "-m", "ringwatch.stream.cli", "demo", "--serve", str(port)],
                                cwd=out, env=env, stdout=stdout, stderr=stderr)
    try:
        address = f"127.0.0.1:{port}"
        with Client(address, token=env["RINGWATCH_QUERY_TOKEN"]) as client:
            def consumed() -> bool:
                try:
                    return client.health().transactions == DEMO_TRANSACTIONS
                except EngineUnreachableError:
                    return demo.poll() is not None
            wait_until(consumed, 120, "the demo engine to take every payment")
        assert demo.poll() is None, (out / "stderr.txt").read_text()
        yield address, env, demo, out
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()


def test_readme_python_snippets_run_against_the_demo_engine(served_demo):
    address, env, _, _ = served_demo
    snippets = [code for code in blocks("python") if DOC_ADDRESS in code]
    assert snippets, "the README has no query example"
    os.environ["RINGWATCH_QUERY_TOKEN"] = env["RINGWATCH_QUERY_TOKEN"]
    try:
        for code in snippets:
            exec(compile(code.replace(DOC_ADDRESS, address), "README.md", "exec"), {})
    finally:
        del os.environ["RINGWATCH_QUERY_TOKEN"]


def test_readme_query_commands_run_against_the_demo_engine(served_demo):
    address, env, _, _ = served_demo
    commands = [line for code in blocks("bash") for line in code.splitlines() if line.startswith("ringwatch query")]
    assert len(commands) >= 5
    for line in commands:
        argv = shlex.split(line.replace(DOC_ADDRESS, address), comments=True)
        result = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", *argv[1:]], capture_output=True,
                                text=True, timeout=60, env=env)
        assert result.returncode == 0 and result.stdout.strip(), (line, result.stderr)
        assert "no rings" not in result.stdout and "no payments" not in result.stdout, line


def test_readme_shows_the_demo_output_it_gives(served_demo):
    """Runs after the query tests: Ctrl-C ends the served demo, which then prints its report."""
    _, _, demo, out = served_demo
    demo.send_signal(signal.SIGINT)
    demo.wait(timeout=120)
    stdout = (out / "stdout.txt").read_text()
    assert demo.returncode == 0, (out / "stderr.txt").read_text()
    shown = next(code for code in blocks("") if "recall" in code)
    for line in shown.splitlines():
        if line.startswith(("rings found", "precision", "recall", "alerts:", "picture:")):
            assert line in stdout, line
        elif line.startswith("2024-"):  # a table row: all but the latency column is deterministic
            assert re.sub(r"\s+\d+\.\d\s+(yes|no)", r" \1", line) in {
                re.sub(r"\s+\d+\.\d\s+(yes|no)", r" \1", row) for row in stdout.splitlines()}, line


def test_readme_first_command_is_the_demo():
    first = blocks("bash")[0].strip()
    assert first.endswith("ringwatch demo") and "pip install" in first


def run_demo_script(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_quickstart_demo_queries_the_engine_end_to_end():
    result = run_demo_script("demos/quickstart.py")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^5000 payments, \d+ alerts", result.stdout, re.M)
    assert "rings through" in result.stdout and "subgraph:" in result.stdout
    assert len(Path(REPO / "demos/quickstart.py").read_text().splitlines()) <= 50


def test_kafka_demo_delivers_every_ring_with_verified_signatures():
    result = run_demo_script("demos/kafka_end_to_end.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every signature verified (0 rejected); 10 of 10 injected rings among them" in result.stdout


def test_amlworld_replay_reports_precision_and_recall_on_cycles(tmp_path):
    sample = REPO / "demos/data/HI-Sample_Trans.csv"
    labelled = {r.transaction.tx_id for r in FileSource(sample) if r.ok and r.transaction.extra.get("is_laundering")}
    for argv, hops, recall in (((), 6, "0.79 (31 of 39 "), (("--max-hops", "8"), 8, "1.00 (39 of 39 ")):
        result = run_demo_script("demos/amlworld_replay.py", *argv)
        assert result.returncode == 0, result.stderr
        assert f"recall:    {recall}" in result.stdout
        alerts = detect(str(sample), max_hops=hops, window="7d")
        right = sum(1 for alert in alerts if set(alert.tx_ids) <= labelled)
        assert 0 < right < len(alerts)  # the sample has both: laundering rings and a cycle of ordinary payments
        assert f"precision: {right / len(alerts):.2f} ({right} of {len(alerts)} rings found" in result.stdout


def test_shipped_amlworld_sample_is_the_generated_one(tmp_path):
    result = run_demo_script("demos/amlworld_replay.py", "--write-sample", str(tmp_path / "sample.csv"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sample.csv").read_bytes() == (REPO / "demos/data/HI-Sample_Trans.csv").read_bytes()
