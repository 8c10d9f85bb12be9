"""Alert claims: with several engines on one shared graph, each alert id is delivered by one engine.

Two engines can find the same ring (each applies its payments before it
searches, so whichever searches last sees the whole ring, and sometimes both
do), and an engine that takes over partitions replays them and finds their
rings again. Before an engine hands an alert to its sinks it claims the alert
id in the GCS with an atomic put (`ringwatch.runtime.kv_put(...,
overwrite=False)`). Keys, under `ringwatch/engines/<group>/`:

- `alerts/<alert id>`: the claim, `{"engine", "run", "seq"}` — the engine id,
  this process's run (a random id per start) and the claim's number in the run;
- `live/<engine id>`: the engine's lease, holding its current run, renewed by a
  thread every `lease_s / 4` and expiring after `lease_s`;
- `sent/<run>`: the highest claim number of that run whose alert the engine's
  sinks have made durable (written at each checkpoint, after the sinks' flush).

An engine that finds an alert claimed by someone else looks at the claim:
- claimed by this run (a replay after a rewind): handed over again, the sinks
  dedupe;
- marked sent by its claimant: skipped;
- its claimant's lease still holds that run: the claimant may yet deliver it,
  so the alert is *parked* and looked at again at each `retry` (every aligned
  checkpoint); while anything is parked the engine writes no checkpoint record,
  so its offsets never move past an alert nobody has delivered yet;
- otherwise the claimant is gone (its lease expired, or it restarted as a new
  run) and never made the alert durable: the claim is *stale* and the engine
  claims the next link of the alert's chain (`alerts/<alert id>#1`, `#2`, ...,
  again with an atomic put, so one of several engines wins) and delivers it.

Guarantee (docs/architecture.md, "Scale-out"): every ring raised by any engine
of the group is handed to the sinks of at least one engine, even when an
engine dies for good between claiming an alert and sending it — as long as
some engine raises the alert again (the partitions' new owner replays from
the committed offsets and raises it). It is handed to exactly one engine's
sinks unless a claimant's sinks made the alert durable and the claimant then
died (or lost its lease for `lease_s`) before its next checkpoint marked it
sent: then it is delivered a second time, with the same alert id.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from dataclasses import asdict, dataclass

from ringwatch import runtime as rt
from ringwatch.graph import Alert

logger = logging.getLogger(__name__)

LEASE_S = 10.0  # how long an engine's claims outlive its last lease renewal
_MINE, _SKIP, _PARK = "mine", "skip", "park"


@dataclass(frozen=True)
class Claim:
    """Who claimed an alert id: the engine, its run and the claim's number in that run."""

    engine: str
    run: str
    seq: int

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "Claim":
        data = json.loads(raw)
        return cls(str(data["engine"]), str(data["run"]), int(data["seq"]))


class AlertClaims:
    """Claims alert ids for `engine_id` in consumer group `group`; claims expire after `ttl_s`.

    `ours` runs on the delivery thread, `retry` and `settle` on the loop while
    delivery is drained; `close` ends the lease (a clean stop).
    """

    def __init__(self, group: str, engine_id: str, ttl_s: float, lease_s: float = LEASE_S):
        self.engine_id = engine_id
        self.run = secrets.token_hex(8)
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self._prefix = f"ringwatch/engines/{group}/"
        self.skipped = 0
        self.taken_over = 0
        self._seq = 0  # claims this run made
        self._parked: dict[str, Alert] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renew()  # the lease stands before the first claim
        self._lease = threading.Thread(target=self._keep_lease, name="ringwatch-claims-lease", daemon=True)
        self._lease.start()

    # ---- claiming ---------------------------------------------------------------------------------

    def ours(self, alerts: list[Alert]) -> list[Alert]:
        """The alerts this engine is to deliver now; those a live engine claimed and has not sent are parked."""
        with self._lock:
            return [alert for alert in alerts if self._decide(alert) == _MINE]

    def retry(self) -> list[Alert]:
        """Parked alerts that are this engine's to deliver now (their claimant is gone without sending them)."""
        with self._lock:
            parked, self._parked = list(self._parked.values()), {}
            return [alert for alert in parked if self._decide(alert) == _MINE]

    def settle(self) -> bool:
        """Mark every claim so far sent (call once the sinks made them durable); True if nothing is parked."""
        with self._lock:
            if self._seq:
                rt.kv_put(f"{self._prefix}sent/{self.run}", str(self._seq).encode(), ttl_s=self.ttl_s)
            if self._parked:
                logger.info("%d alerts are claimed by live engines that have not sent them yet", len(self._parked))
            return not self._parked

    @property
    def parked(self) -> int:
        return len(self._parked)

    def _decide(self, alert: Alert) -> str:
        """Walk the alert's claim chain: claim the first free link, or say why not (see the module docstring)."""
        link = 0
        while True:
            key = f"{self._prefix}alerts/{alert.alert_id}" + (f"#{link}" if link else "")
            mine = Claim(self.engine_id, self.run, self._seq + 1)
            if rt.kv_put(key, mine.encode(), overwrite=False, ttl_s=self.ttl_s):
                self._seq += 1
                if link:
                    self.taken_over += 1
                    logger.info("took over alert %s: its claimant left without sending it", alert.alert_id)
                return _MINE
            raw = rt.kv_get(key)
            if raw is None:
                continue  # expired between the put and the get: try this link again
            held = Claim.decode(raw)
            if held.run == self.run:
                return _MINE  # a replay of our own claim: the sinks dedupe
            if self._sent(held):
                self.skipped += 1
                return _SKIP
            if rt.kv_get(f"{self._prefix}live/{held.engine}") == held.run.encode():
                self._parked[alert.alert_id] = alert
                return _PARK
            logger.debug("alert %s: claim by %s (run %s) is stale", alert.alert_id, held.engine, held.run)
            link += 1

    def _sent(self, claim: Claim) -> bool:
        raw = rt.kv_get(f"{self._prefix}sent/{claim.run}")
        return raw is not None and int(raw) >= claim.seq

    # ---- the lease --------------------------------------------------------------------------------

    def _renew(self) -> None:
        rt.kv_put(f"{self._prefix}live/{self.engine_id}", self.run.encode(), ttl_s=self.lease_s)

    def _keep_lease(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            try:
                self._renew()
            except Exception:  # the GCS is briefly unreachable: the next renewal tries again
                logger.warning("could not renew the alert-claims lease", exc_info=True)

    def close(self) -> None:
        """End the lease: claims this run did not mark sent become others' to take over."""
        self._stop.set()
        self._lease.join()
        key = f"{self._prefix}live/{self.engine_id}"
        if rt.kv_get(key) == self.run.encode():
            rt.kv_delete(key)
