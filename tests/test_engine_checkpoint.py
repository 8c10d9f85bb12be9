"""Checkpoint files and shard snapshots: a restore sees exactly the state that was saved, or an older whole one."""

from __future__ import annotations

import pytest

from ringwatch.graph import ExpandRequest, ShardStore
from ringwatch.stream import CheckpointStore

EDGES = [("t1", "a", "b", 10.0, 1_000, 0), ("t2", "b", "c", 9.0, 2_000, 1), ("t3", "c", "a", 8.0, 3_000, 2),
         ("t4", "a", "c", 7.0, 4_000, 3)]


def every_lookup(store: ShardStore) -> list:
    requests = [ExpandRequest(direction, account, 0, 10_000, 100)
                for direction in ("out", "in") for account in "abcd"]
    return store.expand(requests, None)


@pytest.mark.parametrize("num_shards", [1, 3])
def test_shard_snapshot_restores_the_same_answers(num_shards):
    for shard in range(num_shards):
        original = ShardStore(shard, num_shards)
        original.apply(EDGES)
        original.evict(1_500)
        copy = ShardStore(shard, num_shards)
        copy.restore(original.snapshot())
        assert every_lookup(copy) == every_lookup(original)
        assert (copy.count_edges(), copy.horizon) == (original.count_edges(), original.horizon)
        assert copy.apply(EDGES) == original.apply(EDGES), "replayed tx ids must be recognised after restore"
        assert every_lookup(copy) == every_lookup(original)


def test_snapshot_of_another_shard_is_refused():
    store = ShardStore(0, 2)
    with pytest.raises(ValueError, match="shard 0/2"):
        ShardStore(1, 2).restore(store.snapshot())


def test_latest_complete_checkpoint_survives_damage_to_a_newer_one(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    first = store.save({("t", 0): 10}, 10, -5, 12, [b"shard-0-v1", b"shard-1-v1"])
    second = store.save({("t", 0): 20, ("t", 1): 3}, 23, 7, 25, [b"shard-0-v2", b"shard-1-v2"])
    assert store.latest() == second
    assert store.load_shard(second, 1) == b"shard-1-v2"
    (store.root / f"{second.checkpoint_id:012d}" / "shard-1.bin").write_bytes(b"torn")
    assert store.latest() == first
    (store.root / f"{first.checkpoint_id:012d}.manifest.json").write_text("{not json")
    assert store.latest() is None


def test_old_checkpoints_are_pruned_and_ids_keep_rising(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    saved = [store.save({("t", 0): n}, n, 0, n, [b"x"]) for n in range(4)]
    assert store.manifest_ids() == [saved[2].checkpoint_id, saved[3].checkpoint_id]
    assert sorted(p.name for p in store.root.iterdir() if p.is_dir()) == [
        f"{saved[2].checkpoint_id:012d}", f"{saved[3].checkpoint_id:012d}"]
    assert CheckpointStore(tmp_path).save({}, 0, 0, 0, [b"y"]).checkpoint_id == saved[3].checkpoint_id + 1
