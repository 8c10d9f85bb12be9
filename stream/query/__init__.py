"""The query service an engine serves (gRPC, JSON on the wire) and the `Client` that asks it."""

from .client import Client, EngineUnreachableError
from .service import (
    AccountSummary,
    EngineStats,
    Health,
    InvalidQueryError,
    Neighbor,
    QueryableEngine,
    QueryError,
    QueryHandler,
    QueryService,
    to_plain,
)

__all__ = [
    "AccountSummary",
    "Client",
    "EngineStats",
    "EngineUnreachableError",
    "Health",
    "InvalidQueryError",
    "Neighbor",
    "QueryError",
    "QueryHandler",
    "QueryService",
    "QueryableEngine",
    "to_plain",
]
