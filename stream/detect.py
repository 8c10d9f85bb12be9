"""The offline path: find the rings in a file or an iterable of payments, on the real engine.

`detect` runs the same shards and search as the streaming engine — `GraphShard`
actors and search tasks on a local runtime — over a finite input, and returns
the alerts in trigger order. Analysts backfill with it; the oracle tests drive
the engine with it.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringwatch import runtime as rt
from ringwatch.connectors.files import FileSource
from ringwatch.connectors.records import SourceRecord, record_from_mapping
from ringwatch.graph import (
    ActorShards,
    Alert,
    LocalShards,
    RingDetector,
    SearchOptions,
    Transaction,
    search_in_parallel,
)

from .config import search_options
from .progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class DetectReport:
    """What a `detect` run saw besides its alerts: rejected input, kept with the reason."""

    transactions: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    truncated_searches: int = 0


def detect(transactions: Iterable[Mapping[str, Any] | Transaction] | str | Path, *, shards: int = 2,
           batch_size: int = 1000, use_runtime: bool = True, progress: bool | None = None,
           report: DetectReport | None = None, backend: str | None = None, address: str | None = None,
           **options: Any) -> list[Alert]:
    """Alerts for every ring the payments close, in trigger order.

    `transactions` is a path (CSV, JSONL, Parquet, AMLworld CSV) or an iterable of
    dicts / `Transaction`s. Rows that fail validation, and payments older than the
    low watermark, are not dropped silently: they land in `report.rejected` with
    the reason (and are counted in a warning). `use_runtime=False` runs the shards
    in this process (no worker processes) — same alerts, for small inputs and tests.
    `backend`/`address` say which runtime the shards and searches run on when this
    call starts it (`ringwatch.runtime.init`): `backend="ray"` runs them on Ray.
    """
    settings = search_options(**options)
    report = report if report is not None else DetectReport()
    started_runtime = use_runtime and not rt.is_initialized()
    if started_runtime:
        rt.init(address=address, backend=backend)
    try:
        detector = _detector(settings, shards, use_runtime)
        alerts = _run(detector, _records(transactions), batch_size, report,
                      Progress("detect", enabled=progress))
        if use_runtime:
            detector.shards.close()
    finally:
        if started_runtime:
            rt.shutdown()
    if report.rejected:
        logger.warning("%d input rows rejected (first: %s)", len(report.rejected), report.rejected[0]["reason"])
    return alerts


def _detector(settings: SearchOptions, shards: int, use_runtime: bool) -> RingDetector:
    if not use_runtime:
        return RingDetector(LocalShards(shards), settings)
    searcher = functools.partial(search_in_parallel, parallelism=max(1, shards))
    return RingDetector(ActorShards(shards), settings, searcher=searcher)


def _records(transactions: Iterable[Mapping[str, Any] | Transaction] | str | Path) -> Iterator[SourceRecord]:
    if isinstance(transactions, (str, Path)):
        yield from FileSource(transactions)
        return
    for row, item in enumerate(transactions):
        if isinstance(item, Transaction):
            yield SourceRecord(("input", 0, row), item)
        else:
            yield record_from_mapping(("input", 0, row), item)


def _run(detector: RingDetector, records: Iterator[SourceRecord], batch_size: int, report: DetectReport,
         progress: Progress) -> list[Alert]:
    alerts: list[Alert] = []
    batch: list[Transaction] = []

    def flush() -> None:
        result = detector.process(batch)
        alerts.extend(result.alerts)
        report.truncated_searches += result.truncated_searches
        report.rejected.extend({"tx_id": r.transaction.tx_id, "reason": r.reason} for r in result.rejected)
        batch.clear()
        progress.update(report.transactions, alerts=len(alerts))

    for record in records:
        report.transactions += 1
        if record.ok:
            batch.append(record.transaction)
            if len(batch) >= batch_size:
                flush()
        else:
            report.rejected.append({"position": list(record.position), "reason": record.error,
                                    "raw": record.raw.decode("utf-8", "replace") if record.raw else None})
    if batch:
        flush()
    progress.finish(report.transactions, alerts=len(alerts))
    return alerts


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
