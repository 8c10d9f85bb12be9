"""ringwatch from Python, end to end: stream payments through the engine, then ask it questions.

    python demos/quickstart.py

The engine runs on a thread (local runtime, shard actors, search tasks) and
serves its query service on loopback; the `Client` is what any other process
would use, with the same token.
"""

import os
import secrets
import tempfile
import threading

from ringwatch.connectors.embedded_broker import free_port
from ringwatch.stream import Client, EngineUnreachableError, run_demo

os.environ.setdefault("RINGWATCH_TOKEN", secrets.token_hex(16))  # the cluster token every query carries
port, keep_serving = free_port(), threading.Event()
engine = threading.Thread(target=run_demo, args=(tempfile.mkdtemp(),), kwargs=dict(
    transactions=5_000, accounts=1_000, rings=5, query_port=port, serve=keep_serving))
engine.start()

with Client(f"127.0.0.1:{port}") as client:
    while engine.is_alive():  # wait until the engine is up and has taken every payment
        try:
            if client.health().transactions == 5_000:
                break
        except EngineUnreachableError:
            pass
        engine.join(0.2)
    stats = client.stats()
    print(f"{stats.transactions} payments, {stats.alerts} alerts, latency p50 {stats.latency_ms['p50']:.0f} ms")
    newest = client.alerts(limit=3)
    for alert in newest:
        print("ring:", " -> ".join(alert.accounts), f"({alert.total_amount:,.2f} {alert.currency})")
    suspect = newest[0].accounts[0]
    print("rings through", suspect, "now:", len(client.rings_through(suspect, window="7d")))
    print("it paid:", [n.account for n in client.neighbors(suspect, direction="out", hops=1)])
    print("account:", client.account(suspect))
    graph = client.subgraph([suspect], hops=1)  # a networkx.MultiDiGraph of the payments around it
    print(f"subgraph: {graph.number_of_nodes()} accounts, {graph.number_of_edges()} payments")

keep_serving.set()
engine.join()
