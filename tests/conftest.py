"""Session fixtures: a real redis-server and a real Kafka-protocol broker on loopback, a real Ray head.

Set RINGWATCH_TEST_REDIS_URL or RINGWATCH_TEST_KAFKA_BOOTSTRAP to run against
servers you already have (for example Apache Kafka) instead of starting them.

Ray fixes its authentication settings when it is first imported, so the token
of the tests' Ray head (`RAY_AUTH_ENV`) is put in this process's environment
here, as pytest loads this file: before any test module is collected, whichever
of them imports Ray first, and in time for every engine process a test starts.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator

import pytest
import redis

from ringwatch.connectors import EmbeddedBroker
from engine_harness import EngineProcess, Receiver
from ringwatch.connectors.embedded_broker import free_port
from services import RayHead, RedisServer

RAY_AUTH_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}  # this session's head's token
os.environ.update(RAY_AUTH_ENV)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("RINGWATCH_TEST_REDIS_URL")
    if existing:
        yield existing
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("RINGWATCH_TEST_KAFKA_BOOTSTRAP")
    if existing:
        yield existing
        return
    broker = EmbeddedBroker(workdir=tmp_path_factory.mktemp("tansu")).start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on a free loopback port (tests/test_engine_webhook.py has a signing one of its own)."""
    receiver = Receiver(free_port()).start()
    yield receiver
    receiver.stop()


@pytest.fixture
def engines() -> Iterator[list[EngineProcess]]:
    """`ringwatch run` processes a test starts; whatever is still running at the end is stopped."""
    started: list[EngineProcess] = []
    yield started
    for engine in started:
        engine.ensure_stopped()


@pytest.fixture
def unique_name() -> str:
    """A fresh name for a topic, group or namespace, so tests never see each other's data."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """A real local Ray head for the `backend="ray"` tests (tests/run.sh installs the `ray` extra).

    It takes the session's token (`RAY_AUTH_ENV`), which this process and the
    engines it starts already have in their environment.
    """
    head = RayHead(auth_env=dict(RAY_AUTH_ENV)).start()
    try:
        yield head
    finally:
        head.stop()
