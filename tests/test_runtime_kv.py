"""The runtime's key-value table: claims are atomic, values are sealed, drivers and workers see the same table."""

from __future__ import annotations

import threading
import time

import pytest

import ringwatch.runtime as rt
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.gcs import RedisGcs
from runtime_cluster import TOKEN, Cluster

KEYS = ClusterKeys.from_token(TOKEN)


def until(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@rt.remote
def claim_in_a_task(key: str) -> bool:
    return rt.kv_put(key, b"from a task", overwrite=False)


def exercise(prefix: str) -> None:
    """What every backend must do, the same way."""
    assert rt.kv_get(f"{prefix}/a") is None
    assert rt.kv_put(f"{prefix}/a", b"1") is True
    assert rt.kv_put(f"{prefix}/a", b"2") is True
    assert rt.kv_get(f"{prefix}/a") == b"2"
    assert rt.kv_put(f"{prefix}/a", b"3", overwrite=False) is False
    assert rt.kv_get(f"{prefix}/a") == b"2"
    assert rt.kv_put(f"{prefix}/b*[x]", b"odd name") is True
    assert rt.kv_keys(prefix) == [f"{prefix}/a", f"{prefix}/b*[x]"]
    assert rt.kv_keys(f"{prefix}/b*") == [f"{prefix}/b*[x]"], "a prefix is matched literally"
    assert rt.kv_delete(f"{prefix}/a") is True and rt.kv_delete(f"{prefix}/a") is False
    assert rt.get(claim_in_a_task.remote(f"{prefix}/task")) is True
    assert rt.kv_get(f"{prefix}/task") == b"from a task", "a worker and the driver share one table"
    assert rt.kv_put(f"{prefix}/short", b"x", ttl_s=0.2) is True
    until(lambda: rt.kv_get(f"{prefix}/short") is None, "a key with a TTL to expire")
    with pytest.raises(TypeError, match="bytes"):
        rt.kv_put(f"{prefix}/a", "text")  # type: ignore[arg-type]


def racing_claims(key: str, contenders: int = 8) -> list[bool]:
    won: list[bool] = []
    start = threading.Barrier(contenders)

    def claim() -> None:
        start.wait()
        won.append(rt.kv_put(key, b"mine", overwrite=False))

    threads = [threading.Thread(target=claim) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


def test_local_mode_key_value_table():
    rt.init(num_workers=1)
    try:
        exercise("local")
        assert sorted(racing_claims("local/race")) == [False] * 7 + [True]
    finally:
        rt.shutdown()


def test_cluster_key_value_table_is_sealed_and_claims_are_atomic(redis_url, redis_client, unique_name):
    cluster = Cluster(redis_url, unique_name)
    try:
        cluster.start_node("node-a")
        rt.init(address=redis_url, token=TOKEN, namespace=unique_name)
        exercise("cluster")
        assert sorted(racing_claims("cluster/race")) == [False] * 7 + [True]

        raw_key = f"ringwatch:{unique_name}:kv:cluster/forged"
        redis_client.set(raw_key, b"written without the token")
        assert rt.kv_get("cluster/forged") is None
        assert rt.kv_keys("cluster/forged") == []
        assert rt.kv_put("cluster/forged", b"real", overwrite=False) is True, "a forged value blocked a claim"
        assert rt.kv_get("cluster/forged") == b"real"
        moved = redis_client.get(raw_key)
        redis_client.set(f"ringwatch:{unique_name}:kv:cluster/elsewhere", moved)
        assert rt.kv_get("cluster/elsewhere") is None, "a sealed value moved to another key is refused"
        other = RedisGcs(redis_url, unique_name, keys=ClusterKeys.from_token("another token"))
        try:
            assert other.kv_get("cluster/forged") is None
        finally:
            other.close()
    finally:
        if rt.is_initialized():
            rt.shutdown()
        cluster.stop()


def test_an_unknown_operation_is_refused():
    from ringwatch.runtime.gcs import InMemoryGcs, kv_request

    with pytest.raises(ValueError, match="unknown key-value operation"):
        kv_request(InMemoryGcs(), "flush")
