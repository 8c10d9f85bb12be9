"""The engine's own state under --state-dir as an attacker who can write that folder meets it.

With a local runtime the aligned-checkpoint records are plain JSON files under
`state_dir/checkpoints` naming the shard checkpoints under `state_dir/shards`.
Someone who can write a shared state_dir plants a pickled "shard checkpoint"
(written with the runtime's own checkpoint writer, so its id carries the right
SHA-256) and a record naming it. The engine must refuse to restore from it, say
so in one line, and never unpickle it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from ringwatch.runtime.checkpoints import FileCheckpointStore as ShardCheckpoints
from ringwatch.stream.checkpoint import Checkpoint, EngineProgress, FileCheckpointRecords

START_TIMEOUT_S = 120  # only reached when the engine wrongly goes on with the planted state


def run_engine(*args: str) -> subprocess.CompletedProcess:
    """`ringwatch run ARGS` until it exits; an engine still running after START_TIMEOUT_S fails the test."""
    process = subprocess.Popen([sys.executable, "-m", "ringwatch.stream.cli", "run", *args], text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = process.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("the engine restored from the planted checkpoint and kept running")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


class Payload:
    """Unpickling this creates `marker` (a directory): proof that planted bytes ran in the engine."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def plant(state_dir, marker, placement: str) -> str:
    shard_id = ShardCheckpoints(f"file://{state_dir.resolve() / 'shards'}").save(
        "engine-graph-0" if placement == "in-process" else "planted-shard", Payload(str(marker)))
    engine_id = f"{socket.gethostname()}:{state_dir.resolve()}"
    FileCheckpointRecords(state_dir).save(Checkpoint(0, {engine_id: EngineProgress()}, [shard_id],
                                                   graph={"placement": placement, "next_seq": 0}))
    return shard_id


@pytest.mark.parametrize("placement", ["actors", "in-process"])
def test_a_pickle_planted_as_a_shard_checkpoint_is_refused_never_unpickled(kafka_bootstrap, unique_name, tmp_path,
                                                                          placement):
    state_dir, marker = tmp_path / "state", tmp_path / "payload-ran"
    shard_id = plant(state_dir, marker, placement)

    result = run_engine("--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name, "--group", unique_name,
                        "--alerts-file", str(tmp_path / "alerts.jsonl"), "--state-dir", str(state_dir),
                        "--shards", "1", "--placement", placement)

    assert not marker.exists(), "the planted pickle was unpickled"
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ringwatch run:")]
    assert len(lines) == 1 and "not an Arrow table" in lines[0] and shard_id.split("/")[0] in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_record_naming_a_file_outside_the_shard_folder_is_refused(kafka_bootstrap, unique_name, tmp_path):
    state_dir, marker = tmp_path / "state", tmp_path / "payload-ran"
    elsewhere = ShardCheckpoints(f"file://{tmp_path / 'elsewhere'}").save("x", Payload(str(marker)))
    engine_id = f"{socket.gethostname()}:{state_dir.resolve()}"
    FileCheckpointRecords(state_dir).save(Checkpoint(0, {engine_id: EngineProgress()}, [f"../elsewhere/{elsewhere}"],
                                                   graph={"placement": "actors"}))
    result = run_engine("--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name,
                        "--alerts-file", str(tmp_path / "alerts.jsonl"), "--state-dir", str(state_dir), "--shards", "1")
    assert not marker.exists()
    assert result.returncode == 1 and "outside" in result.stderr, result.stderr
