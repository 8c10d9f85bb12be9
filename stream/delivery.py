"""Alert hand-over on a thread of its own, so the next micro-batch is searched while this one's alerts go out.

The engine's loop puts each batch's alerts here and moves on; the delivery
thread hands them to every sink in order (a sink's `deliver` may write an
outbox file or wait for a producer buffer). `drain` waits until everything put
so far has been handed over; `durable` asks the delivery thread itself to make
it durable once it has (the sinks are only ever touched on that thread, and an
aligned checkpoint no longer waits on the loop for a file's fsync). The queue is bounded: a sink that falls far behind
slows the loop down instead of growing memory without limit.

Ring ids are deterministic and every sink skips ids it has already delivered,
so handing alerts over after the graph has moved on is safe: a crash in
between replays the batch and raises the same ids again.

With a shared graph the delivery thread first claims each alert
(`AlertClaims.ours`); `drain` also hands over the parked alerts whose claimant
has left without sending them (`AlertClaims.retry`), before the checkpoint
asks the sinks to flush.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from ringwatch.connectors import Sink, WebhookSink
from ringwatch.graph import Alert
from ringwatch.runtime.errors import RingwatchError

from .claims import AlertClaims

logger = logging.getLogger(__name__)

MAX_QUEUED_BATCHES = 64
_STOP = object()
_RETRY = object()  # hand over the parked alerts that are ours now


@dataclass
class _Durable:
    """Queued by `durable`: flush the sinks once everything before it is handed over."""

    timeout_s: float
    done: concurrent.futures.Future


class DeliveryError(RingwatchError, RuntimeError):
    """A sink raised while alerts were handed to it; the engine stops (a restart replays them)."""


class AlertDelivery:
    """Hands alert batches to `sinks` on a background thread.

    `claims`, if given (a shared graph), decides on the delivery thread which
    alerts this engine is to deliver.
    """

    def __init__(self, sinks: Mapping[str, Sink], claims: AlertClaims | None = None):
        self.sinks = dict(sinks)
        self.handed: Counter[str] = Counter()
        self._claims = claims
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED_BATCHES)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ringwatch-delivery", daemon=True)
        self._thread.start()

    def put(self, alerts: list[Alert]) -> None:
        """Queue a batch's alerts (blocks while the queue is full); raises if delivery has failed."""
        self._raise_if_failed()
        if alerts:
            self._queue.put(alerts)

    def drain(self) -> None:
        """Wait until every batch put so far, and every parked alert now ours, has been handed to every sink."""
        if self._claims is not None and self._claims.parked:
            self._queue.put(_RETRY)
        self._queue.join()
        self._raise_if_failed()

    def durable(self, timeout_s: float) -> concurrent.futures.Future:
        """A future of whether every alert put so far survives a crash: handed to every sink, then each sink
        flushed on the delivery thread (the webhook outbox is written at `deliver`), each within `timeout_s`."""
        self._raise_if_failed()
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Durable(timeout_s, done))
        return done

    def close(self) -> None:
        """Hand over what is queued, then stop the thread (sinks are closed by their owner)."""
        self._queue.put(_STOP)
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise DeliveryError(f"alert delivery failed: {self._failure}") from self._failure

    def _run(self) -> None:
        while True:
            alerts = self._queue.get()
            try:
                if alerts is _STOP:
                    return
                if isinstance(alerts, _Durable):
                    self._flush(alerts)
                elif self._failure is None:
                    self._deliver(alerts)
            except BaseException as exc:  # reported to the loop by the next put/drain
                logger.exception("alert delivery failed")
                self._failure = exc
            finally:
                self._queue.task_done()

    def _flush(self, request: _Durable) -> None:
        if self._failure is not None:
            request.done.set_exception(DeliveryError(f"alert delivery failed: {self._failure}"))
            return
        try:
            request.done.set_result(all(sink.flush(request.timeout_s) for sink in self.sinks.values()
                                        if not isinstance(sink, WebhookSink)))
        except BaseException as exc:  # a sink that cannot flush: the checkpoint or hand-over reports it
            request.done.set_exception(exc)

    def _deliver(self, alerts: list[Alert] | object) -> None:
        if alerts is _RETRY:
            alerts = self._claims.retry()
        elif self._claims is not None:
            alerts = self._claims.ours(alerts)
        if not alerts:
            return
        for name, sink in self.sinks.items():
            sink.deliver(alerts)
            self.handed[name] += len(alerts)
