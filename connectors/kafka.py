"""Kafka in and out: `KafkaSource` (consumer group, manual offsets, dead-letter topic) and `KafkaSink`.

`KafkaSource` is the Kafka `Source` (connectors/source.py). Offsets are
committed only when the engine says so (`commit`), after the checkpoint
covering them is durable, so a crash replays from the checkpoint and loses
nothing. Every message comes back from `poll` (a `SourceBatch`: the engine
decodes a micro-batch's messages in one bulk call), a bad one as an error record;
what the engine refuses it hands to `dead_letter`, which produces the original
bytes and key to the dead-letter topic with topic, partition, offset and
reason in headers; `commit` first makes those dead letters durable.

Defaults are tuned so that a restarted or extra consumer joins the group in
seconds against Tansu and Apache Kafka alike (Kafka's 300 s poll interval
stalls group joins after a consumer dies).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.future import Future
from kafka.structs import OffsetAndMetadata

from ringwatch.graph import Alert, Transaction
from ringwatch.runtime.errors import RingwatchError

from .kafka_settings import PLAINTEXT, KafkaSettings
from .mapping import IDENTITY, FieldMapping
from .records import SourceRecord
from .settled import DEFAULT_CAPACITY, SettledIds
from .source import NoListener, RebalanceListener
from .source_batch import JsonDecoder, SourceBatch

logger = logging.getLogger(__name__)

Partition = tuple[str, int]
Positions = Mapping[Partition, int]

DEFAULT_MAX_MESSAGE_BYTES = 1_048_576
HELD_MAX = 20_000  # records kept for a held partition before it is read again regardless (bounds memory)
DLQ_SUFFIX = ".dlq"


class KafkaConnectorError(RingwatchError, RuntimeError):
    """A Kafka operation that did not succeed in time; the message says which and why."""


class _LastConnectionFailure(logging.Handler):
    """Keeps the reason of the last failed connection kafka-python logged (TLS, SASL, refused...)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Bootstrap connection to ", "Connection failed: ")):
            self.reason = message.split(" failed: ", 1)[1].split(" (backoff", 1)[0]


@contextmanager
def _naming_unreachable(bootstrap: str) -> Iterator[None]:
    """Turn kafka-python's connection failures into an error that names the address and the last cause.

    kafka-python retries a bootstrap until its timeout and then reports only
    "Unable to bootstrap"; why (certificate refused, SASL login refused) is in
    its log, so the last reason it logged is added to the error.
    """
    failures = _LastConnectionFailure()
    kafka_logger = logging.getLogger("kafka")
    kafka_logger.addHandler(failures)
    try:
        yield
    except KafkaError as exc:
        cause = f" (last connection error: {failures.reason})" if failures.reason else ""
        raise KafkaConnectorError(f"cannot reach Kafka at {bootstrap}: {exc}{cause}") from exc
    finally:
        kafka_logger.removeHandler(failures)


def dead_letter_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def next_positions(records: Iterable[SourceRecord]) -> dict[Partition, int]:
    """The positions to resume from after `records`: per partition, the last offset + 1."""
    positions: dict[Partition, int] = {}
    for record in records:
        topic, partition, offset = record.position
        positions[(topic, partition)] = max(positions.get((topic, partition), 0), offset + 1)
    return positions


class _Listener(AsyncConsumerRebalanceListener):
    """Runs the source's `RebalanceListener` on a worker thread and waits for it without blocking Kafka I/O.

    kafka-python 3 calls listeners on its I/O thread, where blocking consumer
    calls such as `commit` are refused and a long callback would stop
    heartbeats. Awaiting the worker keeps the group membership alive while the
    engine finishes its in-flight batches and commits.
    """

    def __init__(self, source: "KafkaSource"):
        self.source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.source._off_io_thread(self.source.listener.on_revoke, revoked)
        self.source._forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.source._apply_pending_seeks(assigned)
        await self.source._off_io_thread(self.source.listener.on_assign, assigned)


