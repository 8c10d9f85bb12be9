"""Alert claims: with several engines on one shared graph, each alert id is delivered by one engine.

Two engines can find the same ring (each applies its payments before it
searches, so whichever searches last sees the whole ring, and sometimes both
do). Before an engine hands an alert to its sinks it claims the alert id in the
GCS with an atomic put (`ringwatch.runtime.kv_put(..., overwrite=False)`); the
claim holds the engine's id. An alert claimed by another engine is skipped; one
claimed by this engine before (a replay after a rewind or restart) is handed
over again and the sinks' own dedup keeps it single.

Engine ids are stable across restarts (host and state directory), so a
restarted engine re-delivers what it claimed but had not made durable. One
window remains, like the webhook's: an engine that claims an alert and is then
lost for good before its sinks made it durable takes that alert with it.
"""

from __future__ import annotations

import logging

from ringwatch import runtime as rt
from ringwatch.graph import Alert

logger = logging.getLogger(__name__)


class AlertClaims:
    """Claims alert ids for `engine_id` in consumer group `group`; claims expire after `ttl_s`."""

    def __init__(self, group: str, engine_id: str, ttl_s: float):
        self.engine_id = engine_id
        self.ttl_s = ttl_s
        self._prefix = f"ringwatch/engines/{group}/alerts/"
        self.skipped = 0

    def ours(self, alerts: list[Alert]) -> list[Alert]:
        """The alerts this engine is to deliver: claimed now, or claimed by this engine before."""
        mine = []
        owner = self.engine_id.encode()
        for alert in alerts:
            key = self._prefix + alert.alert_id
            if rt.kv_put(key, owner, overwrite=False, ttl_s=self.ttl_s) or rt.kv_get(key) == owner:
                mine.append(alert)
            else:
                self.skipped += 1
                logger.debug("alert %s is claimed by another engine", alert.alert_id)
        return mine
