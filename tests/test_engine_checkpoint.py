"""Checkpoint records: a restore sees exactly the state that was saved, or an older whole one.

The engine takes its shard checkpoints on a thread beside the loop; every
record it writes must still be covered by them: a restore from the record's
shard checkpoints holds every payment below the record's positions that a
replay from there could need (the ones not yet due for eviction). And they
must still be there: shard checkpoints taken for no record (a dropped
checkpoint, another engine of the group) never prune what a kept record
names, in a file store or in Redis. And a record under state_dir naming a
pickle planted in a Redis checkpoint store is refused like one in files.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import redis

from engine_harness import wait_until
from ringwatch import runtime as rt
from ringwatch.connectors import GeneratorSource, SourceBatch, SyntheticConfig, generate
from ringwatch.graph import LocalRingGraph, SearchOptions, ShardedRingGraph
from ringwatch.runtime.auth import ClusterKeys
from ringwatch.runtime.checkpoints import open_store
from ringwatch.runtime.errors import CheckpointError
from ringwatch.runtime.gcs import RedisGcs
from ringwatch.stream import Checkpoint, Config, Engine, EngineProgress, FileCheckpointRecords
from ringwatch.stream.checkpoint import CheckpointRecordError, GcsCheckpointRecords
from ringwatch.stream.config import EngineConfig, GraphConfig, SinksConfig, SourceConfig
from ringwatch.stream.graph_port import open_graph

DAY_MS = 86_400_000


def record(offset: int, watermark: int | None = None, shards: tuple[str, ...] = ("a/1", "b/1")) -> Checkpoint:
    progress = EngineProgress({("t", 0): offset, ("t", 1): offset // 2}, {("t", 0): watermark, ("t", 1): None},
                              watermark, offset)
    return Checkpoint(0, {"engine-1": progress}, list(shards))


def test_a_record_reads_back_as_written_and_a_damaged_newest_one_leaves_the_one_before(tmp_path):
    store = FileCheckpointRecords(tmp_path, keep=3)
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
    store = FileCheckpointRecords(tmp_path, keep=2)
    saved = [store.save(record(n)) for n in range(4)]
    assert [c.epoch for c in store.history()] == [saved[2].epoch, saved[3].epoch]
    assert FileCheckpointRecords(tmp_path).save(record(9)).epoch == saved[3].epoch + 1


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
        first, second = (GcsCheckpointRecords("payments", keep=3, kv=gcs) for _ in range(2))
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
        racing = [GcsCheckpointRecords("payments", keep=100, kv=gcs) for _ in range(6)]
        start = threading.Barrier(len(racing))
        epochs: list[int] = []

        def save(store: GcsCheckpointRecords) -> None:
            start.wait()
            epochs.append(store.save(Checkpoint(0, group, ["s/race"])).epoch)

        threads = [threading.Thread(target=save, args=(store,)) for store in racing]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(epochs) == list(range(5, 11)), "engines saving at once took the same epoch"
        short = GcsCheckpointRecords("other-group", progress_ttl_s=0.2, kv=gcs)
        short.publish("engine-c", EngineProgress())
        wait_until(lambda: short.group_progress() == {}, 30, "the progress of an engine that stopped publishing to "
                                                              "expire")
        assert first.group_progress().keys() == {"engine-a", "engine-b"}, "another group's engines are not ours"
    finally:
        gcs.close()


class GatedSource(GeneratorSource):
    """Holds the payments from each gate offset on back until a checkpoint record covers every payment before it.

    So the records the test checks are written while payments still come, however loaded the machine is
    (a paced source left that to the race between its pace and the checkpoints). While a gate is shut a
    poll returns nothing, like a Kafka poll of a drained topic.
    """

    def __init__(self, config: SyntheticConfig, records: FileCheckpointRecords, gates: list[int]):
        super().__init__(config)
        self.records, self.gates = records, gates

    def poll(self, max_records: int = 500, timeout_ms: int = 100) -> SourceBatch:
        if self.gates and self.offset >= self.gates[0]:
            latest = self.records.latest()
            if latest is None or sum(latest.positions.values()) < self.gates[0]:
                time.sleep(0.005)  # what a drained topic's poll does: wait a little, return nothing
                return SourceBatch.of_records([])
            self.gates.pop(0)
        if self.gates:
            max_records = min(max_records, self.gates[0] - self.offset)
        return super().poll(max_records, timeout_ms)


@pytest.mark.parametrize("placement", ["in-process", "actors"])
def test_records_written_while_the_loop_runs_are_covered_by_their_shard_checkpoints(tmp_path, placement):
    payments = 6_000
    state_dir = tmp_path / "state"
    source = GatedSource(SyntheticConfig(n_transactions=payments, n_accounts=1_500, n_rings=8, days=12, seed=5),
                         FileCheckpointRecords(state_dir), gates=[1_500, 3_000, 4_500])
    transactions = source.stream.transactions
    config = Config(source=SourceConfig(topics=["synthetic"]),
                    graph=GraphConfig(placement=placement, window=2 * DAY_MS),
                    engine=EngineConfig(state_dir=str(state_dir), checkpoint_interval=100,
                                        keep_checkpoints=1_000, batch_max_size=64),
                    sinks=SinksConfig(alerts_file=str(tmp_path / "alerts.jsonl"))).validate()

    def open_source(listener):
        source.listener = listener
        return source

    engine = Engine(config, source_factory=open_source)
    stop, failure = threading.Event(), []
    records, shard_states = FileCheckpointRecords(state_dir), {}

    def run() -> None:
        try:
            engine.run(stop)
        except BaseException as exc:  # reported below
            failure.append(exc)

    def read_each_new_record() -> None:
        """Load each record's shard checkpoints as it appears (the runtime keeps two per shard, then prunes)."""
        store = open_store(f"file://{(state_dir / 'shards').resolve()}")
        while not stop.is_set() or len(shard_states) < len(records.history()):
            for record in records.history():
                if record.epoch not in shard_states:
                    try:
                        shard_states[record.epoch] = (record, [store.load(i) for i in record.shards])
                    except CheckpointError:  # pruned already: two newer shard checkpoints exist
                        shard_states[record.epoch] = (record, None)
            time.sleep(0.005)

    thread, reader = threading.Thread(target=run), threading.Thread(target=read_each_new_record)
    thread.start()
    reader.start()
    try:
        wait_until(lambda: (source.exhausted and engine.transactions == payments) or failure, 120,
                   "the engine to consume every payment")
    finally:
        stop.set()
        thread.join(120)
        reader.join(60)
    assert not failure, failure
    assert records.latest().transactions == payments and records.latest().graph["next_seq"] == payments

    lateness = config.time.allowed_lateness
    checked = 0
    for record, tables in shard_states.values():
        (position,) = record.positions.values()
        (progress,) = record.engines.values()
        assert record.graph["next_seq"] == position  # every payment is valid: each handed to the graph once
        if tables is None:
            continue
        horizon = -1 if progress.low_watermark is None else progress.low_watermark - 2 * DAY_MS - lateness
        graph = (LocalRingGraph(config.search_options()) if placement == "in-process"
                 else ShardedRingGraph.in_process(config.search_options(), len(tables)))
        graph.restore(tables)
        needed = [tx for tx in transactions[:position] if tx.ts >= horizon]
        held = {edge.tx_id for edges in graph.edges(sorted({tx.src for tx in needed}), "out").values()
                for edge in edges}
        graph.close()
        missing = [tx.tx_id for tx in needed if tx.tx_id not in held]
        assert not missing, (f"record epoch {record.epoch} claims offset {position} but its shard checkpoints "
                             f"lack {len(missing)} payments a replay from it needs, e.g. {missing[:3]}")
        checked += position < payments
    assert checked >= 3, f"only {checked} records written while payments still came could be checked"


