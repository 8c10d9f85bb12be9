"""What signed gRPC costs: `runtime.rpc` against plain, unsigned gRPC in the same process and run.

Rows:
  small call   a 200-byte request and answer, one call at a time (microseconds per call)
  50 MB each   a 50 MB request and a 50 MB answer (MB/s of payload, both ways)

The baseline is what node calls were before they were signed: one unary method,
1 GiB message limit, the token compared from metadata. The signed side signs
and checks every request (HMAC over method, audience, time, nonce, body SHA-256),
seals every answer, and moves bodies over 2 MiB in 1 MiB chunks.

Run: python bench/rpc_auth.py [--n 2000] [--mb 50] [--tls]
"""

from __future__ import annotations

import argparse
import hmac
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc

from ringwatch.runtime.auth import derive_key
from ringwatch.runtime.rpc import SignedChannel, SignedServer

_PLAIN_OPTIONS = [("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)]
_TOKEN = "bench-token"


def _best(run: Callable[[], None], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def plain_pair() -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        sent = dict(context.invocation_metadata()).get("x-ringwatch-token", "")
        if not hmac.compare_digest(sent.encode(), _TOKEN.encode()):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no")
        return request
    server = grpc.server(futures.ThreadPoolExecutor(16), options=_PLAIN_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Plain", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_PLAIN_OPTIONS)
    stub = channel.unary_unary("/bench.Plain/Echo")

    def close() -> None:
        channel.close()
        server.stop(0)
    return (lambda body: stub(body, metadata=(("x-ringwatch-token", _TOKEN),))), close


def signed_pair(tls) -> tuple[Callable[[bytes], bytes], Callable[[], None]]:
    key = derive_key(_TOKEN, "bench")
    server = SignedServer("bench.Signed", {"Echo": lambda body: body}, key, tls=tls).start()
    channel = SignedChannel(server.address, "bench.Signed", key, tls=tls)

    def close() -> None:
        channel.close()
        server.stop(0)
    return (lambda body: channel.call("Echo", body)), close


def measure(call: Callable[[bytes], bytes], n: int, mb: int) -> dict[str, float]:
    small, large = b"x" * 200, b"y" * (mb << 20)
    for _ in range(200):
        call(small)
    per_call = _best(lambda: [call(small) for _ in range(n)]) / n
    assert call(large) == large
    large_s = _best(lambda: call(large))
    return {"small call us": per_call * 1e6, f"{mb} MB each MB/s": 2 * mb / large_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="small calls per run (default 2000)")
    parser.add_argument("--mb", type=int, default=50, help="size of the large request and answer (default 50)")
    parser.add_argument("--tls", action="store_true", help="the signed side also uses TLS with client certificates")
    args = parser.parse_args()
    tls = None
    if args.tls:
        import sys
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tls_certs import CertificateAuthority
        tls = CertificateAuthority.create(Path(tempfile.mkdtemp()), "bench-ca").issue("bench")
    rows = {}
    for name, make in (("plain", plain_pair), ("signed" + (" + TLS" if tls else ""), lambda: signed_pair(tls))):
        call, close = make()
        try:
            rows[name] = measure(call, args.n, args.mb)
        finally:
            close()
    plain, signed = rows.values()
    print(f"{'':<18}{'plain':>12}{list(rows)[1]:>16}{'ratio':>10}")
    for metric in plain:
        print(f"{metric:<18}{plain[metric]:>12,.1f}{signed[metric]:>16,.1f}{signed[metric] / plain[metric]:>10.2f}")


if __name__ == "__main__":
    main()
