"""What a cluster node does when another node dies: rebuild lost objects, retry calls, restart actors.

A node is declared dead once, by its record in the GCS (see `cluster.py`); every
node then runs `Recovery.node_dead` on its dispatcher thread:

- values it owns that lived only on the dead node are rebuilt from lineage: the
  `TaskSpec` that made each one, kept in the GCS, is run again on a live node,
  recursively through inputs that were lost too, up to the task's `max_retries`;
  objects made by `put` have no lineage, and `get` raises `ObjectLostError`;
- tasks it had forwarded to the dead node are run again elsewhere (a retry);
- calls to actors that lived there are handled by direct calls (`direct_calls.py`):
  the channels to the dead node's workers are closed, calls that were running
  fail unless the actor allows `max_task_retries`, later ones wait for a restart;
- the node that declared the death re-creates the dead node's actors on live
  nodes from their latest checkpoints, while restarts remain.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from .actor_manager import restart_spec
from .errors import ActorDiedError, ObjectLostError, TaskError
from .direct_calls import DirectCalls
from .objects import ObjectTable
from .protocol import ACTOR_CREATE, TASK, TaskResult, TaskSpec

logger = logging.getLogger(__name__)


class ClusterRecords(Protocol):
    """What recovery needs from the cluster link (the GCS and what this node knows of its peers)."""

    address: str

    def node_died(self, address: str) -> None: ...
    def suspect(self, address: str) -> None: ...
    def lineage(self, object_id: str) -> TaskSpec | None: ...
    def actors_on(self, node_id: str) -> list[dict]: ...
    def actor_spec(self, actor_id: str) -> bytes | None: ...
    def actor_restarting(self, actor_id: str, restarts: int, address: str | None) -> None: ...
    def actor_gone(self, actor_id: str, name: str | None, reason: str) -> None: ...


class Recovery:
    """Node-death recovery for one node; runs on its dispatcher thread."""

    def __init__(self, link: ClusterRecords, objects: ObjectTable, direct: DirectCalls,
                 submit: Callable[[TaskSpec], None], dispatch: Callable[[TaskSpec], None],
                 finish: Callable[[TaskResult], None]):
        self._link = link
        self._objects = objects
        self._direct = direct
        self._submit = submit
        self._dispatch = dispatch
        self._finish = finish
        self._dead: set[str] = set()  # addresses of nodes declared dead

    # ---- a node died ------------------------------------------------------------------------

    def node_dead(self, node_id: str, address: str, declared_here: bool) -> None:
        self._link.node_died(address)
        if declared_here:  # this node's own declaration may arrive after the event channel's news of it
            self._restart_actors_of(node_id)
        if address in self._dead:
            return
        self._dead.add(address)
        logger.warning("node %s (%s) is gone; recovering what this node had there", node_id, address)
        self._direct.node_died(address)
        for object_id, entry in self._objects.items():
            if entry.held_for == address:  # kept for the dead node, which will never fetch it
                self._objects.release_held(object_id)
                if object_id not in self._objects:
                    continue
            if entry.copy_at == address:
                entry.copy_at = None
            if entry.ready and entry.held_at == address:
                self._rebuild(object_id, f"node {node_id} died holding it")
            elif entry.ready and entry.remote == address:
                entry.remote = None  # the value is here already
            elif not entry.ready and entry.remote == address:
                self._lost_in_flight(object_id, entry.spec, node_id)

    def _lost_in_flight(self, object_id: str, spec: TaskSpec | None, node_id: str) -> None:
        """A call sent to the dead node (or a copy being fetched from it) will never answer."""
        self._objects.entry(object_id).remote = None
        if spec is None or spec.kind == TASK:
            self._rebuild(object_id, f"node {node_id} died running it")
        else:  # an actor's creation: the node that declared the death restarts the actor, if it may be
            self._finish(TaskResult(object_id, None, ActorDiedError(
                f"{spec.name}: node {node_id} died while creating the actor")))

    def is_gone(self, address: str) -> bool:
        """True for a node declared dead (or that left): nothing is sent or kept for it any more."""
        return address in self._dead

    # ---- lineage ---------------------------------------------------------------------------

    def _rebuild(self, object_id: str, why: str) -> None:
        """Run again the task that made `object_id` (its inputs too, when they were lost)."""
        entry = self._objects.reset(object_id)
        spec = entry.spec if entry.spec is not None and entry.spec.kind == TASK else self._link.lineage(object_id)
        if spec is None:
            self._finish(TaskResult(object_id, None, ObjectLostError(
                f"object {object_id} is lost ({why}) and cannot be rebuilt: it was made by put(), "
                f"or its lineage expired")))
            return
        if spec.attempt >= spec.max_retries:
            self._finish(TaskResult(object_id, None, TaskError(
                "NodeDiedError", f"{why}; tried {spec.attempt + 1} times (max_retries={spec.max_retries})",
                "", spec.name)))
            return
        spec = replace(spec, attempt=spec.attempt + 1, forwarded_by=None, dep_locations={}, code=None)
        logger.info("re-running %s to rebuild %s (%s)", spec.name, object_id, why)
        for dep in spec.deps:
            self._ensure_rebuildable(dep, why)
        if entry.spec is not None:  # it was still running: its inputs are pinned once already
            for dep in (*entry.spec.deps, *entry.spec.contained):
                self._objects.unpin(dep)
        self._submit(spec)

    def _ensure_rebuildable(self, object_id: str, why: str) -> None:
        entry = self._objects.find(object_id)
        if entry is None:
            if self._link.lineage(object_id) is not None:  # freed here, but needed again: make it again
                self._objects.entry(object_id)
                self._rebuild(object_id, why)
        elif entry.ready and entry.held_at in self._dead:
            self._rebuild(object_id, why)

    # ---- calls that failed to reach their node ------------------------------------------------

    def forward_failed(self, spec: TaskSpec, address: str, error: Exception) -> None:
        """A call could not be handed to `address`: place it elsewhere (a task while it has retries left)."""
        entry = self._objects.find(spec.task_id)
        if entry is None or entry.ready:
            return
        entry.remote = None
        self._link.suspect(address)
        if spec.kind == ACTOR_CREATE or (spec.kind == TASK and spec.attempt < spec.max_retries):
            spec.attempt += spec.kind == TASK
            spec.forwarded_by = None
            self._dispatch(spec)
        else:
            self._finish(TaskResult(spec.task_id, None, error))

    # ---- actors of a dead node ---------------------------------------------------------------

    def _restart_actors_of(self, node_id: str) -> None:
        """Re-create the dead node's actors on live nodes from their latest checkpoints (this node declared it)."""
        for record in self._link.actors_on(node_id):
            actor_id, restarts = record["actor_id"], record.get("restarts", 0)
            spec_bytes = self._link.actor_spec(actor_id)
            max_restarts = record.get("max_restarts", 0)
            if spec_bytes is None or restarts >= max_restarts:
                reason = f"its node {node_id} died"
                if max_restarts:
                    reason += f"; no restarts left (max_restarts={max_restarts})"
                self._link.actor_gone(actor_id, record.get("name"), reason)
                continue
            spec = restart_spec(pickle.loads(spec_bytes), restarts + 1, record.get("checkpoint"))
            logger.warning("restarting actor %s (restart %d of %d) from checkpoint %s", record.get("class_name"),
                           restarts + 1, max_restarts, record.get("checkpoint"))
            self._link.actor_restarting(actor_id, restarts + 1, None)
            self._submit(spec)
