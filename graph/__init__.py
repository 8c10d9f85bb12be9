"""The transaction graph: records, sharded temporal edge store, ring search."""

from .durations import InvalidDurationError, format_duration, parse_duration
from .model import Alert, InvalidTransactionError, Transaction, alert_id, parse_timestamp

__all__ = [
    "Alert",
    "InvalidDurationError",
    "InvalidTransactionError",
    "Transaction",
    "alert_id",
    "format_duration",
    "parse_duration",
    "parse_timestamp",
]
