"""Sources and sinks: Kafka, files, webhooks, the synthetic generator."""

from typing import TYPE_CHECKING

from ringwatch.runtime.lazy_exports import lazy_package

if TYPE_CHECKING:  # the exports, imported on first use (runtime/lazy_exports.py)
    from .embedded_broker import BrokerStartError, EmbeddedBroker
    from .files import FileSource, UnsupportedFileError
    from .kafka import (
        KafkaConnectorError,
        KafkaSink,
        KafkaSource,
        dead_letter_topic,
        next_positions,
        produce_transactions,
    )
    from .records import SourceRecord
    from .source_batch import SourceBatch
    from .source import DeadLetter, NoListener, RebalanceListener, SequentialSource, Source
    from .sinks import JsonlSink, Sink
    from .synthetic import GeneratorSource, InjectedRing, SyntheticStream, generate, read_truth, write_stream
    from .synthetic_config import InvalidSyntheticConfigError, SyntheticConfig
    from .webhook import ResendReport, WebhookSink, read_alert_lines, resend
    from .webhook_client import InvalidWebhookConfigError, WebhookClient

__getattr__, __dir__ = lazy_package(__name__)

__all__ = [
    "BrokerStartError",
    "DeadLetter",
    "EmbeddedBroker",
    "FileSource",
    "GeneratorSource",
    "InjectedRing",
    "InvalidSyntheticConfigError",
    "InvalidWebhookConfigError",
    "JsonlSink",
    "KafkaConnectorError",
    "KafkaSink",
    "KafkaSource",
    "NoListener",
    "RebalanceListener",
    "SequentialSource",
    "ResendReport",
    "Sink",
    "Source",
    "SourceBatch",
    "SourceRecord",
    "SyntheticConfig",
    "SyntheticStream",
    "UnsupportedFileError",
    "WebhookClient",
    "WebhookSink",
    "dead_letter_topic",
    "generate",
    "next_positions",
    "produce_transactions",
    "read_alert_lines",
    "read_truth",
    "resend",
    "write_stream",
]
