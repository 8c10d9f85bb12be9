"""What the engine counts: payments, batches, alerts, dead letters, rewinds, and the recent alerts.

One object, written by the loop and read by the query service and /metrics
from their own threads, so the counts and the Prometheus counters move
together and `stats()` never has to reach into the loop. `transactions` is
part of every checkpoint (a restart resumes it); the rest count since this
process started.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from ringwatch.graph import Alert

from .event_time import reason_category
from .metrics import EngineMetrics

logger = logging.getLogger(__name__)

THROUGHPUT_WINDOW_S = 10.0  # `throughput()` is measured over this much recent time
LATENCY_SAMPLE = 1_000  # `recent_alerts()` keeps this many (the latency percentiles of `stats()`)


@dataclass
class EngineTally:
    """The engine's counters, mirrored into `metrics`; `recent_alerts()` and `throughput()` are thread-safe."""

    metrics: EngineMetrics = field(default_factory=EngineMetrics)
    transactions: int = 0  # source records consumed, valid or not (a replay does not count again)
    alerts_raised: int = 0
    batches: int = 0
    handed: int = 0  # payments handed to the graph (in each record: a restart resumes the count)
    recoveries: int = 0  # rewinds to the aligned record after shards went back in time
    cut_short: int = 0  # searches stopped early by an opt-in cut
    dead_lettered: Counter[str] = field(default_factory=Counter)
    _recent: deque[Alert] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLE), init=False, repr=False)
    _recent_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _progress: deque[tuple[float, int]] = field(default_factory=deque, init=False, repr=False)  # (monotonic time, transactions)

    def count_batch(self, fresh: int) -> None:
        """A batch finished with `fresh` records not consumed before."""
        self.transactions += fresh
        self.batches += 1
        self.metrics.transactions.inc(fresh)
        self.metrics.batches.inc()
        now = time.monotonic()
        self._progress.append((now, self.transactions))
        while len(self._progress) > 2 and self._progress[1][0] < now - THROUGHPUT_WINDOW_S:
            self._progress.popleft()

    def note_raised(self, alerts: list[Alert]) -> None:
        self.alerts_raised += len(alerts)
        self.metrics.alerts_raised.inc(len(alerts))
        with self._recent_lock:
            self._recent.extend(alerts)
        for alert in alerts:
            self.metrics.latency.observe(alert.latency_ms / 1000)
        logger.debug("alerts raised count=%d first=%s", len(alerts), alerts[0].alert_id)

    def note_dead_letter(self, reason: str) -> None:
        self.dead_lettered[reason_category(reason)] += 1

    def recent_alerts(self) -> list[Alert]:
        """The newest alerts this process raised (up to `LATENCY_SAMPLE`), oldest first."""
        with self._recent_lock:
            return list(self._recent)

    def throughput(self) -> float:
        """Records consumed per second over the last `THROUGHPUT_WINDOW_S`."""
        progress = list(self._progress)
        if len(progress) >= 2 and progress[-1][0] > progress[0][0]:
            return (progress[-1][1] - progress[0][1]) / (progress[-1][0] - progress[0][0])
        return 0.0
