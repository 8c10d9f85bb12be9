"""What a cluster node does when another node dies: rebuild lost objects, retry calls, restart actors.

A node is declared dead once, by its record in the GCS (see `cluster.py`); every
node then runs `_op_node_dead` on its dispatcher thread:

- values it owns that lived only on the dead node are rebuilt from lineage: the
  `TaskSpec` that made each one, kept in the GCS, is run again on a live node,
  recursively through inputs that were lost too, up to the task's `max_retries`;
  objects made by `put` have no lineage, and `get` raises `ObjectLostError`;
- tasks it had forwarded to the dead node are run again elsewhere (a retry);
- calls to actors that lived there wait ("parked") until the actor is back, or
  fail with `ActorDiedError` when it will not be; calls that were running there
  fail unless the actor allows `max_task_retries`;
- the node that declared the death re-creates the dead node's actors on live
  nodes from their latest checkpoints, while restarts remain.

`FailureHandling` is a mixin of `Node`: it works on the node's tables and runs
only on its dispatcher thread, like the rest of the node.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import replace
from typing import Any

from .errors import ActorDiedError, ObjectLostError, TaskError
from .protocol import ACTOR_CALL, ACTOR_CREATE, TASK, TaskResult, TaskSpec

logger = logging.getLogger(__name__)

PARK_POLL_S = 0.2
UNKNOWN_ACTOR_WAIT_S = 30.0


class FailureHandling:
    """Node-death recovery for `Node` (uses its `_entries`, `_actors`, `_parked`, `cluster`, ...)."""

    # ---- a node died ------------------------------------------------------------------------

    def _op_node_dead(self, reply: Any, node_id: str, address: str, declared_here: bool) -> None:
        self.cluster.node_died(address)
        if declared_here:  # this node's own declaration may arrive after the event channel's news of it
            self._restart_actors_of(node_id)
        if address in self._dead_addresses:
            return
        self._dead_addresses.add(address)
        logger.warning("node %s (%s) is dead; recovering what this node had there", node_id, address)
        for actor_id, where in list(self._remote_actors.items()):
            if where == address:
                del self._remote_actors[actor_id]
        for object_id, entry in list(self._entries.items()):
            if entry.copy_at == address:
                entry.copy_at = None
            if entry.ready and entry.held_at == address:
                self._rebuild(object_id, f"node {node_id} died holding it")
            elif entry.ready and entry.remote == address:
                entry.remote = None  # the value is here already
            elif not entry.ready and entry.remote == address:
                self._lost_in_flight(object_id, entry.spec, node_id)

    def _lost_in_flight(self, object_id: str, spec: TaskSpec | None, node_id: str) -> None:
        """A call forwarded to the dead node (or a copy being fetched from it) will never answer."""
        entry = self._entries[object_id]
        if spec is not None and spec.kind == ACTOR_CALL and not entry.delivered:
            return  # its hand-over is still failing: `_op_forward_failed` parks it for the restarted actor
        entry.remote = None
        if spec is None or spec.kind == TASK:
            self._rebuild(object_id, f"node {node_id} died running it")
        elif spec.kind == ACTOR_CALL and spec.attempt < self.cluster.actor_task_retries(spec.actor_id):
            spec.attempt += 1
            self._park(spec)
        else:
            self._finish(TaskResult(object_id, None, ActorDiedError(
                f"{spec.name}: node {node_id} died while the call was running there")))

    # ---- lineage ---------------------------------------------------------------------------

    def _rebuild(self, object_id: str, why: str) -> None:
        """Run again the task that made `object_id` (its inputs too, when they were lost)."""
        entry = self._entries[object_id]
        entry.ready, entry.held_at, entry.fetching, entry.remote = False, None, False, None
        entry.blob, entry.error = None, None
        spec = entry.spec if entry.spec is not None and entry.spec.kind == TASK else self.cluster.lineage(object_id)
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
                self._unpin(dep)
        self._op_submit(lambda ok, value: None, spec)

    def _ensure_rebuildable(self, object_id: str, why: str) -> None:
        entry = self._entries.get(object_id)
        if entry is None:
            if self.cluster.lineage(object_id) is not None:  # freed here, but needed again: make it again
                self._entry(object_id)
                self._rebuild(object_id, why)
        elif entry.ready and entry.held_at in self._dead_addresses:
            self._rebuild(object_id, why)

    # ---- calls that failed to reach their node ------------------------------------------------

    def _op_delivered(self, reply: Any, object_id: str) -> None:
        entry = self._entries.get(object_id)
        if entry is not None:
            entry.delivered = True

    def _op_forward_failed(self, reply: Any, spec: TaskSpec, address: str, error: Exception) -> None:
        """A call could not be handed to `address`: place tasks elsewhere, hold actor calls for the actor."""
        entry = self._entries.get(spec.task_id)
        if entry is None or entry.ready:
            return
        entry.remote = None
        self.cluster.suspect(address)
        if spec.kind == ACTOR_CALL:
            self._remote_actors.pop(spec.actor_id, None)
            self._park(spec)
        elif spec.kind == TASK and spec.attempt < spec.max_retries:
            spec.attempt += 1
            spec.forwarded_by = None
            self._dispatch(spec)
        else:
            self._finish(TaskResult(spec.task_id, None, error))

    # ---- actors that moved, restart, or are gone ------------------------------------------------

    def _route_to_actor(self, spec: TaskSpec) -> bool:
        """Forward a call to the node its actor lives on; park it while the actor is restarting."""
        if spec.actor_id in self._parked:
            self._park(spec)  # behind the calls already waiting, to keep their order
            return True
        state, where = self.cluster.actor_location(spec.actor_id)
        if state == "alive" and where != self.cluster.address and self.cluster.reachable(where):
            self._forward_actor_call(spec, where)
        elif state == "dead":
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {where}")))
        elif state == "alive" and where == self.cluster.address:  # the GCS says it lives here; it died here
            self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: no such actor")))
        else:
            self._park(spec)
        return True

    def _forward_actor_call(self, spec: TaskSpec, address: str) -> None:
        self._entries[spec.task_id].delivered = False
        self._remote_actors[spec.actor_id] = address
        spec.dep_locations = {d: self._location_of(d) for d in spec.deps}
        spec.forwarded_by = self.cluster.address
        self._entries[spec.task_id].remote = address
        self.cluster.forward(spec, address)

    def _park(self, spec: TaskSpec) -> None:
        if not self._parked:
            self._deadlines.append((time.monotonic() + PARK_POLL_S, self._resolve_parked))
        if spec.actor_id not in self._parked:
            self._parked[spec.actor_id] = []
            self._parked_since[spec.actor_id] = time.monotonic()
        self._parked[spec.actor_id].append(spec)

    def _resolve_parked(self) -> None:
        """Send parked calls on, in order, once their actor is alive again; fail them if it never will be."""
        for actor_id, specs in list(self._parked.items()):
            try:
                state, where = self.cluster.actor_location(actor_id)
            except Exception as exc:  # the GCS is away: ask again at the next poll
                logger.warning("cannot look up actor %s: %s", actor_id, exc)
                continue
            waited = time.monotonic() - self._parked_since[actor_id]
            if state == "alive" and self.cluster.reachable(where):
                del self._parked[actor_id]
                self._parked_since.pop(actor_id)
                for spec in specs:
                    if where == self.cluster.address:
                        self._dispatch(spec)
                    else:
                        self._forward_actor_call(spec, where)
            elif state == "dead" or (state == "unknown" and waited > UNKNOWN_ACTOR_WAIT_S):
                del self._parked[actor_id]
                self._parked_since.pop(actor_id)
                reason = where if state == "dead" else "no such actor"
                for spec in specs:
                    self._finish(TaskResult(spec.task_id, None, ActorDiedError(f"{spec.name}: {reason}")))
        if self._parked:
            self._deadlines.append((time.monotonic() + PARK_POLL_S, self._resolve_parked))

    def _restart_actors_of(self, node_id: str) -> None:
        """Re-create the dead node's actors on live nodes from their latest checkpoints (this node declared it)."""
        for record in self.cluster.actors_on(node_id):
            actor_id, restarts = record["actor_id"], record.get("restarts", 0)
            spec_bytes = self.cluster.gcs.actor_spec(actor_id)
            max_restarts = record.get("max_restarts", 0)
            if spec_bytes is None or restarts >= max_restarts:
                reason = f"its node {node_id} died"
                if max_restarts:
                    reason += f"; no restarts left (max_restarts={max_restarts})"
                self.cluster.actor_gone(actor_id, record.get("name"), reason)
                continue
            spec = self._restart_spec(pickle.loads(spec_bytes), restarts + 1, record.get("checkpoint"))
            logger.warning("restarting actor %s (restart %d of %d) from checkpoint %s", record.get("class_name"),
                           restarts + 1, max_restarts, record.get("checkpoint"))
            self.cluster.actor_restarting(actor_id, restarts + 1, None)
            self._op_submit(lambda ok, value: None, spec)
