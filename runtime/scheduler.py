"""A node's task queue: tasks waiting for their inputs, tasks ready to run, and handing them to pool workers.

Small backlogs go one task per free worker, so nothing waits behind a long
task; large ones go in batches, which is what makes many small tasks cheap.
A worker that blocks in a nested `get` hands back the calls queued to it and
the pool grows by one, so nested tasks cannot deadlock. A task whose worker
dies is retried (`max_retries`). Used on the node's dispatcher thread only.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable

from .errors import ObjectLostError, TaskCancelledError, TaskError
from .objects import ObjectTable
from .protocol import TaskResult, TaskSpec, new_id
from .workers import Worker, WorkerPool

MAX_BATCH = 64  # calls handed to one worker at a time
REFILL_AT = 1  # a worker with this many calls (or fewer) left gets the next batch


class Scheduler:
    """Tasks of one node, from submission (inputs here) to a worker's result."""

    def __init__(self, pool: WorkerPool, objects: ObjectTable, resources: dict[str, float], num_workers: int,
                 finish: Callable[[TaskResult], None], running: Callable[[], bool]):
        self._pool = pool
        self._objects = objects
        self.resources = resources
        self.num_workers = num_workers
        self._finish = finish
        self._running = running
        self._ready: deque[TaskSpec] = deque()
        self._waiting: dict[str, TaskSpec] = {}  # task id -> a task whose inputs are not all here yet
        self._in_use: dict[str, float] = defaultdict(float)
        self._leases: dict[str, tuple[Worker, str]] = {}  # lease id -> (worker, address of the lessee)

    def queued(self) -> int:
        """Tasks ready to run and not yet handed to a worker (what placement compares)."""
        return len(self._ready)

    def waiting(self) -> int:
        return len(self._waiting)

    def enqueue(self, spec: TaskSpec) -> None:
        """Queue a task; it becomes ready once every input's value is on this node."""
        unready = [d for d in spec.deps if not self._objects.is_here(d)]
        if not unready:
            self._ready.append(spec)
            return
        self._waiting[spec.task_id] = spec
        for dep in unready:
            self._objects.on_here(dep, lambda: self._input_arrived(spec))

    def _input_arrived(self, spec: TaskSpec) -> None:
        if spec.task_id in self._waiting and all(self._objects.is_here(d) for d in spec.deps):
            del self._waiting[spec.task_id]
            self._ready.append(spec)

    # ---- handing out -------------------------------------------------------------------------

    def schedule(self) -> None:
        if not self._ready:
            return
        pool = self._pool.task_workers()
        idle = [w for w in pool if w.conn is not None and not w.blocked and w.lease is None
                and len(w.in_flight) <= REFILL_AT]
        blocked = sum(1 for w in pool if w.blocked)
        if blocked and len(pool) - blocked < self.num_workers:
            self._pool.start()  # a worker waiting in get does not count against the pool
        # A small backlog goes one task per free worker, so nothing waits behind a long task;
        # a large one is handed out in batches, which is what makes many small tasks cheap. A
        # worker gets its next batch when it is down to its last call: few messages reach a busy
        # worker (each one costs it a wake-up of its reader thread).
        backlog = len(self._ready) > 4 * max(len(pool), 1)
        idle.sort(key=lambda w: len(w.in_flight))
        for worker in idle:
            if not self._ready:
                break
            if not backlog:
                if not worker.in_flight:
                    self._send_batch(worker, 1)
                continue
            self._send_batch(worker, max(1, min(MAX_BATCH, -(-len(self._ready) // (2 * len(pool))))))

    def _send_batch(self, worker: Worker, count: int) -> None:
        batch = []
        skipped: list[TaskSpec] = []
        while self._ready and len(batch) < count:
            spec = self._ready.popleft()
            if spec.resources and not self._reserve(spec):
                skipped.append(spec)
                continue
            try:
                batch.append(self._pool.runnable(worker, spec))
            except ObjectLostError as exc:
                self._release(spec)
                self._finish(TaskResult(spec.task_id, None, exc))
                continue
            worker.in_flight.append(spec)
        self._ready.extendleft(reversed(skipped))
        if batch:
            self._pool.send(worker, ("run", batch))

    def _reserve(self, spec: TaskSpec) -> bool:
        if any(self._in_use[k] + v > self.resources.get(k, 0.0) for k, v in spec.resources.items()):
            return False
        for key, amount in spec.resources.items():
            self._in_use[key] += amount
        return True

    def _release(self, spec: TaskSpec) -> None:
        for key, amount in spec.resources.items():
            self._in_use[key] -= amount

    # ---- coming back -------------------------------------------------------------------------

    def completed(self, spec: TaskSpec, result: TaskResult) -> bool:
        """A pool worker finished `spec`; True when it is run again (an exception it may retry on)."""
        self._release(spec)
        if result.error is not None and spec.retry_exceptions and spec.attempt < spec.max_retries:
            spec.attempt += 1
            self._ready.append(spec)
            return True
        return False

    def requeue(self, worker: Worker, task_ids: list[str]) -> None:
        """A worker blocked in `get` handed back calls it had not started: they go to the front again."""
        returned = set(task_ids)
        kept: deque[TaskSpec] = deque()
        for spec in worker.in_flight:
            (self._ready.appendleft if spec.task_id in returned else kept.append)(spec)
        worker.in_flight = kept

    def worker_died(self, worker: Worker) -> None:
        """A pool worker's process died: retry its calls (or fail them), and start another worker."""
        if not self._pool.remove(worker):
            return
        if worker.lease is not None:  # its lessee sees the channel break and places its tasks again
            self._leases.pop(worker.lease, None)
        for spec in worker.in_flight:
            self._release(spec)
            if spec.cancelled:
                self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
            elif spec.attempt < spec.max_retries:
                spec.attempt += 1
                self._ready.append(spec)
            else:
                self._finish(TaskResult(spec.task_id, None, TaskError(
                    "WorkerDiedError", f"the worker running it died {spec.attempt + 1} times", "", spec.name)))
        worker.in_flight.clear()
        if self._running():
            self._pool.start()

    # ---- leases --------------------------------------------------------------------------------

    def lease(self, owner: str) -> tuple[str, str] | None:
        """Lend an idle pool worker to the node at `owner`, which pushes tasks to it directly.

        (lease id, the worker's direct address), or None when this node has work
        of its own queued or no idle worker that takes direct calls.
        """
        if self._ready:
            return None
        for worker in self._pool.task_workers():
            if worker.conn is not None and worker.direct and worker.lease is None and not worker.blocked \
                    and not worker.in_flight:
                worker.lease = new_id()
                self._leases[worker.lease] = (worker, owner)
                return worker.lease, worker.direct
        return None

    def end_lease(self, lease_id: str) -> None:
        """The lessee gives the worker back: it takes this node's own tasks again."""
        worker, _ = self._leases.pop(lease_id, (None, None))
        if worker is not None:
            worker.lease = None

    def end_leases_of(self, owner: str) -> None:
        """The lessee is gone: its workers come back."""
        for lease_id, (_, lessee) in list(self._leases.items()):
            if lessee == owner:
                self.end_lease(lease_id)

    def cancel(self, spec: TaskSpec) -> bool:
        """Cancel a task not yet finished: dequeued if waiting, its worker killed if running."""
        if spec in self._ready:
            self._ready.remove(spec)
        elif self._waiting.get(spec.task_id) is spec:
            del self._waiting[spec.task_id]
        else:
            for worker in self._pool.task_workers():
                if any(s.task_id == spec.task_id for s in worker.in_flight):
                    spec.cancelled = True
                    worker.process.kill()  # its death finishes the task as cancelled
                    return True
            return False
        self._finish(TaskResult(spec.task_id, None, TaskCancelledError(spec.name)))
        return True
