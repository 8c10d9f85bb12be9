"""Direct channels (runtime/direct.py) on real loopback sockets: a peer that stops reading stalls no one else."""

from __future__ import annotations

import queue
import threading

from ringwatch.runtime.direct import DirectClients, DirectServer, direct_key

KEY = direct_key(b"a cluster's node-call key, 32 b.")
ANSWER = b"x" * 65_536


def test_a_worker_keeps_answering_while_one_caller_stops_reading():
    """One thread answers every channel, as an actor's worker does. A caller that stops reading (its node
    frozen) is owed 64 MB of answers, far more than sockets buffer; another caller still gets its answer."""
    inbox: queue.Queue = queue.Queue()
    server = DirectServer("127.0.0.1", KEY, lambda channel, message: inbox.put((channel, message)),
                          lambda channel: None)

    def answer() -> None:
        while True:
            channel, count = inbox.get()
            for _ in range(count):
                try:
                    channel.send(ANSWER)
                except OSError:
                    break

    threading.Thread(target=answer, daemon=True).start()
    first_answer, frozen = threading.Event(), threading.Event()

    def stalled_post(kind: str, args: tuple) -> None:
        first_answer.set()
        frozen.wait()  # its reader never reads again while the test runs

    replies: queue.Queue = queue.Queue()
    stalled = DirectClients(KEY, stalled_post)
    other = DirectClients(KEY, lambda kind, args: replies.put((kind, args)))
    try:
        stalled.send(server.address, 1000)
        assert first_answer.wait(60)
        other.send(server.address, 1)

        kind, (address, reply) = replies.get(timeout=60)

        assert (kind, address, reply) == ("direct_reply", server.address, ANSWER)
    finally:
        frozen.set()
        stalled.close()
        other.close()
        server.close()
