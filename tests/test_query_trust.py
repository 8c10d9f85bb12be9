"""The query service's trust boundary: a read-only query token, signed calls, optional TLS with client certificates.

A dashboard gets the query token, never the cluster token: with it, it can
query an engine but cannot find, let alone call, the cluster's nodes.
`ringwatch demo --serve` shows only such a token.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys

import pytest

from engine_harness import EngineProcess, create_topic, wait_until
from ringwatch.connectors.embedded_broker import free_port
from ringwatch.runtime import AuthError
from ringwatch.runtime.auth import ClusterKeys, query_token_for
from ringwatch.runtime.cluster import join_as_driver
from ringwatch.runtime.tls import TlsFiles
from ringwatch.runtime.transport import NodeClient
from ringwatch.stream import Client, EngineUnreachableError
from runtime_cluster import TOKEN, Cluster
from tls_certs import CertificateAuthority

DEMO = ["--transactions", "3000", "--accounts", "800", "--rings", "6", "--seed", "5"]


def test_demo_serve_shows_only_a_query_token_and_it_cannot_run_code(redis_url, unique_name, tmp_path):
    cluster = Cluster(redis_url, unique_name)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RINGWATCH_QUERY_TOKEN"}
    demo = subprocess.Popen([sys.executable, "-m", "ringwatch.stream.cli", "demo", "--out", str(tmp_path), *DEMO,
                             "--serve", str(port)], env={**env, "RINGWATCH_TOKEN": TOKEN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        node = cluster.start_node("node-a")  # a cluster whose token the demo's user happens to hold
        shown = ""
        while "RINGWATCH_QUERY_TOKEN=" not in shown:
            line = demo.stdout.readline()
            assert line, f"the demo ended without showing a query token: {demo.stderr.read()}"
            shown += line
        query_token = shown.split("RINGWATCH_QUERY_TOKEN=")[1].split()[0]
        assert TOKEN not in shown and query_token not in (TOKEN, query_token_for(TOKEN))

        with Client(f"127.0.0.1:{port}", token=query_token) as client:
            def streamed() -> bool:
                try:
                    return client.health().transactions == 3000
                except EngineUnreachableError:
                    return demo.poll() is not None
            wait_until(streamed, 120, "the demo to stream every payment")
            assert demo.poll() is None, demo.stderr.read()
        with Client(f"127.0.0.1:{port}", token=TOKEN) as holder_of_the_wrong_token:
            with pytest.raises(AuthError):
                holder_of_the_wrong_token.health()
        # The query token opens no door to the cluster: no node record opens with it, no call is accepted.
        with pytest.raises(ConnectionError, match="no live ringwatch node"):
            join_as_driver(redis_url, token=query_token, namespace=unique_name)
        with pytest.raises(AuthError):
            NodeClient(node.address, ClusterKeys.from_token(query_token)).call("object_count")

        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=120)
        assert demo.returncode == 0, err
        assert TOKEN not in out + err
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
        cluster.stop()


def test_a_query_service_with_tls_serves_only_clients_with_a_certificate_from_its_ca(kafka_bootstrap, tmp_path,
                                                                                   unique_name):
    ca = CertificateAuthority.create(tmp_path / "pki", "query-ca")
    served = ca.issue("engine")
    token, port = secrets.token_hex(16), free_port()
    create_topic(kafka_bootstrap, unique_name, 1)
    engine = EngineProcess(["--kafka-bootstrap", kafka_bootstrap, "--topic", unique_name, "--group", unique_name,
                            "--state-dir", str(tmp_path / "state"), "--alerts-file", str(tmp_path / "alerts.jsonl"),
                            "--query-port", str(port), "--query-tls-cert", str(served.cert),
                            "--query-tls-key", str(served.key), "--query-tls-ca", str(served.ca)],
                           tmp_path / "engine.log", env={"RINGWATCH_QUERY_TOKEN": token}).start()
    address = f"127.0.0.1:{port}"
    try:
        with Client(address, token=token, tls=ca.issue("analyst")) as analyst:
            def answers() -> bool:
                try:
                    return analyst.health().status in ("starting", "ok")
                except EngineUnreachableError:
                    return not engine.alive()
            wait_until(answers, 120, "the engine's query service")
            assert engine.alive(), engine.log()
        stranger = CertificateAuthority.create(tmp_path / "other", "other-ca").issue("stranger")
        for tls in (stranger, TlsFiles(stranger.cert, stranger.key, ca.path), None):
            with Client(address, token=token, tls=tls, timeout_s=10) as refused:
                with pytest.raises(EngineUnreachableError):
                    refused.health()
    finally:
        engine.ensure_stopped()


def test_query_cli_takes_tls_options_as_a_set(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ringwatch.stream.cli", "query", "health", "--tls-ca",
                             str(tmp_path / "ca.pem")], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RINGWATCH_QUERY_TOKEN": "t"})
    assert result.returncode == 2 and "--tls-cert, --tls-key missing" in result.stderr
