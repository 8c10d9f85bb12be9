"""A worker's messages to its node: written at once, except results held briefly while more calls are queued.

Every message the node reads costs its dispatcher a turn (a wake-up, a read,
a pass over its parts): on a busy node that, not the work, is what a short
call costs. A worker that finishes a call while more calls handed to it are
already queued therefore holds the result and sends it with the next ones, in
one message the node reads in one turn. Held results never wait long: any other
message to the node writes them first (so order is kept, and a nested `get`
or a checkpoint never waits behind them); the worker writes them before it
starts a call once the oldest has waited `HOLD_S`, and before it runs out of
queued calls (so the node sees in time that the worker needs more); and when a
call runs long or blocks, a one-shot timer (`SIGALRM`, set when the first
result is held) writes them once the oldest has waited `LATE_S`, so a caller
waiting on a result is never left behind a call that blocks.

`HOLD_S` is close to `LATE_S`: every write wakes the node's dispatcher, and
on a busy node each wake-up costs it ~100 us of CPU with cold caches (8 actors
x 1 ms calls on 2 cores: 0.5 wake-ups per call at 2 ms, 0.2-0.3 at 8 ms with
long worker slices, `cpu_slice.py`). Only results with more calls queued
behind them wait: a caller that waits for each result before the next call
never does.

A timer rather than a flusher thread: a thread had to wake to look, and take
the GIL from the busy main thread to do it — with 8 actors on 2 cores its
ticks were ~1.5 wake-ups and 20-35 us of CPU per 1 ms call
(bench/runtime_micro.py); the timer fires at most once per `LATE_S` while
results are held, on the main thread, which needs no wake-up. Task code that installs its own `SIGALRM` handler
turns holding off (results then go at once); the worker process's `SIGALRM`
is otherwise the runtime's.

Frames follow `multiprocessing.connection` (4-byte big-endian length, or -1
and an 8-byte length, then the pickle), which `workers.WorkerPipe` reads.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection

logger = logging.getLogger(__name__)

HOLD_S = 0.008  # results older than this are written before the worker starts its next call
LATE_S = 0.01  # the longest a result waits while a call runs long: latency added to an alert path
RETRY_S = 0.001  # the timer fired while the main thread was writing: look again this much later
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
    """The worker's end of its pipe, for writing; made on the worker's main thread (it owns `SIGALRM`).

    Writes take a lock (task code may use the runtime from threads of its
    own); the timer's handler runs on the main thread between two bytecodes,
    possibly inside a write, so it never waits for the lock: it looks again
    `RETRY_S` later.
    """

    def __init__(self, conn: Connection):
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._sock.setblocking(True)
        self._lock = threading.Lock()  # one writer at a time
        self._held: list[tuple] = []  # results not written yet, oldest first
        self._since = 0.0  # when the oldest held result was held
        self._armed = False  # the timer is set
        self._on_alarm = self._late  # one bound method: `result` checks it is still the handler
        signal.signal(signal.SIGALRM, self._on_alarm)

    def send(self, message: tuple) -> None:
        """Write a message now, after the results held (raises OSError when the node is gone)."""
        data = frame(message)
        with self._lock:
            if self._held:
                data = self._take_held() + data
            self._sock.sendall(data)

    def result(self, result: tuple, *, hold: bool) -> None:
        """A call's result for the node: kept for the next write with `hold` (at once once `MAX_HELD` have
        gathered), else written now with those held before it, all in one message.

        Written at once, held nothing, when task code has taken `SIGALRM`: no timer would bound the wait.
        """
        with self._lock:
            held = self._held
            held.append(result)
            if hold and len(held) < MAX_HELD:
                if len(held) == 1:
                    if not self._armed:
                        if signal.getsignal(signal.SIGALRM) is not self._on_alarm:
                            self._write_held()
                            return
                        self._armed = True
                        signal.setitimer(signal.ITIMER_REAL, LATE_S)
                    self._since = time.monotonic()
                return
            self._write_held()

    def flush(self, *, due_only: bool = False) -> None:
        """Write the results held (only once the oldest has waited `HOLD_S`, with `due_only`)."""
        if not self._held or (due_only and time.monotonic() - self._since < HOLD_S):
            return
        with self._lock:
            if self._held:
                self._write_held()

    def _take_held(self) -> bytes:
        """The results held, framed as one `done` message; none are held afterwards."""
        data = frame(("done", self._held))
        self._held = []
        return data

    def _write_held(self) -> None:
        self._sock.sendall(self._take_held())

    def _late(self, signum: int, _frame: object) -> None:
        """The timer: write what a long or blocked call keeps waiting (the oldest at `LATE_S`).

        Set when a result is held and none was, it is not cancelled when the
        held results are written (two system calls per batch): it looks, and
        sets itself again for the oldest result held by then, if any.
        """
        if not self._lock.acquire(blocking=False):  # a write is under way (perhaps the one interrupted)
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        try:
            self._armed = False
            if not self._held:
                return
            left = self._since + LATE_S - time.monotonic()
            if left > 0:  # written and held again since the timer was set: wait for the new oldest
                self._armed = True
                signal.setitimer(signal.ITIMER_REAL, left)
                return
            try:
                self._write_held()
            except OSError:  # the node is gone: the main thread finds out on its next read or write
                self._held = []
        finally:
            self._lock.release()
