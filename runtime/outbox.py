"""A worker's messages to its node: written at once, except results held briefly while more calls are queued.

Every message the node reads costs its dispatcher a turn (a wake-up, a read,
a pass over its parts): on a busy node that, not the work, is what a short
call costs. A worker that finishes a call while more calls handed to it are
already queued therefore holds the result and sends it with the next ones, in
one write the node reads in one turn. Held results never wait long: any other
message to the node writes them first (so order is kept, and a nested `get`
or a checkpoint never waits behind them); the worker writes them before it
starts a call once the oldest has waited `HOLD_S`, and before it runs out of
queued calls (so the node sees in time that the worker needs more); and a
flusher thread writes them within `LATE_S` when a call runs long, so a caller
waiting on a result is never left behind a call that blocks.

Frames follow `multiprocessing.connection` (4-byte big-endian length, or -1
and an 8-byte length, then the pickle), which `workers.WorkerPipe` reads.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection

logger = logging.getLogger(__name__)

HOLD_S = 0.002  # results older than this are written before the worker starts its next call
LATE_S = 0.01  # the longest a result waits while a call runs long: latency added to an alert path
PARK_S = 1.0  # the flusher parks once nothing has been held for this long
MAX_HELD = 32  # results held at most: written together once this many have gathered

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")


def frame(message: tuple) -> bytes:
    """One message as it travels on a worker's pipe (either way)."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    size = len(payload)
    header = _SHORT.pack(size) if size <= 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(size)
    return header + payload


class Outbox:
    """The worker's end of its pipe, for writing; used by the worker's main thread and its flusher thread."""

    def __init__(self, conn: Connection):
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._sock.setblocking(True)
        self._lock = threading.Lock()  # one writer at a time: the main thread or the flusher
        self._held = bytearray()
        self._count = 0
        self._since = 0.0  # when the oldest held result was held
        self._armed = threading.Event()  # set while results are being held: the flusher ticks
        threading.Thread(target=self._flusher, name="ringwatch-worker-flush", daemon=True).start()

    def send(self, message: tuple) -> None:
        """Write a message now, after the results held (raises OSError when the node is gone)."""
        data = frame(message)
        with self._lock:
            if self._count:
                data = bytes(self._held) + data
                self._clear()
            self._sock.sendall(data)

    def hold(self, message: tuple) -> None:
        """Keep a result to send with the next write (at once when `MAX_HELD` have gathered)."""
        data = frame(message)
        with self._lock:
            self._held += data
            self._count += 1
            if self._count == 1:
                self._since = time.monotonic()
                if not self._armed.is_set():
                    self._armed.set()
            if self._count >= MAX_HELD:
                self._write_held()

    def flush(self, *, due_only: bool = False) -> None:
        """Write the results held (only once the oldest has waited `HOLD_S`, with `due_only`)."""
        if not self._count or (due_only and time.monotonic() - self._since < HOLD_S):
            return
        with self._lock:
            if self._count:
                self._write_held()

    def _write_held(self) -> None:
        data = bytes(self._held)
        self._clear()
        self._sock.sendall(data)

    def _clear(self) -> None:
        self._held.clear()
        self._count = 0

    def _flusher(self) -> None:
        """Write held results that a long or blocked call would keep waiting (at most `LATE_S`).

        While the worker is busy it ticks every `LATE_S` / 2 and is never woken
        by the main thread (woken per batch, it cost workers 7-22 us a call in
        bench/runtime_micro.py's 1 ms rows); it parks once nothing has been held
        for `PARK_S`.
        """
        tick = LATE_S / 2
        while True:
            self._armed.wait()
            time.sleep(tick)
            with self._lock:
                now = time.monotonic()
                if self._count and now - self._since >= tick:
                    try:
                        self._write_held()
                    except OSError:  # the node is gone: the main thread finds out on its next read or write
                        self._clear()
                elif not self._count and now - self._since > PARK_S:
                    self._armed.clear()
