"""The transaction graph: records, sharded temporal edge store, ring search."""

from .detector import BatchResult, Rejected, RingDetector
from .durations import InvalidDurationError, format_duration, parse_duration
from .export import subgraph
from .model import Alert, InvalidTransactionError, Transaction, alert_id, parse_timestamp
from .ring_search import (
    InvalidSearchOptionError,
    Ring,
    SearchOptions,
    SearchOutcome,
    Trigger,
    search,
    search_in_parallel,
)
from .shard_set import ActorShards, GraphShard, LocalShards, ShardSet
from .shard_store import Edge, ExpandRequest, ExpandResult, ShardStore, shard_of

__all__ = [
    "ActorShards",
    "Alert",
    "BatchResult",
    "Edge",
    "ExpandRequest",
    "ExpandResult",
    "GraphShard",
    "InvalidDurationError",
    "InvalidSearchOptionError",
    "InvalidTransactionError",
    "LocalShards",
    "Rejected",
    "Ring",
    "RingDetector",
    "SearchOptions",
    "SearchOutcome",
    "ShardSet",
    "ShardStore",
    "Transaction",
    "Trigger",
    "alert_id",
    "format_duration",
    "parse_duration",
    "parse_timestamp",
    "search",
    "search_in_parallel",
    "shard_of",
    "subgraph",
]
