"""A node's worker processes: started, connected back over an authenticated Unix socket, fed calls, stopped.

Workers are plain subprocesses that connect back to their node (so a driver's
`__main__` is never re-imported). The pool knows each worker's connection and
the calls handed to it; what to hand and what a message means is up to the
scheduler and the actor manager. Used on the node's dispatcher thread, except
the acceptor thread, which only posts new connections to it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener

from .direct import DirectSettings
from .functions import FunctionTable
from .objects import ObjectTable
from .outbox import frame
from .protocol import TaskSpec, new_id

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    """One worker process: a pool worker for tasks, or the home of one actor (`actor_id`)."""

    worker_id: str
    process: subprocess.Popen
    conn: Connection | None = None
    actor_id: str | None = None
    in_flight: deque[TaskSpec] = field(default_factory=deque)  # handed to it, not finished, in order
    parked: set[str] = field(default_factory=set)  # in flight, run, the result waiting for a checkpoint: not busy
    known_functions: set[str] = field(default_factory=set)
    blocked: bool = False  # waiting in a nested get or wait
    pipe: WorkerPipe | None = None  # the node's end of `conn`, read and written without blocking
    direct: str | None = None  # in a cluster: where it takes direct calls (an actor's callers, a lessee)
    lease: str | None = None  # the lease id while another node has it, pushing tasks to it directly

    def take(self, task_id: str) -> TaskSpec | None:
        """Remove and return the in-flight call `task_id` (None if the worker was not running it)."""
        self.parked.discard(task_id)
        for index, spec in enumerate(self.in_flight):
            if spec.task_id == task_id:
                del self.in_flight[index]
                return spec
        return None

    def stop(self) -> None:
        """Ask the process to exit, kill it if it does not, close the pipe."""
        if self.pipe is not None:  # after whatever is still queued for it, if the socket takes it now
            self.pipe.queue(("exit",))
            self.pipe.flush()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        if self.conn is not None:
            self.conn.close()
        if self.pipe is not None:
            self.pipe.close()


class WorkerPipe:
    """The node's end of a worker's pipe, read and written without ever blocking the dispatcher.

    Frames follow `multiprocessing.connection` (4-byte big-endian length, or -1
    and an 8-byte length, then a pickle), which the worker's `Connection` reads
    and writes. Reads take whatever has arrived in one system call. Writes are
    queued (`queue`) and written once per dispatcher turn (`flush`), so the
    calls and answers a turn makes for one worker cost one system call; what the
    socket does not take at once (a worker busy in a long call does not read)
    stays in the outbox until it does, and the dispatcher watches for that.
    """

    _SHORT = struct.Struct("!i")
    _LONG = struct.Struct("!Q")

    def __init__(self, fd: int):
        self._sock = socket.socket(fileno=os.dup(fd))
        self._buffer = bytearray()
        self._start = 0
        self._outbox = bytearray()

    def read(self) -> tuple[list, bool]:
        """(messages complete so far, False if the other end has gone)."""
        alive = True
        while True:
            try:
                chunk = self._sock.recv(1 << 18, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                alive = False
                break
            if not chunk:
                alive = False
                break
            self._buffer += chunk
            if len(chunk) < 1 << 18:
                break
        return self._frames(), alive

    def _frames(self) -> list:
        messages, buffer, start = [], self._buffer, self._start
        while len(buffer) - start >= 4:
            (size,) = self._SHORT.unpack_from(buffer, start)
            header = 4
            if size == -1:
                if len(buffer) - start < 12:
                    break
                (size,) = self._LONG.unpack_from(buffer, start + 4)
                header = 12
            end = start + header + size
            if len(buffer) < end:
                break
            messages.append(pickle.loads(memoryview(buffer)[start + header:end]))
            start = end
        if start == len(buffer):
            buffer.clear()
            start = 0
        elif start > 1 << 20:
            del buffer[:start]
            start = 0
        self._start = start
        return messages

    def queue(self, message: tuple) -> None:
        """Pickle a message into the outbox (written by `flush`); raises what pickling raises."""
        self._outbox += frame(message)

    @property
    def pending(self) -> bool:
        """Bytes queued that the socket has not taken yet."""
        return bool(self._outbox)

    def flush(self) -> bool:
        """Write what the socket takes now; False if the pipe broke (what is queued is dropped)."""
        while self._outbox:
            try:
                sent = self._sock.send(self._outbox, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                self._outbox.clear()
                return False
            del self._outbox[:sent]
        return True

    def close(self) -> None:
        self._outbox.clear()
        self._sock.close()


class WorkerPool:
    """The node's worker processes and their pipes."""

    def __init__(self, node_id: str, log_level: int, post: Callable[[str, tuple], None],
                 functions: FunctionTable, objects: ObjectTable, direct: DirectSettings | None = None):
        self.node_id = node_id
        self._direct = direct  # in a cluster: workers serve direct calls (actors' callers, lessees)
        self._log_level = log_level
        self._post = post
        self._functions = functions
        self._objects = objects
        # Workers connect back on a private Unix socket, authenticated with a per-node key.
        self._socket_dir = tempfile.mkdtemp(prefix="ringwatch-node-")
        self._key = secrets.token_bytes(32)
        self._listener = Listener(os.path.join(self._socket_dir, "workers.sock"), family="AF_UNIX", authkey=self._key)
        self._connecting: dict[str, Worker] = {}
        self._unflushed: dict[str, Worker] = {}  # worker id -> a worker with messages queued, not all written
        self._closing = False
        self.workers: list[Worker] = []
        self.version = 0  # changes whenever a worker's pipe comes or goes
        self.started = 0
        self._acceptor = threading.Thread(target=self._accept, name="ringwatch-node-accept", daemon=True)
        self._acceptor.start()

    # ---- processes ---------------------------------------------------------------------------

    def start(self, actor_id: str | None = None) -> Worker:
        """Launch a worker process; it becomes usable when it has connected back (`connected`)."""
        worker_id = new_id()
        info = {"address": self._listener.address, "worker_id": worker_id, "node_id": self.node_id,
                "log_level": self._log_level, "actor_id": actor_id}
        # Workers see the driver's import path, so functions pickled by reference import there too.
        env = {**os.environ, "RINGWATCH_WORKER_KEY": self._key.hex(),
               "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        if self._direct is not None:
            info["direct"] = self._direct.worker_info()
            env["RINGWATCH_DIRECT_KEY"] = self._direct.key.hex()
        env["RINGWATCH_WORKER_INFO"] = json.dumps(info)
        process = subprocess.Popen([sys.executable, "-c", "from ringwatch.runtime.worker import main; main()"],
                                   env=env, stdin=subprocess.DEVNULL)
        worker = Worker(worker_id, process, None, actor_id)
        self.workers.append(worker)
        self._connecting[worker_id] = worker
        self.started += 1
        return worker

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
                hello = conn.recv()
            except (OSError, EOFError):
                if self._closing:
                    return
                continue
            if isinstance(hello, tuple) and hello[:1] == ("hello",):
                self._post("connected", (hello[1], conn, hello[2]))
            else:
                conn.close()

    def connected(self, worker_id: str, conn: Connection, direct: str | None) -> None:
        worker = self._connecting.pop(worker_id, None)
        if worker is None:
            conn.close()
            return
        worker.conn = conn
        worker.direct = direct
        self.version += 1
        worker.pipe = WorkerPipe(conn.fileno())

    def exited_before_connecting(self) -> list[Worker]:
        """Workers whose process ended before it connected back (the caller treats them as died)."""
        gone = [w for w in self._connecting.values() if w.process.poll() is not None]
        for worker in gone:
            del self._connecting[worker.worker_id]
            logger.error("worker process exited with code %s before connecting", worker.process.returncode)
        return gone

    def remove(self, worker: Worker) -> bool:
        """Take a worker out of the pool and stop its process; False if it was gone already."""
        if worker not in self.workers:
            return False
        self._unflushed.pop(worker.worker_id, None)
        self.workers.remove(worker)
        worker.stop()
        self.version += 1
        return True

    def shutdown(self) -> None:
        self._closing = True
        for worker in [*self.workers, *self._connecting.values()]:
            worker.stop()
        self._listener.close()

    # ---- pipes -------------------------------------------------------------------------------

    @staticmethod
    def drain(worker: Worker) -> tuple[list[tuple], bool]:
        """The messages waiting on the worker's pipe, and False if the pipe broke (the worker died).

        One non-blocking read takes whatever has arrived; the frames in it are
        cut out here (the worker sends with `multiprocessing.connection`, whose
        framing this follows), so a burst of results costs one system call.
        """
        return worker.pipe.read()

    def runnable(self, worker: Worker, spec: TaskSpec) -> tuple:
        """A call as the worker runs it: the code the first time the worker sees it, and the inputs' values.

        Raises ObjectLostError when the code is registered nowhere.
        """
        code = None
        if spec.function_id is not None and spec.function_id not in worker.known_functions:
            code = self._functions.code_of(spec.function_id)
            worker.known_functions.add(spec.function_id)
        return spec, code, {d: self._objects.value_for_worker(d) for d in spec.deps}

    def send(self, worker: Worker, message: tuple) -> None:
        """Queue a message for the worker; `flush` writes it, at the end of the dispatcher's turn."""
        worker.pipe.queue(message)
        self._unflushed[worker.worker_id] = worker

    def flush(self) -> list[Worker]:
        """Write what is queued for each worker, as far as its socket takes it now; the workers whose pipe broke.

        A worker whose socket is full keeps the rest (`unflushed`): the dispatcher
        waits for its socket to take more, then flushes again.
        """
        broken = []
        for worker_id, worker in list(self._unflushed.items()):
            if worker.pipe is None or not worker.pipe.flush():
                broken.append(worker)
            if worker.pipe is None or not worker.pipe.pending:
                del self._unflushed[worker_id]
        return broken

    def unflushed(self) -> list[Worker]:
        """Workers with messages their socket has not taken yet."""
        return list(self._unflushed.values())

    def task_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.actor_id is None]
