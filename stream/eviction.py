"""Eviction: dropping edges the ring rule can no longer use, without dropping what a replay still needs.

Edges older than `low watermark - window - allowed_lateness` can close no ring
a payment still to be accepted could make. Two things hold eviction back: an
aligned checkpoint whose shard checkpoints are being taken (a replay from its
record needs what its positions cover), and on shared shards the lowest low
watermark the group's engines published (another engine's partitions may be
behind this one's).
"""

from __future__ import annotations

from dataclasses import dataclass

from .event_time import EventClock
from .graph_port import EngineGraph

EVICT_SLICES = 16  # evict when the horizon has moved 1/16 of the window: each eviction is a pass over the shards


@dataclass
class Eviction:
    """Moves the clock's low watermark and evicts once the horizon has moved a slice of the window."""

    clock: EventClock
    graph: EngineGraph
    window: int  # graph.window, ms
    allowed_lateness: int  # time.allowed_lateness, ms
    shared: bool  # the group's engines share the shards: the group's low watermark bounds the horizon
    held: bool = False  # while shard checkpoints are taken: they must keep what a replay from their record needs
    group_low: int | None = None  # lowest low watermark published by the group's engines
    evicted_to: int | None = None

    def advance(self) -> None:
        self.clock.advance()
        horizon = self.clock.eviction_horizon()
        if horizon is None:
            return
        if self.shared:
            if self.group_low is None:
                return
            horizon = min(horizon, self.group_low - self.window - self.allowed_lateness)
        step = max(self.window // EVICT_SLICES, 1)
        if self.held:
            return
        if self.evicted_to is None or horizon - self.evicted_to >= step:
            self.graph.evict(horizon)
            self.evicted_to = horizon
