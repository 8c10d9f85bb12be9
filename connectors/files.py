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

from .records import SourceRecord, record_from_json, record_from_mapping
from .source import RebalanceListener, SequentialSource

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
AMLWORLD_HEADER = [
    "Timestamp", "From Bank", "Account", "To Bank", "Account", "Amount Received",
    "Receiving Currency", "Amount Paid", "Payment Currency", "Payment Format", "Is Laundering",
]
PARQUET_BATCH_ROWS = 8_192


class UnsupportedFileError(ValueError):
    """A path FileSource cannot read: missing, or a suffix it does not know."""


class FileSource(SequentialSource):
    """Transactions from a file, format by suffix; the AMLworld layout is recognised by its header.

    The file is one partition, `(path, 0)`; `start` skips rows before that row
    number, to resume from a checkpointed position.
    """

    def __init__(self, path: str | Path, start: int = 0, listener: RebalanceListener | None = None,
                 rate: float | None = None):
        self.path = Path(path)
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
                    yield record_from_json(self._position(row), line.rstrip(b"\r\n"))

    def _csv_rows(self) -> Iterator[SourceRecord]:
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as text:
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                return
            to_mapping = _amlworld_mapping if header == AMLWORLD_HEADER else _named_mapping
            for row, cells in enumerate(reader):
                position = self._position(row)
                raw = _csv_line(cells)
                if len(cells) != len(header):
                    yield SourceRecord(position, None, raw,
                                       f"columns:expected {len(header)} cells as in the header, got {len(cells)}")
                else:
                    yield record_from_mapping(position, to_mapping(header, cells, self.path.stem, row), raw)

    def _parquet_rows(self) -> Iterator[SourceRecord]:
        row = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for values in batch.to_pylist():
                yield record_from_mapping(self._position(row), values)
                row += 1


def _csv_line(cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(cells)
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def _named_mapping(header: list[str], cells: list[str], _stem: str, _row: int) -> dict[str, str]:
    """A row of a CSV with contract column names; an empty cell counts as missing."""
    return {name: cell for name, cell in zip(header, cells) if cell != ""}


def _amlworld_mapping(_header: list[str], cells: list[str], stem: str, row: int) -> dict[str, object]:
    """An AMLworld row as a transaction: accounts are `<bank>-<account>`, the amount is what was paid.

    AMLworld rows have no id, so the id is the file stem and row number: stable across replays.
    """
    (timestamp, from_bank, from_account, to_bank, to_account, amount_received,
     receiving_currency, amount_paid, payment_currency, payment_format, is_laundering) = cells
    return {
        "tx_id": f"{stem}-{row}",
        "src": _amlworld_account(from_bank, from_account),
        "dst": _amlworld_account(to_bank, to_account),
        "amount": amount_paid,
        "ts": timestamp,
        "currency": payment_currency,
        "amount_received": amount_received,
        "receiving_currency": receiving_currency,
        "payment_format": payment_format,
        "is_laundering": is_laundering == "1",
    }


def _amlworld_account(bank: str, account: str) -> str | None:
    return f"{bank}-{account}" if bank and account else None
