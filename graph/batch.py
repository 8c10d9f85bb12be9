"""Payments as columns: how batches travel from sources to the graph.

A `pa.Table` with `PAYMENT_SCHEMA` — tx ids and accounts as strings, `ts` in
epoch ms, `amount` as int64 in 1/10,000 units (`AMOUNT_SCALE`), `currency`
nullable — is what the graph stores from, so a columnar reader (detect's
Arrow readers) never builds one Python object per payment. A list of
`Transaction`s becomes one with `payment_table`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from .model import Transaction

PAYMENT_SCHEMA = pa.schema([
    ("tx_id", pa.string()), ("src", pa.string()), ("dst", pa.string()), ("ts", pa.int64()),
    ("amount", pa.int64()), ("currency", pa.string()),
])


def payment_table(transactions: Sequence[Transaction]) -> pa.Table:
    """The columns of validated transactions (amounts to 1/10,000 units)."""
    return pa.table([
        pa.array([t.tx_id for t in transactions], pa.string()),
        pa.array([t.src for t in transactions], pa.string()),
        pa.array([t.dst for t in transactions], pa.string()),
        pa.array([t.ts for t in transactions], pa.int64()),
        pa.array([t.amount_units for t in transactions], pa.int64()),
        pa.array([t.currency for t in transactions], pa.string()),
    ], schema=PAYMENT_SCHEMA)


def to_ipc(table: pa.Table) -> bytes:
    """A table as Arrow IPC stream bytes (shard checkpoints on disk)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()
