"""Checkpoint files: a restore sees exactly the state that was saved, or an older whole one."""

from __future__ import annotations

from ringwatch.stream import CheckpointStore


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
