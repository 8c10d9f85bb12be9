"""The offline path: find the rings in a file or an iterable of payments, on the real graph engine.

`detect` runs the same `RingGraph` as the streaming engine over a finite
input and returns each ring once, in trigger order. A file is read in
columnar chunks (`FileSource.chunks`: Arrow's readers, no Python object per
valid row) and handed to the graph a batch at a time. With `shards > 1` and
`use_runtime` the graph lives in `GraphShard` actors on a local runtime;
otherwise in this process (`LocalRingGraph`, the fastest).

Event time is the engine's (`event_time.EventClock`, one partition): a
payment older than the newest `ts` seen minus `allowed_lateness` (default for
an offline file: one window) is rejected as late with the reason; edges are
evicted once older than that minus the window, so every admitted payment is
searched against everything it can form a ring with. There is no wall clock
offline, so nothing counts as `future`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ringwatch import runtime as rt
from ringwatch.connectors.files import FileSource, PaymentChunk
from ringwatch.connectors.records import record_from_mapping
from ringwatch.graph import (
    TS_MAX,
    Alert,
    LocalRingGraph,
    RingGraph,
    ShardedRingGraph,
    Transaction,
    parse_duration,
    payment_table,
)
from ringwatch.graph.warmup import load_compiled_code

from .config import search_options
from .event_time import EventClock
from .time_rules import TimeRules
from .progress import Progress

logger = logging.getLogger(__name__)

CHUNK_ROWS = 65_536
DETECT_PARTITION = ("detect", 0)


@dataclass
class DetectReport:
    """What a `detect` run saw besides its alerts: rejected input (with the reason), duplicates, cut searches."""

    transactions: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    truncated_searches: int = 0


def detect(transactions: Iterable[Mapping[str, Any] | Transaction] | str | Path, *, shards: int = 1,
           batch_size: int = 4096, use_runtime: bool = True, progress: bool | None = None,
           report: DetectReport | None = None, allowed_lateness: str | int | None = None,
           backend: str | None = None, address: str | None = None, **options: Any) -> list[Alert]:
    """Alerts for every ring among the payments, each once, in trigger (ts, tx_id) order.

    `transactions` is a path (CSV, JSONL, Parquet, AMLworld CSV) or an iterable of
    dicts / `Transaction`s. Rows that fail validation, conflicting duplicates and
    late payments are not dropped silently: they land in `report.rejected` with
    the reason (and are counted in a warning). `shards > 1` with `use_runtime`
    puts the graph in `GraphShard` actors (same alerts); `backend`/`address` say
    which runtime they run on when this call starts it (`ringwatch.runtime.init`:
    `backend="ray"` runs them on Ray).
    """
    settings = search_options(**options)
    lateness = parse_duration(allowed_lateness, name="allowed_lateness") if allowed_lateness is not None \
        else settings.window_ms
    clock = EventClock(TimeRules(window_ms=settings.window_ms, allowed_lateness_ms=lateness,
                                 max_clock_skew_ms=TS_MAX))
    report = report if report is not None else DetectReport()
    on_runtime = use_runtime and shards > 1
    started_runtime = on_runtime and not rt.is_initialized()
    load_compiled_code("actors" if on_runtime else "in-process")  # before workers start: they load numba's cache
    if started_runtime:
        rt.init(address=address, backend=backend)
    graph: RingGraph = ShardedRingGraph.create(settings, shards) if on_runtime else LocalRingGraph(settings)
    try:
        alerts = _run(graph, _chunks(transactions), batch_size, clock, report, Progress("detect", enabled=progress))
    finally:
        graph.close()
        if started_runtime:
            rt.shutdown()
    if report.rejected:
        logger.warning("%d input rows rejected (first: %s)", len(report.rejected), report.rejected[0]["reason"])
    return alerts


def _chunks(transactions: Iterable[Mapping[str, Any] | Transaction] | str | Path) -> Iterator[PaymentChunk]:
    if isinstance(transactions, (str, Path)):
        yield from FileSource(transactions).chunks(CHUNK_ROWS)
        return
    valid: list[Transaction] = []
    rejected: list[dict[str, Any]] = []
    rows = 0
    for row, item in enumerate(transactions):
        rows += 1
        if isinstance(item, Transaction):
            valid.append(item)
            continue
        record = record_from_mapping(("input", 0, row), item)
        if record.ok:
            valid.append(record.transaction)
        else:
            rejected.append({"position": list(record.position), "reason": record.error,
                             "raw": record.raw.decode("utf-8", "replace") if record.raw else None})
    yield PaymentChunk(payment_table(valid), rejected, rows)


def _run(graph: RingGraph, chunks: Iterator[PaymentChunk], batch_size: int, clock: EventClock,
         report: DetectReport, progress: Progress) -> list[Alert]:
    alerts: dict[str, Alert] = {}
    evicted = -(2**62)
    for chunk in chunks:
        report.rejected.extend(chunk.rejected)
        table = chunk.table
        for start in range(0, table.num_rows, batch_size):
            batch = _admit(table.slice(start, batch_size), clock, report)
            result = graph.process(batch)
            horizon = clock.eviction_horizon()
            if horizon is not None and horizon >= evicted + max(clock.rules.window_ms // 16, 1):
                graph.evict(horizon)
                evicted = horizon
            for alert in result.alerts:
                alerts.setdefault(alert.alert_id, alert)  # a re-raise (a later, smaller witness) keeps the first
            report.duplicates += result.duplicates
            report.truncated_searches += result.truncated_searches
            report.rejected.extend({"tx_id": r.tx_id, "reason": r.reason} for r in result.rejected)
        report.transactions += chunk.rows
        progress.update(report.transactions, alerts=len(alerts))
    progress.finish(report.transactions, alerts=len(alerts))
    return sorted(alerts.values(), key=lambda a: (a.last_ts, a.trigger_tx_id.encode(), a.alert_id))


def _admit(batch: pa.Table, clock: EventClock, report: DetectReport) -> pa.Table:
    """The batch's payments the event-time clock takes (the rest to `report.rejected`); moves the watermark."""
    stamps = batch.column("ts").to_numpy()
    low = clock.low_watermark
    if low is not None and stamps.size and stamps.min() < low - clock.rules.allowed_lateness_ms:
        ids = batch.column("tx_id").to_pylist()
        reasons = [clock.judge(int(ts)) for ts in stamps.tolist()]
        report.rejected.extend({"tx_id": ids[i], "reason": r} for i, r in enumerate(reasons) if r is not None)
        batch = batch.filter(pa.array([r is None for r in reasons]))
    if batch.num_rows:
        clock.accept(DETECT_PARTITION, int(batch.column("ts").to_numpy().max()))
        clock.advance()
    return batch


def write_alerts_jsonl(alerts: Iterable[Alert], path: str | Path) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as out:
        for alert in alerts:
            out.write(alert.to_json() + "\n")
            count += 1
    return count


def write_rejected_jsonl(report: DetectReport, path: str | Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for item in report.rejected:
            out.write(json.dumps(item) + "\n")