class KafkaSource:
    """Transactions from one or more topics as a member of consumer group `group`.

    `listener.on_revoke(partitions)` is called before partitions are given up
    in a rebalance (finish in-flight batches and `commit` there: it may block);
    `listener.on_assign(partitions)` after new ones arrive. Both are called
    while `poll` (or `close`) runs, on a worker thread, and must not call `poll`
    themselves. Partitions lost without a clean rebalance (the session expired)
    are reported through `on_revoke` too; committing them then fails with
    `KafkaConnectorError`.

    `fetch_max_wait_ms` bounds how long the broker may hold a fetch that has
    found less than a batch: payments newly produced wait at most that long
    there (kafka-python's default, 500 ms, is what a broker like Tansu then
    waits each time; the engine passes its `batch_max_delay_ms`, at least
    5 ms: see `MIN_FETCH_WAIT_MS` in stream/engine_setup.py).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: str | Sequence[str],
        group: str,
        *,
        dlq_topic: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        listener: RebalanceListener | None = None,
        auto_offset_reset: str = "earliest",
        session_timeout_ms: int = 6_000,
        heartbeat_interval_ms: int = 1_000,
        max_poll_interval_ms: int = 10_000,
        request_timeout_ms: int = 30_000,
        bootstrap_timeout_ms: int = 30_000,
        fetch_max_wait_ms: int = 500,
        client_id: str = "ringwatch",
        settings: KafkaSettings = PLAINTEXT,
        mapping: FieldMapping = IDENTITY,
    ):
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not self.topics:
            raise ValueError("topics: give at least one topic to consume")
        self.group = group
        self.dlq_topic = dlq_topic
        self._decoder = JsonDecoder(max_message_bytes, mapping)
        self.listener: RebalanceListener = listener or NoListener()
        self._pending_seeks: dict[Partition, int] = {}
        self._held: set[Partition] = set()
        self._kept: dict[Partition, list] = {}  # records read, not returned yet (held, or read by keep_alive)
        self._lag: dict[Partition, int] = {}  # as of the last poll (lag())
        with _naming_unreachable(bootstrap):
            self._consumer = KafkaConsumer(**settings.consumer(dict(
                bootstrap_servers=bootstrap, group_id=group, client_id=client_id,
                enable_auto_commit=False, auto_offset_reset=auto_offset_reset,
                session_timeout_ms=session_timeout_ms, heartbeat_interval_ms=heartbeat_interval_ms,
                max_poll_interval_ms=max_poll_interval_ms, request_timeout_ms=request_timeout_ms,
                bootstrap_timeout_ms=bootstrap_timeout_ms, fetch_max_wait_ms=fetch_max_wait_ms,
            )))
            self._dlq = KafkaProducer(**settings.producer(dict(
                bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                max_request_size=max(max_message_bytes, 32 * 1_048_576), request_timeout_ms=request_timeout_ms,
                bootstrap_timeout_ms=bootstrap_timeout_ms,
            ), "dlq"))
        self._dlq_sends: list = []
        self._consumer.subscribe(self.topics, listener=_Listener(self))

    def dead_letter_topic_for(self, topic: str) -> str:
        return self.dlq_topic or dead_letter_topic(topic)

    def poll(self, max_records: int = 500, timeout_ms: int = 100) -> SourceBatch:
        """Up to `max_records` messages in partition order, undecoded until the batch is read (see SourceBatch)."""
        ready = sum(len(kept) for partition, kept in self._kept.items()
                    if partition not in self._held or len(kept) > HELD_MAX)
        fetched = self._take(self._consumer.poll(timeout_ms=0 if ready else timeout_ms,
                                                 max_records=max(1, max_records - ready)), max_records)
        self._lag = {partition: max(0, end - position) + len(self._kept.get(partition, ()))
                     for partition, position, end in self._log_ends()}
        if not fetched:
            return SourceBatch.empty(self._decoder)
        messages = [message for batch in fetched.values() for message in batch]
        return SourceBatch(list(fetched),
                           np.repeat(np.arange(len(fetched), dtype=np.int32), [len(b) for b in fetched.values()]),
                           np.fromiter((m.offset for m in messages), np.int64, len(messages)),
                           [m.value for m in messages], [m.key for m in messages], self._decoder)

    def dead_letter(self, record: SourceRecord, reason: str) -> None:
        """Produce the record's original bytes and key to the dead-letter topic, the reason in headers."""
        topic, partition, offset = record.position
        headers = [
            ("topic", topic.encode()),
            ("partition", str(partition).encode()),
            ("offset", str(offset).encode()),
            ("reason", reason.encode("utf-8", errors="replace")),
        ]
        target = self.dead_letter_topic_for(topic)
        self._dlq_sends.append(self._dlq.send(target, value=record.raw or b"", key=record.key, headers=headers))
        logger.warning("dead-lettered %s[%d]@%d to %s: %s", topic, partition, offset, target, reason)

    def flush_dead_letters(self, timeout_s: float = 30.0) -> None:
        """Wait until every dead-letter produced so far is acknowledged by the broker."""
        self._dlq.flush(timeout=timeout_s)
        sends, self._dlq_sends = self._dlq_sends, []
        for send in sends:
            try:
                send.get(timeout=0)
            except KafkaError as exc:
                raise KafkaConnectorError(f"dead-letter produce failed; not committing offsets: {exc}") from exc

    def commit(self, positions: Positions, timeout_s: float = 30.0, *, wait: bool = True) -> None:
        """Commit exactly `positions` (next offset to read per partition), dead-letters first.

        `wait=False` sends the commit and returns (a failure is logged): for an
        engine's periodic checkpoint, whose record is what a restart resumes
        from, a round trip to the group coordinator on the loop was a 10-12 ms
        stall per checkpoint. Commits go out in order on the coordinator's
        connection, so a later waited commit (a hand-over) is never overtaken.
        """
        self.flush_dead_letters(timeout_s)
        offsets = {TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                   for (topic, partition), offset in positions.items()}
        if not offsets:
            return
        try:
            if wait:
                self._consumer.commit(offsets, timeout_ms=int(timeout_s * 1000))
            else:
                self._consumer.commit_async(offsets, callback=self._committed_async)
        except KafkaError as exc:
            raise KafkaConnectorError(f"offset commit for group {self.group!r} failed: {exc}") from exc

    def _committed_async(self, offsets: dict, response: object) -> None:
        if isinstance(response, Exception):  # the next commit (a checkpoint, a hand-over) covers these offsets
            logger.warning("offset commit for group %r failed (sent without waiting): %s", self.group, response)

    def committed(self, partition: Partition) -> int | None:
        return self._consumer.committed(TopicPartition(*partition))

    def seek(self, positions: Positions) -> None:
        """Resume from `positions`: partitions held now move at once, the others when assigned."""
        assigned = self._consumer.assignment()
        for (topic, partition), offset in positions.items():
            self._kept.pop((topic, partition), None)
            tp = TopicPartition(topic, partition)
            if tp in assigned:
                self._consumer.seek(tp, offset)
            else:
                self._pending_seeks[(topic, partition)] = offset

    def hold(self, partitions: Collection[Partition]) -> None:
        """Return nothing from `partitions` until the next `hold`; what is read from them meanwhile is kept.

        The records are held here, not with kafka-python's `pause`: kafka-python
        3.0.12 parks a paused partition's fetched records and gives back at most
        one parked partition per poll, and only when no other partition's
        records are in line, so a resumed partition can stay parked for good (no
        fetch is sent for it either). kafka-python keeps fetching every
        partition in turn, so what is held stays about one fetch per partition;
        a partition holding more than `HELD_MAX` records is read again anyway,
        and so are all held records when the consumer has nothing new.
        """
        self._held = set(partitions)

    def keep_alive(self) -> None:
        """A poll of at most one record (kept for the next `poll`): resets the group's `max_poll_interval_ms`."""
        self._keep(self._consumer.poll(timeout_ms=0, max_records=1))

    def _keep(self, fetched: Mapping[TopicPartition, list]) -> None:
        for tp, messages in fetched.items():
            self._kept.setdefault((tp.topic, tp.partition), []).extend(messages)

    def _take(self, fetched: Mapping[TopicPartition, list], max_records: int) -> dict[Partition, list]:
        """What `poll` returns: kept records of partitions not held first, then the new ones (kept if held);
        held ones when the consumer had nothing new at all (holding never stalls the source)."""
        self._keep(fetched)
        release = not fetched
        taken: dict[Partition, list] = {}
        for partition in list(self._kept):
            kept = self._kept[partition]
            if max_records <= 0 or (partition in self._held and len(kept) <= HELD_MAX and not release):
                continue
            taken[partition], self._kept[partition] = kept[:max_records], kept[max_records:]
            max_records -= len(taken[partition])
            if not self._kept[partition]:
                del self._kept[partition]
        return taken

    def _log_ends(self) -> Iterator[tuple[Partition, int, int]]:
        """`(partition, position, log end)` of each assigned partition whose log end is known.

        The log end is the high watermark of the latest fetch. A partition not
        fetched from yet is left out: its log end is not known without a
        ListOffsets request, which some brokers, Tansu among them, answer
        inexactly.
        """
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=0)
            except KafkaError:
                continue
            if position is not None:
                yield (tp.topic, tp.partition), position, highwater

    def lag(self) -> dict[Partition, int]:
        """Messages behind the log end per assigned partition whose log end is known, as of the last poll.

        A snapshot taken on the polling thread, so any thread (a /metrics scrape)
        may read it without touching the consumer, which is not thread-safe.
        """
        return dict(self._lag)

    def caught_up(self) -> set[Partition]:
        """Assigned partitions whose position has reached the log end of their latest fetch.

        A partition not fetched from yet is not caught up: on a backlog
        kafka-python drains partitions one after another, so an unfetched
        partition usually has the most to deliver.
        """
        return {partition for partition, position, end in self._log_ends() if position >= end
                and partition not in self._kept}

    def assignment(self) -> list[Partition]:
        return sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())

    def _forget(self, revoked: set[TopicPartition]) -> None:
        """Records kept for partitions given up: their next owner reads them from the committed offset."""
        for tp in revoked:
            self._kept.pop((tp.topic, tp.partition), None)

    def _apply_pending_seeks(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            offset = self._pending_seeks.pop((tp.topic, tp.partition), None)
            if offset is not None:
                self._consumer.seek(tp, offset)

    def _off_io_thread(self, callback: Callable[[list[Partition]], None], partitions: set[TopicPartition]) -> Future:
        """Start `callback` on a worker thread; the returned future resolves on Kafka's I/O loop when it ends."""
        done = Future()
        io_loop = self._consumer._net  # kafka-python's I/O loop: awaiting tasks must be woken from it

        def run() -> None:
            try:
                callback(sorted((tp.topic, tp.partition) for tp in partitions))
            except BaseException as exc:  # handed to kafka-python, which re-raises it from poll()
                error = exc
            else:
                error = None

            def resolve() -> None:
                if error is None:
                    done.success(None)
                else:
                    done.failure(error)

            io_loop.call_soon_threadsafe(resolve)

        threading.Thread(target=run, name="ringwatch-rebalance", daemon=True).start()
        return done

    def close(self, timeout_s: float = 30.0) -> None:
        """Leave the group (without committing) after making dead-letters durable."""
        try:
            self.flush_dead_letters(timeout_s)
        finally:
            self._dlq.close(timeout=timeout_s)
            self._consumer.close(autocommit=False)


class KafkaSink:
    """Alerts to `topic`, keyed by alert id, acks=all.

    With `state_dir`, ids acknowledged by the broker are recorded there so a
    replay after a restart produces none of them again; without it the
    record lives only in memory. An engine crash between the broker's ack and
    that record can repeat an alert, with the same key, once.
    """

    def __init__(self, bootstrap: str, topic: str, state_dir: str | Path | None = None, *,
                 request_timeout_ms: int = 30_000, bootstrap_timeout_ms: int = 30_000,
                 remember: int = DEFAULT_CAPACITY, client_id: str = "ringwatch",
                 settings: KafkaSettings = PLAINTEXT):
        self.topic = topic
        self._settled = SettledIds(Path(state_dir) / f"kafka-sink-{topic}.settled" if state_dir else None, remember)
        with _naming_unreachable(bootstrap):
            self._producer = KafkaProducer(**settings.producer(dict(
                bootstrap_servers=bootstrap, client_id=client_id, acks="all",
                request_timeout_ms=request_timeout_ms, bootstrap_timeout_ms=bootstrap_timeout_ms, linger_ms=5,
            ), "alerts"))
        self._in_flight: dict[str, tuple[Alert, object]] = {}
        self.outcomes: Counter[str] = Counter()

    def deliver(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            if alert.alert_id in self._in_flight or alert.alert_id in self._settled:
                continue
            self._send(alert)

    def _send(self, alert: Alert) -> None:
        future = self._producer.send(self.topic, key=alert.alert_id.encode(), value=alert.to_json().encode())
        self._in_flight[alert.alert_id] = (alert, future)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the broker's acks; alerts that failed are sent again and False is returned."""
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError:
            logger.warning("topic %s: %d alerts not acknowledged within %s s", self.topic, len(self._in_flight), timeout)
        acknowledged, failed = [], []
        for alert_id, (alert, future) in self._in_flight.items():
            if not future.is_done:
                continue
            (acknowledged if future.succeeded() else failed).append(alert)
        for alert in acknowledged + failed:
            del self._in_flight[alert.alert_id]
        self._settled.add(a.alert_id for a in acknowledged)
        self.outcomes["delivered"] += len(acknowledged)
        for alert in failed:
            logger.warning("alert %s not acknowledged by topic %s; sending again", alert.alert_id, self.topic)
            self.outcomes["retried"] += 1
            self._send(alert)
        return not self._in_flight

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        self._producer.close(timeout=timeout)
        self._settled.close()


def produce_transactions(bootstrap: str, topic: str, transactions: Iterable[Transaction],
                         timeout_s: float = 120.0, settings: KafkaSettings = PLAINTEXT) -> int:
    """Produce transactions as JSON keyed by payer account (one account's payments stay in order); returns the count."""
    with _naming_unreachable(bootstrap):
        producer = KafkaProducer(**settings.producer(dict(
            bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=262_144), "producer"))
    count = 0
    failures: list[Exception] = []
    try:
        for tx in transactions:
            value = json.dumps(tx.to_dict(), separators=(",", ":")).encode()
            producer.send(topic, key=tx.src.encode(), value=value).add_errback(failures.append)
            count += 1
        producer.flush(timeout=timeout_s)
        if failures:
            raise KafkaConnectorError(f"{len(failures)} of {count} messages to {topic!r} failed: {failures[0]}")
    except KafkaError as exc:
        raise KafkaConnectorError(f"producing to {topic!r} at {bootstrap} failed after {count} messages: {exc}") from exc
    finally:
        producer.close(timeout=timeout_s)
    return count
