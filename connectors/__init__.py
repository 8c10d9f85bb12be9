"""Sources and sinks: Kafka, files, webhooks, the synthetic generator."""

from .embedded_broker import BrokerStartError, EmbeddedBroker
from .files import FileSource, UnsupportedFileError
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
    "FileSource",
    "GeneratorSource",
    "InjectedRing",
    "InvalidSyntheticConfigError",
    "SourceRecord",
    "SyntheticConfig",
    "SyntheticStream",
    "UnsupportedFileError",
    "generate",
    "read_truth",
    "write_stream",
]
