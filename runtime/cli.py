"""`ringwatch node start` and `ringwatch status`: run a cluster node, look at the cluster."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .auth import ClusterKeys, query_token_for
from .errors import TlsConfigError, TokenMissingError
from .heartbeats import HEARTBEAT_S, HEARTBEAT_TIMEOUT_S

if TYPE_CHECKING:
    from .gcs import RedisGcs
    from .tls import TlsFiles

logger = logging.getLogger(__name__)


def read_token(token_file: str | None) -> str:
    """The cluster token from `--token-file`, else RINGWATCH_TOKEN."""
    if token_file:
        token = Path(token_file).read_text().strip()
    else:
        token = os.environ.get("RINGWATCH_TOKEN", "").strip()
    if not token:
        raise TokenMissingError("the cluster token is missing: pass --token-file FILE or set RINGWATCH_TOKEN")
    return token


def read_query_token(token_file: str | None) -> str:
    """The read-only query token: from `token_file`, else RINGWATCH_QUERY_TOKEN, else derived from RINGWATCH_TOKEN.

    A query token cannot be turned back into the cluster token, so whoever holds
    it can query an engine but cannot run code on the cluster.
    """
    if token_file:
        token = Path(token_file).read_text().strip()
    else:
        token = os.environ.get("RINGWATCH_QUERY_TOKEN", "").strip()
        cluster_token = os.environ.get("RINGWATCH_TOKEN", "").strip()
        if not token and cluster_token:
            token = query_token_for(cluster_token)
    if not token:
        raise TokenMissingError("the query token is missing: pass --token-file FILE, set RINGWATCH_QUERY_TOKEN, "
                                "or set RINGWATCH_TOKEN to derive it from the cluster token")
    return token


def register_node(subparsers: argparse._SubParsersAction) -> None:
    node = subparsers.add_parser("node", help="run a runtime node of a cluster",
                                 description="Run a node of a ringwatch cluster whose GCS lives in Redis.")
    actions = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start a node in the foreground (SIGTERM leaves the cluster cleanly)")
    start.add_argument("--address", required=True, help="the GCS: redis://HOST:PORT")
    start.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default 127.0.0.1: a node runs pickled code it is sent)")
    start.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    start.add_argument("--workers", type=int, default=os.cpu_count(), help="worker processes (default: CPUs)")
    start.add_argument("--resources", type=json.loads, default={}, help='extra resources, e.g. \'{"gpu": 1}\'')
    start.add_argument("--namespace", default="default", help="GCS namespace (clusters sharing a Redis)")
    start.add_argument("--token-file", help="file holding the cluster token (else RINGWATCH_TOKEN)")
    start.add_argument("--node-id", help="name of this node (default: host, pid and a random suffix)")
    start.add_argument("--heartbeat-interval", type=float, default=HEARTBEAT_S, metavar="SECONDS",
                       help=f"seconds between heartbeats into the GCS (default {HEARTBEAT_S})")
    start.add_argument("--heartbeat-timeout", type=float, default=HEARTBEAT_TIMEOUT_S, metavar="SECONDS",
                       help=f"a node silent this long is declared dead (default {HEARTBEAT_TIMEOUT_S})")
    add_tls_options(start, "node gRPC (peers and drivers must present a certificate from the same CA)")
    start.set_defaults(handler=start_node)


def add_tls_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--tls-cert/--tls-key/--tls-ca (default RINGWATCH_TLS_CERT/KEY/CA): all three turn TLS on."""
    group = parser.add_argument_group("TLS", f"TLS with client certificates for {what}; "
                                              "defaults from RINGWATCH_TLS_CERT, RINGWATCH_TLS_KEY, RINGWATCH_TLS_CA")
    group.add_argument("--tls-cert", metavar="PEM", help="this party's certificate (chain)")
    group.add_argument("--tls-key", metavar="PEM", help="its private key")
    group.add_argument("--tls-ca", metavar="PEM", help="the CA every certificate of the cluster is signed by")


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files from the options, else from the environment; TlsConfigError names what is wrong."""
    from .tls import TlsFiles  # grpc: imported by the commands that run, not by `ringwatch --help`

    return TlsFiles.from_options(args.tls_cert, args.tls_key, args.tls_ca) or TlsFiles.from_env()


def start_node(args: argparse.Namespace) -> int:
    import redis

    from .cluster import ClusterNode

    try:
        token = read_token(args.token_file)
        tls = tls_from_args(args)
    except (TokenMissingError, TlsConfigError, OSError) as exc:
        print(f"ringwatch node start: {exc}", file=sys.stderr)
        return 2
    try:
        node = ClusterNode(args.address, token=token, host=args.host, port=args.port, num_workers=args.workers,
                           resources=args.resources, namespace=args.namespace, node_id=args.node_id,
                           heartbeat_s=args.heartbeat_interval, heartbeat_timeout_s=args.heartbeat_timeout, tls=tls)
    except (OSError, redis.RedisError) as exc:
        print(f"ringwatch node start: {_unreachable(args.address, exc)}", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: node.stop())
    print(json.dumps({"node_id": node.node_id, "address": node.address}), flush=True)
    node.wait()
    node.stop()
    return 0


def _unreachable(address: str, exc: BaseException) -> str:
    """One line for a failure to reach the GCS (a Redis error) or to listen (an OSError)."""
    import redis

    if isinstance(exc, redis.RedisError):
        return f"cannot reach the GCS at {address}: {exc}"
    return str(exc)


class StatusSection(Protocol):
    """More to show in `ringwatch status`, read from the cluster's GCS by whoever knows what it means."""

    name: str

    def collect(self, gcs: RedisGcs) -> Any:
        """What to show, as JSON-ready data (read with the token-checked GCS client)."""
        ...

    def render(self, data: Any) -> list[str]:
        """`data` as lines for people."""
        ...


