"""The engine configuration: file < environment < flags, every bad key or value named, docs generated."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from ringwatch.stream.config import ConfigError, add_arguments, load, overrides_from_args, render_docs, settings

MINIMAL = {"source.topics": ["payments"], "sinks.alerts_file": "alerts.jsonl"}
REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ringwatch.toml"
    path.write_text(text)
    return path


def parse_flags(*argv: str) -> dict:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return overrides_from_args(parser.parse_args(list(argv)))


def test_flags_beat_environment_beat_file(tmp_path):
    path = write(tmp_path, '[source]\ntopics = ["a"]\ngroup = "from-file"\nkafka_bootstrap = "file:1"\n'
                           '[graph]\nwindow = "48h"\nmax_hops = 4\n[sinks]\nalerts_file = "x.jsonl"\n')
    env = {"RINGWATCH_GROUP": "from-env", "RINGWATCH_KAFKA_BOOTSTRAP": "env:2", "RINGWATCH_MAX_HOPS": "5"}
    config = load(path, environ=env, overrides=parse_flags("--kafka-bootstrap", "flag:3", "--topic", "b",
                                                           "--topic", "c"))
    assert config.source.group == "from-env"
    assert config.source.kafka_bootstrap == "flag:3"
    assert config.source.topics == ["b", "c"]
    assert config.graph.window == 48 * 3_600_000
    assert config.graph.max_hops == 5
    assert config.search_options().max_hops == 5


def test_required_flags_exist_with_their_names(tmp_path):
    (tmp_path / "secret").write_text("whsec_AAAA\n")
    config = load(environ={}, overrides=parse_flags(
        "--kafka-bootstrap", "h:1", "--topic", "t", "--group", "g", "--dlq-topic", "d", "--alerts-topic", "al",
        "--webhook-url", "http://x/", "--webhook-secret-file", str(tmp_path / "secret"), "--alerts-file", "f",
        "--state-dir", "s",
        "--address", "redis://r:1", "--max-hops", "3", "--window", "2h", "--checkpoint-interval", "5s",
        "--query-port", "7000", "--metrics-port", "7001"))
    assert (config.source.dlq_topic, config.sinks.alerts_topic, config.engine.address) == ("d", "al", "redis://r:1")
    assert config.engine.checkpoint_interval == 5_000
    assert config.sinks.webhook_secret == "whsec_AAAA"
    assert (config.service.query_port, config.service.metrics_port) == (7000, 7001)


def test_webhook_secret_from_its_environment_variable():
    config = load(environ={"RINGWATCH_WEBHOOK_SECRET": "whsec_QUJD"},
                  overrides={**MINIMAL, "sinks.webhook_url": "http://127.0.0.1:1/"})
    assert config.sinks.webhook_secret == "whsec_QUJD"


@pytest.mark.parametrize("text, named", [
    ('[source]\ntopic = ["a"]\n', "source.topic"),
    ('[sources]\ntopics = ["a"]\n', "sources"),
    ('[graph]\nwindow = "two days"\n', "graph.window"),
    ('[graph]\nmax_hops = "six"\n', "graph.max_hops"),
    ('[graph]\nmax_hops = 1\n', "graph.max_hops"),
    ('[engine]\nbatch_max_size = 0\n', "engine.batch_max_size"),
    ('[source]\ntopics = "a"\n[service]\nmetrics_port = true\n', "service.metrics_port"),
    ("[graph\n", "not valid TOML"),
])
def test_bad_file_values_are_rejected_naming_the_key(tmp_path, text, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load(write(tmp_path, text), environ={}, overrides=MINIMAL)


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="RINGWATCH_SHARDS"):
        load(environ={"RINGWATCH_SHARDS": "many"}, overrides=MINIMAL)
    with pytest.raises(ConfigError, match="RINGWATCH_NO_SUCH_THING"):
        load(environ={"RINGWATCH_NO_SUCH_THING": "1"}, overrides=MINIMAL)


def test_variables_of_the_runtime_and_tests_are_not_config_keys():
    load(environ={"RINGWATCH_TOKEN": "t", "RINGWATCH_WORKER_KEY": "k", "RINGWATCH_TEST_REDIS_URL": "r"},
         overrides=MINIMAL)


def test_missing_essentials_are_named():
    with pytest.raises(ConfigError, match="source.topics"):
        load(environ={}, overrides={"sinks.alerts_file": "f"})
    with pytest.raises(ConfigError, match="sinks"):
        load(environ={}, overrides={"source.topics": ["t"]})
    with pytest.raises(ConfigError, match="webhook_secret"):
        load(environ={}, overrides={"source.topics": ["t"], "sinks.webhook_url": "http://x/"})


def test_committed_configuration_doc_is_the_generated_one():
    assert (REPO / "docs" / "configuration.md").read_text() == render_docs()


def test_run_help_documents_every_option():
    help_text = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "run", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for spec in settings():
        assert f"--{spec.flag}" in help_text and spec.env in help_text


def test_bad_flag_value_stops_run_with_the_key_named(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "run", "--topic", "t",
                             "--alerts-file", str(tmp_path / "a"), "--window", "soon"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "graph.window" in result.stderr and "--window" in result.stderr