@pytest.mark.parametrize("store", ["file", "redis"])
def test_a_kept_record_keeps_its_shard_checkpoints_however_often_the_shards_checkpoint_again(tmp_path, redis_url,
                                                                                            store):
    """Shards checkpoint for records that are dropped, or for other engines: none prunes what a kept record names."""
    uri = f"file://{tmp_path / 'shards'}" if store == "file" else redis_url
    payments = generate(SyntheticConfig(n_transactions=2_000, n_accounts=500, n_rings=4, seed=11)).transactions
    half = len(payments) // 2
    options = SearchOptions()
    rt.init(num_workers=2)
    try:
        graph = open_graph(2, options, checkpoint_uri=uri)
        graph.process(payments[:half], [time.time()] * half)
        edges_at_record = graph.query_graph().edge_count()
        records = FileCheckpointRecords(tmp_path / "state", keep=2, shards=open_store(uri), holder="engine-a")
        kept = records.save(record(half, shards=tuple(graph.checkpoint())))
        graph.process(payments[half:], [time.time()] * (len(payments) - half))
        unrecorded = [graph.checkpoint() for _ in range(3)]  # dropped checkpoints, or another engine's

        restored = open_graph(2, options, checkpoint_uri=uri, restore=records.latest().shards)
        assert restored.query_graph().edge_count() == edges_at_record
        restored.close()
        with pytest.raises(CheckpointRecordError, match="pruned before their record was written"):
            records.save(record(len(payments), shards=tuple(unrecorded[0])))
        assert records.latest() == kept, "a record naming pruned shard checkpoints was written"

        for _ in range(3):  # storage stays bounded: per shard the newest two and those the two records hold
            records.save(record(len(payments), shards=tuple(graph.checkpoint())))
            graph.checkpoint()
        shard_store = open_store(uri)
        with pytest.raises(CheckpointError):
            shard_store.load(kept.shards[0])  # no longer held: pruned by a later checkpoint of its shard
        for actor in {checkpoint_id.split("/")[0] for checkpoint_id in kept.shards}:
            assert stored_checkpoints(uri, actor) <= 4
        graph.close()
    finally:
        rt.shutdown()


def stored_checkpoints(uri: str, actor_id: str) -> int:
    if uri.startswith("file://"):
        return len(list((Path(uri[len("file://"):]) / actor_id).glob("*.ckpt")))
    client = redis.Redis.from_url(uri)
    try:
        return len(client.keys(f"ringwatch:checkpoints:{actor_id}/*"))
    finally:
        client.close()


class Payload:
    """Unpickling this creates `marker` (a directory): proof that planted bytes ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_pickle_planted_in_a_redis_checkpoint_store_is_refused_never_unpickled(tmp_path, redis_url):
    """A record under state_dir may name shard checkpoints in Redis (storage, not a trust boundary): Arrow only."""
    marker = tmp_path / "payload-ran"
    planted = open_store(redis_url).save("planted-shard", Payload(str(marker)))  # its id carries the right digest
    records = FileCheckpointRecords(tmp_path / "state")
    records.save(record(0, shards=(planted,)))
    rt.init(num_workers=1)
    try:
        with pytest.raises(CheckpointRecordError, match="not an Arrow table"):
            open_graph(1, SearchOptions(), checkpoint_uri=redis_url, restore=records.latest().shards)
        with pytest.raises(CheckpointRecordError, match="not in"):
            open_graph(1, SearchOptions(), checkpoint_uri=redis_url, restore=[planted.replace("planted", "absent")])
    finally:
        rt.shutdown()
    assert not marker.exists(), "the planted pickle was unpickled"
