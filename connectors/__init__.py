"""Sources and sinks: Kafka, files, webhooks, the synthetic generator."""

from .embedded_broker import BrokerStartError, EmbeddedBroker
from .records import SourceRecord
from .synthetic import (
    GeneratorSource,
    InjectedRing,
    InvalidSyntheticConfigError,
    SyntheticConfig,
    SyntheticStream,
    generate,
    read_truth,
    write_stream,
)

__all__ = [
    "BrokerStartError",
    "EmbeddedBroker",
    "GeneratorSource",
    "InjectedRing",
    "InvalidSyntheticConfigError",
    "SourceRecord",
    "SyntheticConfig",
    "SyntheticStream",
    "generate",
    "read_truth",
    "write_stream",
]
