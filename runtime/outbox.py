"""A worker's messages to its node: written at once, except results held briefly while more calls are queued.

Every message the node reads costs its dispatcher a turn (a wake-up, a read,
a pass over its parts): on a busy node that, not the work, is what a short
call costs. A worker that finishes a call while more calls handed to it are
already queued therefore holds the result and sends it with the next ones, in
one message the node reads in one turn. Held results never wait long: any other
message to the node writes them first (so order is kept, and a nested `get`
or a checkpoint never waits behind them); the worker writes them before it
starts a call once it has run `HOLD_S` of CPU time since the oldest was held,
and before it runs out of queued calls (so the node sees in time that the
worker needs more); and a one-shot timer (`SIGALRM`, set when the first
result is held) looks every `LATE_S`: once the worker has blocked since the
oldest was held (slept, waited for I/O: a voluntary context switch), or has
run `HOLD_S` of CPU in a call that runs long, it writes them, so a caller
waiting on a result is never left behind a call that blocks.

The hold is counted in the worker's CPU time, not wall time: time a worker
spends waiting for a core does not count. Where workers outnumber cores (8
actors on 2 cores), a worker is preempted every few calls; counted in wall
time, the wait for the core made results due, and the worker wrote them the
moment it ran again — most writes were that one (0.36 of 0.46 writes per
1 ms call, bench/runtime_micro.py's 8 actors x 1 ms calls under load). Every
write wakes the node's dispatcher, which on a busy node costs it ~100 us of
CPU with cold caches. Counted in CPU time, a worker writes about once per
`HOLD_S` of its own work. The price: while workers outnumber the free cores,
a result with more calls queued behind it waits for its worker's next
`HOLD_S` of CPU, which takes longer in wall time (8 busy workers sharing 2
cores each run a quarter of the time: ~30 ms rather than ~10). A caller that waits for each result before
the next call never waits: nothing is queued behind its call.

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
import resource
import signal
import socket
import struct
import threading
import time
from multiprocessing.connection import Connection

logger = logging.getLogger(__name__)

HOLD_S = 0.008  # CPU time the worker runs (its own calls) while it holds a result, at most
LATE_S = 0.01  # how often the timer looks whether a held result waits behind a call that blocked or runs long
RETRY_S = 0.001  # the timer fired while the main thread was writing: look again this much later
MAX_HELD = 32  # results held at most: written together once this many have gathered
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)  # Linux; elsewhere the process's

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
        self._since_cpu = 0.0  # the main thread's CPU time when the oldest held result was held
        self._since_switches = 0  # its voluntary context switches (times it blocked) by then
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
                    self._since_cpu = time.thread_time()
                    self._since_switches = _blocked_count()
                return
            self._write_held()

    def flush(self, *, due_only: bool = False) -> None:
        """Write the results held (with `due_only`: once the worker has run `HOLD_S` of CPU since the oldest)."""
        if not self._held or (due_only and time.thread_time() - self._since_cpu < HOLD_S):
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
        """The timer: write what a call that blocked or runs long keeps waiting.

        Set when a result is held and none was, it is not cancelled when the
        held results are written (two system calls per batch): it looks, and
        sets itself again while results are held that need not go yet (those
        of a worker that has only been running or waiting for a core).
        """
        if not self._lock.acquire(blocking=False):  # a write is under way (perhaps the one interrupted)
            signal.setitimer(signal.ITIMER_REAL, RETRY_S)
            return
        try:
            self._armed = False
            if not self._held:
                return
            if time.thread_time() - self._since_cpu < HOLD_S and _blocked_count() == self._since_switches:
                self._armed = True
                signal.setitimer(signal.ITIMER_REAL, LATE_S)
                return
            try:
                self._write_held()
            except OSError:  # the node is gone: the main thread finds out on its next read or write
                self._held = []
        finally:
            self._lock.release()


def _blocked_count() -> int:
    """How many times the calling thread has blocked (its voluntary context switches)."""
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw
