"""File sources: JSON lines, CSV, Parquet and the IBM AMLworld `*_Trans.csv` layout.

Files are read as streams (line by line, or Parquet record batch by record
batch), so a file larger than memory is fine. Every data row becomes a
`SourceRecord` at `(path, 0, row_number)` (one partition; rows 0-based, header
excluded); a row that does not fit the transaction contract becomes an error
record with its raw text, never a crash and never a silent skip. `FileSource`
is a `Source` (connectors/source.py), so the engine can stream a file too.

`FileSource.chunks` reads the same files in bulk for `detect`: columns, not
rows (Arrow's JSON reader, Parquet batches, the C csv reader into columns),
checked with vectorised tests that only ever accept (connectors/columns.py,
which `KafkaSource` uses too); any row they do not
accept goes through the per-row path above (`_record`, the mapping and
`Transaction.from_dict`), which decides and words the reason, so both paths
judge every row by one rule. With a field mapping, or the AMLworld layout,
chunks are built from the per-row path. A file that cannot be read at all is
one `UnreadableFileError` naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ringwatch.graph import PAYMENT_SCHEMA, payment_table
from ringwatch.runtime.errors import RingwatchError

from .columns import accept, json_payments
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


class UnsupportedFileError(RingwatchError, ValueError):
    """A path FileSource cannot read: missing, or a suffix it does not know."""


class UnreadableFileError(UnsupportedFileError):
    """A file whose content is not what its suffix says (garbage Parquet, binary CSV...)."""


@dataclass
class PaymentChunk:
    """Consecutive rows of an input: the valid payments as a `PAYMENT_SCHEMA` table, the rejected rows."""

    table: pa.Table
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {"position", "reason", "raw"}
    rows: int = 0


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
        if self.path.is_dir():
            raise UnsupportedFileError(f"{self.path}: a directory, not a file of payments")
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

    def chunks(self, rows: int = 65_536) -> Iterator[PaymentChunk]:
        """The file in chunks of about `rows` rows, columnar (see the module doc)."""
        suffix = self.path.suffix.lower()
        try:
            if self.mapping is not None or (suffix == ".csv" and self._csv_header() == AMLWORLD_HEADER):
                yield from self._row_chunks(rows)
            elif suffix in JSON_SUFFIXES:
                yield from self._json_chunks(rows)
            elif suffix == ".csv":
                yield from self._csv_chunks(rows)
            else:
                yield from self._parquet_chunks(rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
            raise UnreadableFileError(f"{self.path}: cannot read it as {suffix[1:]}: {exc}") from None

    def _csv_header(self) -> list[str] | None:
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as text:
            return next(csv.reader(text), None)

    def _row_chunks(self, rows: int) -> Iterator[PaymentChunk]:
        records = self.rows(self.start)
        while True:
            block = list(itertools.islice(records, rows))
            if not block:
                return
            chunk = PaymentChunk(PAYMENT_SCHEMA.empty_table(), rows=len(block))
            chunk.table = _collect(block, chunk)
            yield chunk

    def _json_chunks(self, rows: int) -> Iterator[PaymentChunk]:
        """Blocks of whole lines straight to Arrow; a block with blank or bad lines goes line by line."""
        block_bytes = max(rows, 1) * 256
        with open(self.path, "rb") as data:
            row, tail = 0, b""
            while True:
                read = data.read(block_bytes)
                block = tail + read
                if not read:
                    if block.strip():
                        yield self._json_block(block, row)
                    return
                cut = block.rfind(b"\n") + 1
                block, tail = block[:cut], block[cut:]
                if block:
                    chunk = self._json_block(block, row)
                    row += chunk.rows
                    yield chunk

    def _json_block(self, block: bytes, row: int) -> PaymentChunk:
        """Whole lines in bulk (`columns.json_payments`); blank lines are skipped, as `rows` does."""
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        chunk = PaymentChunk(PAYMENT_SCHEMA.empty_table(), rows=len(lines))
        numbered = [(row + i, line.rstrip(b"\r")) for i, line in enumerate(lines) if row + i >= self.start]
        numbered = [(i, line) for i, line in numbered if line.strip()]
        payments = json_payments([line for _, line in numbered], lambda k: self._record(*numbered[k]))
        chunk.table = payments.table
        _collect(payments.rejected, chunk)
        return chunk

    @contextlib.contextmanager
    def _csv(self) -> Iterator[tuple[list[str] | None, Iterator[list[str]]]]:
        """The file's header row (None for an empty file) and a reader over the rows after it."""
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as text:
            reader = csv.reader(text)
            yield next(reader, None), reader

    def _csv_chunks(self, rows: int) -> Iterator[PaymentChunk]:
        with self._csv() as (header, reader):
            if header is None:
                return
            names = unique_header(header)
            row = 0
            while True:
                block = list(itertools.islice(reader, rows))
                if not block:
                    return
                chunk = PaymentChunk(PAYMENT_SCHEMA.empty_table(), rows=len(block))
                parts, good, good_rows, records = [], [], [], []
                for i, cells in enumerate(block, start=row):
                    if i < self.start:
                        continue
                    if len(cells) != len(header):
                        records.append(SourceRecord(self._position(i), None, _csv_line(cells),
                                                    _width_error(header, cells)))
                    else:
                        good.append(cells)
                        good_rows.append(i)
                if good:
                    table = pa.table({name: pa.array([cells[k] for cells in good], pa.string())
                                      for k, name in enumerate(names) if name in PAYMENT_SCHEMA.names})
                    if "currency" in table.column_names:  # an empty cell counts as missing
                        currency = table.column("currency")
                        table = table.set_column(table.column_names.index("currency"), "currency",
                                                 pc.if_else(pc.equal(currency, ""), None, currency))
                    accepted, doubtful = accept(table)
                    parts.append(accepted)
                    for k in doubtful.tolist():
                        cells = good[k]
                        records.append(self._record(good_rows[k], {n: c for n, c in zip(names, cells) if c != ""},
                                                    _csv_line(cells)))
                parts.append(_collect(records, chunk))
                chunk.table = pa.concat_tables(parts)
                row += len(block)
                yield chunk

    def _parquet_chunks(self, rows: int) -> Iterator[PaymentChunk]:
        row = 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=rows):
            chunk = PaymentChunk(PAYMENT_SCHEMA.empty_table(), rows=batch.num_rows)
            table = pa.Table.from_batches([batch])
            if row < self.start:
                table = table.slice(min(self.start - row, table.num_rows))
            first = row + batch.num_rows - table.num_rows
            accepted, doubtful = accept(table)
            records = [self._record(first + k, table.slice(k, 1).to_pylist()[0]) for k in doubtful.tolist()]
            chunk.table = pa.concat_tables([accepted, _collect(records, chunk)])
            row += batch.num_rows
            yield chunk

    def _position(self, row: int) -> tuple[str, int, int]:
        return (str(self.path), 0, row)

    def _json_lines(self) -> Iterator[SourceRecord]:
        with open(self.path, "rb") as lines:
            for row, line in enumerate(lines):
                if line.strip():
                    yield self._record(row, line.rstrip(b"\r\n"))

    def _csv_rows(self) -> Iterator[SourceRecord]:
        with self._csv() as (header, reader):
            if header is None:
                return
            names = unique_header(header)
            amlworld = self.mapping is None and header == AMLWORLD_HEADER
            for row, cells in enumerate(reader):
                position = self._position(row)
                raw = _csv_line(cells)
                if len(cells) != len(header):
                    yield SourceRecord(position, None, raw, _width_error(header, cells))
                elif amlworld:
                    yield self._amlworld_record(row, dict(zip(names, cells)), raw)
                else:  # an empty cell counts as missing
                    yield self._record(row, {name: cell for name, cell in zip(names, cells) if cell != ""}, raw)

    def _parquet_rows(self) -> Iterator[SourceRecord]:
        row = 0
        try:
            batches = pq.ParquetFile(self.path).iter_batches(batch_size=PARQUET_BATCH_ROWS)
            for batch in batches:
                for values in batch.to_pylist():
                    yield self._record(row, values)
                    row += 1
        except (pa.ArrowInvalid, OSError) as exc:
            raise UnreadableFileError(f"{self.path}: cannot read it as parquet: {exc}") from None

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


def _width_error(header: list[str], cells: list[str]) -> str:
    """The dead-letter reason of a CSV row whose cells do not line up with the header."""
    return f"columns:expected {len(header)} cells as in the header, got {len(cells)}"


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


def _collect(records: list[SourceRecord], chunk: PaymentChunk) -> pa.Table:
    """The valid records as a payment table; the others into `chunk.rejected`."""
    valid = []
    for record in records:
        if record.ok:
            valid.append(record.transaction)
        else:
            chunk.rejected.append({"position": list(record.position), "reason": record.error,
                                   "raw": record.raw.decode("utf-8", "replace") if record.raw else None})
    return payment_table(valid)
