"""Webhook delivery benchmark: the sink's kept-alive connection against a new connection per alert.

Prints, for N alerts posted in order to a loopback HTTP/1.1 receiver, plain
HTTP and then HTTPS (a self-signed certificate made with the `openssl` command,
trusted through SSL_CERT_FILE), in one run:
  sink            alerts/s of `WebhookSink`: the durable outbox (one fsynced segment per batch of 50), the
                  settlement record (an fsync per alert) and one kept-alive urllib3 connection
  client          alerts/s of `WebhookClient.post` alone: the kept-alive connection, no outbox
  per request     alerts/s of the same signed posts over a new `http.client` connection each, as the
                  sink posted before (the baseline)
  ratio           client / per request: what keeping the connection alive buys
Each figure is the best of --rounds runs (the machine may be shared; the best run is the least disturbed).

On loopback a TCP connection costs almost nothing, so plain HTTP shows only
the clients' own overhead; a TLS handshake per alert is what a real endpoint
costs without keep-alive (plus one network round trip or two per alert).

Run: python bench/webhook.py [--alerts 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ringwatch.connectors import WebhookClient, WebhookSink
from ringwatch.connectors.webhook_client import sign
from ringwatch.graph import Alert, alert_id

SECRET = "whsec_" + base64.b64encode(b"ringwatch-bench-secret-012345678").decode()


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0
    accepted = 0
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        with _Receiver.lock:
            _Receiver.connections += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        with _Receiver.lock:
            _Receiver.accepted += 1
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def make_alerts(n: int) -> list[Alert]:
    return [Alert(alert_id=alert_id(f"tx{i}", (f"a{i}", f"b{i}")), trigger_tx_id=f"tx{i}", accounts=(f"a{i}", f"b{i}"),
                  tx_ids=(f"p{i}", f"tx{i}"), hops=2, total_amount=1_000 + i, first_ts=i, last_ts=i + 1,
                  detected_at=i + 2, latency_ms=1.0) for i in range(n)]


def kept_alive(url: str, alerts: list[Alert]) -> float:
    with tempfile.TemporaryDirectory() as state:
        sink = WebhookSink(url, SECRET, Path(state))
        try:
            began = time.perf_counter()
            for start in range(0, len(alerts), 50):  # the engine hands over a batch's alerts at once
                sink.deliver(alerts[start:start + 50])
            if not sink.flush(600):
                raise RuntimeError("the sink did not drain its outbox in 600 s")
            return time.perf_counter() - began
        finally:
            sink.close()


def client_only(url: str, alerts: list[Alert]) -> float:
    bodies = [(a.alert_id, a.to_json().encode()) for a in alerts]
    with WebhookClient(url, SECRET) as client:
        began = time.perf_counter()
        for message_id, body in bodies:
            if not client.post(message_id, body).delivered:
                raise RuntimeError("the receiver refused a post")
        return time.perf_counter() - began


def per_request(port: int, alerts: list[Alert], tls: bool) -> float:
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    bodies = [(a.alert_id, a.to_json().encode()) for a in alerts]
    began = time.perf_counter()
    for message_id, body in bodies:
        timestamp = int(time.time())
        connection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl.create_default_context())
                      if tls else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
        try:
            connection.request("POST", "/hook", body=body, headers={
                "content-type": "application/json", "webhook-id": message_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(key, message_id, timestamp, body)})
            connection.getresponse().read()
        finally:
            connection.close()
    return time.perf_counter() - began


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def measure(alerts: list[Alert], rounds: int, tls: bool, directory: Path) -> list[tuple[str, float, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    if tls:
        cert, key = self_signed(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        os.environ["SSL_CERT_FILE"] = str(cert)  # both clients load the default CAs, which honour it
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/hook"
    runs = {"sink": lambda: kept_alive(url, alerts), "client": lambda: client_only(url, alerts),
            "per request": lambda: per_request(port, alerts, tls)}
    best: dict[str, tuple[float, int]] = {}
    try:
        for _ in range(rounds):
            for name, run in runs.items():
                before = _Receiver.connections
                seconds = run()
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, _Receiver.connections - before)
    finally:
        server.shutdown()
        os.environ.pop("SSL_CERT_FILE", None)
    return [(name, *best[name]) for name in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    alerts = make_alerts(args.alerts)
    with tempfile.TemporaryDirectory() as directory:
        for tls in (False, True):
            figures = measure(alerts, args.rounds, tls, Path(directory))
            print("HTTPS" if tls else "HTTP")
            for name, seconds, connections in figures:
                print(f"  {name:<14}{args.alerts / seconds:8,.0f} alerts/s  ({connections} connection"
                      f"{'s' if connections != 1 else ''})")
            print(f"  {'ratio':<14}{figures[2][1] / figures[1][1]:8.2f}x  (client / per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
