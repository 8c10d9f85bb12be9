"""The transaction graph: records, the compiled edge store and ring search, the `RingGraph` seam."""

from typing import TYPE_CHECKING

from ringwatch.runtime.lazy_exports import lazy_package

if TYPE_CHECKING:  # the exports, imported on first use (runtime/lazy_exports.py)
    from .batch import PAYMENT_SCHEMA, payment_table
    from .durations import InvalidDurationError, format_duration, parse_duration
    from .export import subgraph
    from .model import (
        AMOUNT_SCALE,
        MIXED,
        TS_MAX,
        TS_MIN,
        Alert,
        InvalidTransactionError,
        Transaction,
        alert_id,
        decimal_text,
        loads,
        parse_amount,
        parse_timestamp,
    )
    from .options import InvalidSearchOptionError, SearchOptions
    from .ring_graph import BatchResult, LocalRingGraph, Rejected, RingGraph
    from .sharded import GraphShard, ShardedRingGraph, shard_of
    from .store import EdgeStore, StoredEdge

__getattr__, __dir__ = lazy_package(__name__)

__all__ = [
    "AMOUNT_SCALE",
    "Alert",
    "BatchResult",
    "EdgeStore",
    "GraphShard",
    "InvalidDurationError",
    "InvalidSearchOptionError",
    "InvalidTransactionError",
    "LocalRingGraph",
    "MIXED",
    "PAYMENT_SCHEMA",
    "Rejected",
    "RingGraph",
    "SearchOptions",
    "ShardedRingGraph",
    "StoredEdge",
    "TS_MAX",
    "TS_MIN",
    "Transaction",
    "alert_id",
    "decimal_text",
    "format_duration",
    "loads",
    "parse_amount",
    "parse_duration",
    "parse_timestamp",
    "payment_table",
    "shard_of",
    "subgraph",
]
