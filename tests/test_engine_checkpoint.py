"""Checkpoint records: a restore sees exactly the state that was saved, or an older whole one."""

from __future__ import annotations

import threading

from engine_harness import wait_until
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.gcs import RedisGcs
from ringwatch.stream import Checkpoint, EngineProgress, FileCheckpointStore
from ringwatch.stream.checkpoint import GcsCheckpointStore


def record(offset: int, watermark: int | None = None, shards: tuple[str, ...] = ("a/1", "b/1")) -> Checkpoint:
    progress = EngineProgress({("t", 0): offset, ("t", 1): offset // 2}, {("t", 0): watermark, ("t", 1): None},
                              watermark, offset)
    return Checkpoint(0, {"engine-1": progress}, list(shards))


def test_a_record_reads_back_as_written_and_a_damaged_newest_one_leaves_the_one_before(tmp_path):
    store = FileCheckpointStore(tmp_path, keep=3)
    first = store.save(record(10, None))
    second = store.save(record(20, 1_700_000_000_000, ("a/2", "b/2")))
    assert (first.epoch, second.epoch) == (1, 2)
    assert store.latest() == second
    assert second.positions == {("t", 0): 20, ("t", 1): 10}
    assert second.watermarks == {("t", 0): 1_700_000_000_000, ("t", 1): None}
    (store.root / f"{second.epoch:012d}.checkpoint.json").write_text('{"epoch": 2, "eng')
    assert store.latest() == first
    assert [c.epoch for c in store.history()] == [1]


def test_old_records_are_pruned_and_epochs_keep_rising(tmp_path):
    store = FileCheckpointStore(tmp_path, keep=2)
    saved = [store.save(record(n)) for n in range(4)]
    assert [c.epoch for c in store.history()] == [saved[2].epoch, saved[3].epoch]
    assert FileCheckpointStore(tmp_path).save(record(9)).epoch == saved[3].epoch + 1


def test_positions_and_watermarks_merge_over_the_engines_of_a_group():
    older = EngineProgress({("t", 0): 5, ("t", 1): 40}, {("t", 0): 100, ("t", 1): None}, 100, 45)
    newer = EngineProgress({("t", 0): 30}, {("t", 0): 300, ("t", 1): 200}, 200, 30)
    checkpoint = Checkpoint(7, {"a": older, "b": newer}, ["s/1"])
    assert checkpoint.positions == {("t", 0): 30, ("t", 1): 40}
    assert checkpoint.watermarks == {("t", 0): 300, ("t", 1): 200}
    assert checkpoint.transactions == 75
    assert Checkpoint.from_json(checkpoint.to_json()) == checkpoint


def test_group_records_in_the_gcs_take_distinct_epochs_and_carry_every_engines_progress(redis_url, unique_name):
    gcs = RedisGcs(redis_url, unique_name, keys=ClusterKeys.from_token("engine-test-token"))
    try:
        first, second = (GcsCheckpointStore("payments", keep=3, kv=gcs) for _ in range(2))
        assert first.latest() is None
        first.publish("engine-a", EngineProgress({("t", 0): 10}, {("t", 0): 500}, 500, 10))
        second.publish("engine-b", EngineProgress({("t", 1): 7}, {("t", 1): 300}, 300, 7))
        group = first.group_progress()
        assert sorted(group) == ["engine-a", "engine-b"] and group == second.group_progress()
        saved = [first.save(Checkpoint(0, group, ["s/1"])), second.save(Checkpoint(0, group, ["s/2"])),
                 first.save(Checkpoint(0, group, ["s/3"])), second.save(Checkpoint(0, group, ["s/4"]))]
        assert [c.epoch for c in saved] == [1, 2, 3, 4]
        assert [c.epoch for c in first.history()] == [2, 3, 4]
        latest = second.latest()
        assert latest.shards == ["s/4"] and latest.positions == {("t", 0): 10, ("t", 1): 7}
        racing = [GcsCheckpointStore("payments", keep=100, kv=gcs) for _ in range(6)]
        start = threading.Barrier(len(racing))
        epochs: list[int] = []

        def save(store: GcsCheckpointStore) -> None:
            start.wait()
            epochs.append(store.save(Checkpoint(0, group, ["s/race"])).epoch)

        threads = [threading.Thread(target=save, args=(store,)) for store in racing]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(epochs) == list(range(5, 11)), "engines saving at once took the same epoch"
        short = GcsCheckpointStore("other-group", progress_ttl_s=0.2, kv=gcs)
        short.publish("engine-c", EngineProgress())
        wait_until(lambda: short.group_progress() == {}, 30, "the progress of an engine that stopped publishing to "
                                                              "expire")
        assert first.group_progress().keys() == {"engine-a", "engine-b"}, "another group's engines are not ours"
    finally:
        gcs.close()
