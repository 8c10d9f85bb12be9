"""Sources and sinks: Kafka, files, webhooks, the synthetic generator."""

from .embedded_broker import BrokerStartError, EmbeddedBroker

__all__ = ["BrokerStartError", "EmbeddedBroker"]
