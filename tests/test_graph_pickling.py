"""What crosses to shard actors each round (`ArrayRecord`): the same values back, arrays writable and aligned (numba
compiles a kernel once per writability and alignment), tables as Arrow IPC, nested records in their parent's one
blob, and no pickled object but the rebuild function: classes are named by key, and only record classes are made."""

from __future__ import annotations

import pickle
import pickletools
import sys

import numpy as np
import pyarrow as pa

from ringwatch.graph.batch import payment_table
import pytest

from ringwatch.graph.label_rounds import Candidates, FirstLayer, LabelReply, LabelRequest, LateScans
from ringwatch.graph.model import Transaction
from ringwatch.graph.sharded import BatchPart, Stored
from ringwatch.runtime.errors import SerializationError
from ringwatch.runtime.serialization import dumps, loads


def reply() -> LabelReply:
    rows = payment_table([Transaction("t1", "a", "b", "1.5", 7), Transaction("t2", "b", "c", "2", 9)])
    candidates = Candidates(rows, np.array([3], np.int32), np.array([11], np.uint64), np.array([1], np.int16),
                            np.array([12], np.uint64), np.array([0], np.int16))
    return LabelReply(np.array([1, 2, 3], np.int32), np.array([0, 1, 2], np.int8), np.array([5, 6, 7], np.uint64),
                      np.array([0, 1, 0], np.int16), np.array([-1, 2**40, 3], np.int64), np.zeros(0, np.int32),
                      np.zeros(0, np.int64), rows, candidates, seconds=0.25)


def round_trip(value):
    data, buffers = dumps(value)  # as the runtime sends an argument or a result
    return loads(data, [memoryview(b.raw()) for b in buffers])


def test_a_record_comes_back_equal_with_writable_aligned_arrays_and_its_tables():
    original = stored()
    copy = round_trip(original)
    assert copy.newest_before == (7, b"t2") and copy.seconds == 0.5
    assert copy.lengths.shape == (4, 3) and np.array_equal(copy.lengths, original.lengths)
    for name in ("job", "dir", "gid", "owner", "value", "degree", "hubs"):
        got, want = getattr(copy.labels, name), getattr(original.labels, name)
        assert got.dtype == want.dtype and np.array_equal(got, want)
        assert got.flags.writeable and got.flags.aligned
    assert copy.labels.edges.equals(original.labels.edges)
    assert copy.labels.candidates.rows.equals(original.labels.candidates.rows)
    assert np.array_equal(copy.labels.candidates.src, original.labels.candidates.src)


def test_a_batch_part_holds_no_pickled_array_or_table_only_bytes():
    part = BatchPart(payment_table([Transaction("t1", "a", "b", "1", 1)]), np.array([0], np.int32),
                     FirstLayer(True, True, 10, 0, -1))
    data, buffers = dumps(part)
    assert not buffers  # one bytearray in the stream: arrays and tables never leave as objects of their own
    names = [arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)]
    assert not [name for name in names if name.startswith(("numpy", "pyarrow"))]  # no module of theirs is named
    copy = pickle.loads(data)
    assert copy.table.equals(part.table) and copy.first == part.first and copy.rows.flags.writeable
    assert isinstance(copy.table, pa.Table)


def stored() -> Stored:
    return Stored(np.array([0, 1, 2], np.int8), (7, b"t2"), np.arange(12, dtype=np.int32).reshape(4, 3),
                  np.array([1, 0, 3], np.int8), reply(), seconds=0.5)


def test_nested_records_travel_in_one_blob_and_no_class_is_pickled():
    data, buffers = dumps(stored())  # Stored > LabelReply > Candidates, three tables in all
    assert not buffers
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    assert [name for name, _ in ops].count("BYTEARRAY8") == 1
    globals_named = [arg for name, arg in ops if name in ("SHORT_BINUNICODE", "BINUNICODE")
                     and arg in ("ringwatch.graph.pickling", "_rebuild", "Stored", "LabelReply", "Candidates")]
    assert globals_named == ["ringwatch.graph.pickling", "_rebuild"]  # the rebuild function, by name, and nothing else


def test_an_empty_array_comes_back_with_its_dtype_and_shape_and_writable():
    request = LabelRequest(*(np.zeros(0, dtype) for dtype in (np.int32, np.int8, np.uint64, np.int64, np.int64)),
                           LateScans(*(np.arange(2, dtype=np.int64) for _ in range(10))), True, 10, 6, 0, -1)
    copy = round_trip(request)
    assert copy.gid.dtype == np.uint64 and copy.gid.shape == (0,) and copy.gid.flags.writeable
    assert np.array_equal(copy.scans.join_hop, [0, 1]) and copy.scans.join_hop.flags.aligned
    assert copy.strict and copy.window == 10 and copy.max_degree == -1


@pytest.mark.parametrize("key", ["ringwatch.graph.sharded:kernel", "this:xxxxxxxxxxxxxxxxxxxxxxxxx"])
def test_a_key_that_names_no_record_class_is_refused_and_nothing_is_imported_for_it(key):
    data, _ = dumps(stored())
    name = b"ringwatch.graph.sharded:Stored"
    assert len(key) == len(name) and data.count(name) == 1
    with pytest.raises(TypeError, match="names no ArrayRecord class"):
        pickle.loads(data.replace(name, key.encode()))
    assert "this" not in sys.modules  # a key outside ringwatch imports nothing (importing `this` prints)


def test_a_table_with_a_dictionary_encoded_column_is_refused_where_it_is_sent():
    rows = payment_table([Transaction("t1", "a", "b", "1", 1, currency="EUR")])
    encoded = rows.set_column(5, "currency", rows.column("currency").dictionary_encode())
    with pytest.raises(SerializationError, match="dictionary-encoded columns \\['currency'\\]"):
        dumps(BatchPart(encoded, np.array([0], np.int32), FirstLayer(True, True, 10, 0, -1)))