def register_status(subparsers: argparse._SubParsersAction, sections: Sequence[StatusSection] = ()) -> None:
    """`ringwatch status`; `sections` add what layers above the runtime keep in the GCS (the engines' checkpoints)."""
    status = subparsers.add_parser("status", help="show the nodes and actors of a cluster",
                                   description="Show every node (alive or dead, resources, load) and actor.")
    status.add_argument("--address", required=True, help="the GCS: redis://HOST:PORT")
    status.add_argument("--namespace", default="default", help="GCS namespace")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--token-file", help="file holding the cluster token (else RINGWATCH_TOKEN); records "
                                             "are shown only once their seal proves the cluster wrote them")
    status.set_defaults(handler=functools.partial(show_status, sections=tuple(sections)))


def show_status(args: argparse.Namespace, sections: Sequence[StatusSection] = ()) -> int:
    import redis

    from .gcs import RedisGcs

    try:
        token = read_token(args.token_file)
    except (TokenMissingError, OSError) as exc:
        print(f"ringwatch status: {exc}", file=sys.stderr)
        return 2
    gcs: RedisGcs | None = None
    try:
        gcs = RedisGcs(args.address, args.namespace, keys=ClusterKeys.from_token(token))
        nodes = gcs.nodes(HEARTBEAT_TIMEOUT_S)
        now = time.time()
        actors = [{**a, "checkpoint_age_s": now - a["checkpoint_at"] if a.get("checkpoint_at") else None}
                  for a in gcs.actors()]
        extra = {section.name: section.collect(gcs) for section in sections}
    except redis.RedisError as exc:
        print(f"ringwatch status: {_unreachable(args.address, exc)}", file=sys.stderr)
        return 1
    finally:
        if gcs is not None:
            gcs.close()
    if args.json:
        print(json.dumps({"nodes": nodes, "actors": actors, **extra}, indent=2))
        return 0
    print(f"{'node':<28} {'state':<6} {'address':<22} {'queued':>6} {'objects':>8} {'shared MB':>10}  resources")
    for n in sorted(nodes, key=lambda n: n["node_id"]):
        state = "alive" if n["alive"] else "dead"
        print(f"{n['node_id']:<28} {state:<6} {n['address']:<22} {n.get('queued', 0):>6} {n.get('objects', 0):>8} "
              f"{n.get('shared_bytes', 0) / 1e6:>10.1f}  {n['resources']}")
    print(f"\n{len(actors)} actors")
    for a in actors:
        age = "never" if a["checkpoint_age_s"] is None else f"{a['checkpoint_age_s']:.1f} s ago"
        print(f"  {a.get('class_name', '?'):<20} {a.get('name') or a['actor_id'][:12]:<24} {a.get('state'):<10} "
              f"on {a.get('node')}  restarts {a.get('restarts', 0)}/{a.get('max_restarts', 0)}  checkpoint {age}")
    for section in sections:
        print()
        for line in section.render(extra[section.name]):
            print(line)
    return 0
