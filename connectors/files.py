"""File sources: JSON lines, CSV, Parquet and the IBM AMLworld `*_Trans.csv` layout.

Files are read as streams (line by line, or Parquet record batch by record
batch), so a file larger than memory is fine. Every data row becomes a
`SourceRecord` at `(path, 0, row_number)` (one partition; rows 0-based, header
excluded); a row that does not fit the transaction contract becomes an error
record with its raw text, never a crash and never a silent skip. `FileSource`
is a `Source` (connectors/source.py), so the engine can stream a file too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from .mapping import IDENTITY, FieldMapping
from .records import SourceRecord, record_from_json, record_from_mapping
from .source import RebalanceListener, SequentialSource

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
AMLWORLD_HEADER = [
    "Timestamp", "From Bank", "Account", "To Bank", "Account", "Amount Received",
    "Receiving Currency", "Amount Paid", "Payment Currency", "Payment Format", "Is Laundering",
]
# The IBM AMLworld layout as a `[source.fields]` mapping: accounts are `<bank>-<account>` (the second
# "Account" column is "Account#2", see `unique_header`), the amount is what was paid, and rows have no
# id, so the id is the file stem and row number: stable across replays.
AMLWORLD = FieldMapping({
    "tx_id": ["@source", "@offset"], "src": ["From Bank", "Account"], "dst": ["To Bank", "Account#2"],
    "amount": "Amount Paid", "ts": "Timestamp", "currency": "Payment Currency",
    "amount_received": "Amount Received", "receiving_currency": "Receiving Currency",
    "payment_format": "Payment Format", "is_laundering": "Is Laundering",
})
PARQUET_BATCH_ROWS = 8_192


class UnsupportedFileError(ValueError):
    """A path FileSource cannot read: missing, or a suffix it does not know."""


class FileSource(SequentialSource):
    """Transactions from a file, format by suffix; the AMLworld layout is recognised by its header.

    The file is one partition, `(path, 0)`; `start` skips rows before that row
    number, to resume from a checkpointed position.
    """

    def __init__(self, path: str | Path, start: int = 0, listener: RebalanceListener | None = None,
                 rate: float | None = None, *, mapping: FieldMapping | None = None):
        self.path = Path(path)
        self.mapping = mapping
        super().__init__((str(self.path), 0), start, listener, rate)
        if not self.path.is_file():
            raise UnsupportedFileError(f"{self.path}: no such file")
        suffix = self.path.suffix.lower()
        if suffix not in (*JSON_SUFFIXES, ".csv", ".parquet"):
            raise UnsupportedFileError(
                f"{self.path}: cannot read {suffix or 'a file without suffix'}; "
                f"use one of {', '.join((*JSON_SUFFIXES, '.csv', '.parquet'))}"
            )

    def rows(self, start: int) -> Iterator[SourceRecord]:
        suffix = self.path.suffix.lower()
        if suffix in JSON_SUFFIXES:
            records = self._json_lines()
        elif suffix == ".csv":
            records = self._csv_rows()
        else:
            records = self._parquet_rows()
        for record in records:
            if record.offset >= start:
                yield record

    def _position(self, row: int) -> tuple[str, int, int]:
        return (str(self.path), 0, row)

    def _json_lines(self) -> Iterator[SourceRecord]:
        with open(self.path, "rb") as lines:
            for row, line in enumerate(lines):
                if line.strip():
                    yield self._record(row, line.rstrip(b"\r\n"))

    def _csv_rows(self) -> Iterator[SourceRecord]:
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as text:
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                return
            names = unique_header(header)
            amlworld = self.mapping is None and header == AMLWORLD_HEADER
            for row, cells in enumerate(reader):
                position = self._position(row)
                raw = _csv_line(cells)
                if len(cells) != len(header):
                    yield SourceRecord(position, None, raw,
                                       f"columns:expected {len(header)} cells as in the header, got {len(cells)}")
                elif amlworld:
                    yield self._amlworld_record(row, dict(zip(names, cells)), raw)
                else:  # an empty cell counts as missing
                    yield self._record(row, {name: cell for name, cell in zip(names, cells) if cell != ""}, raw)

    def _parquet_rows(self) -> Iterator[SourceRecord]:
        row = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for values in batch.to_pylist():
                yield self._record(row, values)
                row += 1

    def _origin(self, row: int) -> tuple[str, int, int]:
        """The row's place as a mapping's `@source`, `@partition`, `@offset` see it."""
        return (self.path.stem, 0, row)

    def _record(self, row: int, data: dict | bytes, raw: bytes | None = None) -> SourceRecord:
        """A JSON line (bytes) or a decoded row through the mapping, if any, into a record."""
        mapping = self.mapping or IDENTITY
        if isinstance(data, bytes):
            return record_from_json(self._position(row), data, mapping=mapping, origin=self._origin(row))
        return record_from_mapping(self._position(row), data, raw, mapping=mapping, origin=self._origin(row))

    def _amlworld_record(self, row: int, cells: dict[str, str], raw: bytes) -> SourceRecord:
        data = AMLWORLD.apply(cells, self._origin(row))
        data["is_laundering"] = data.get("is_laundering") == "1"
        return record_from_mapping(self._position(row), data, raw)


def _csv_line(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def unique_header(header: list[str]) -> list[str]:
    """Column names made unique: a repeated name gets `#2`, `#3`... (AMLworld has two "Account" columns)."""
    seen: dict[str, int] = {}
    names = []
    for name in header:
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return names
