"""File sources: JSON lines, CSV, Parquet and the IBM AMLworld `*_Trans.csv` layout.

Files are read as streams (line by line, or Parquet record batch by record
batch), so a file larger than memory is fine. Every data row becomes a
`SourceRecord` at `(path, 0, row_number)` (one partition; rows 0-based, header
excluded); a row that does not fit the transaction contract becomes an error
record with its raw text, never a crash and never a silent skip. `FileSource`
is a `Source` (connectors/source.py), so the engine can stream a file too.

`FileSource.chunks` reads the same files in bulk for `detect`: columns, not
rows (Arrow's JSON reader, Parquet batches, the C csv reader into columns),
checked with vectorised tests that only ever accept; any row they do not
accept goes through the per-row path above (`_record`, the mapping and
`Transaction.from_dict`), which decides and words the reason, so both paths
judge every row by one rule. With a field mapping, or the AMLworld layout,
chunks are built from the per-row path. A file that cannot be read at all is
one `UnreadableFileError` naming the file and the problem.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from ringwatch.graph import AMOUNT_SCALE, PAYMENT_SCHEMA, payment_table
from ringwatch.graph.model import DEFAULT_MAX_AMOUNT, TS_MAX, TS_MIN

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
        lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        chunk = PaymentChunk(PAYMENT_SCHEMA.empty_table(), rows=lines)
        if row >= self.start and b"\n\n" not in block and not block.startswith(b"\n") and b"\r" not in block:
            table = _read_json(block, _JSON_PARSE) or _read_json(block, _JSON_PARSE_TEXT_TS)
            if table is not None and table.num_rows == lines:
                accepted, doubtful = accept(table)
                if doubtful.size == 0:
                    chunk.table = accepted
                    return chunk
        numbered = [(row + i, line.rstrip(b"\r")) for i, line in enumerate(block.split(b"\n")[:lines])]
        numbered = [(i, line) for i, line in numbered if line.strip() and i >= self.start]
        parts: list[pa.Table] = []
        self._json_part(numbered, parts, chunk)
        chunk.table = pa.concat_tables(parts) if parts else chunk.table
        return chunk

    def _json_part(self, numbered: list[tuple[int, bytes]], parts: list[pa.Table], chunk: PaymentChunk) -> None:
        """Parse lines with Arrow; a part it refuses is halved until the bad lines go the per-row way."""
        if not numbered:
            return
        data = b"\n".join(line for _, line in numbered)
        table = _read_json(data, _JSON_PARSE) or _read_json(data, _JSON_PARSE_TEXT_TS)
        if table is None or table.num_rows != len(numbered):
            if len(numbered) > 64:
                half = len(numbered) // 2
                self._json_part(numbered[:half], parts, chunk)
                self._json_part(numbered[half:], parts, chunk)
                return
            parts.append(_collect([self._record(i, line) for i, line in numbered], chunk))
            return
        accepted, doubtful = accept(table)
        parts.append(accepted)
        if doubtful.size:
            parts.append(_collect([self._record(*numbered[i]) for i in doubtful.tolist()], chunk))

    def _csv_chunks(self, rows: int) -> Iterator[PaymentChunk]:
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as text:
            reader = csv.reader(text)
            header = next(reader, None)
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
                                                    f"columns:expected {len(header)} cells as in the header, "
                                                    f"got {len(cells)}"))
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


def _json_options(ts_type: pa.DataType) -> pj.ParseOptions:
    return pj.ParseOptions(explicit_schema=pa.schema([
        ("tx_id", pa.string()), ("src", pa.string()), ("dst", pa.string()), ("amount", pa.decimal128(38, 4)),
        ("ts", ts_type), ("currency", pa.string())]), unexpected_field_behavior="ignore")


_JSON_PARSE = _json_options(pa.int64())
_JSON_PARSE_TEXT_TS = _json_options(pa.string())  # ISO-8601 times: left to the per-row rule


def _read_json(data: bytes, options: pj.ParseOptions) -> pa.Table | None:
    try:
        return pj.read_json(io.BytesIO(data), parse_options=options, read_options=pj.ReadOptions(block_size=1 << 26))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


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


def accept(table: pa.Table, max_amount: Decimal = DEFAULT_MAX_AMOUNT) -> tuple[pa.Table, np.ndarray]:
    """The rows that plainly pass the contract, as a payment table, and the indices of all others.

    Only accepts: a row it cannot vouch for (a null, an empty id, an amount or
    a time it cannot read exactly) is left to the per-row rule.
    """
    n = table.num_rows
    ok = np.ones(n, np.bool_)
    columns = {}
    for name in ("tx_id", "src", "dst"):
        column = table.column(name) if name in table.column_names else pa.nulls(n, pa.string())
        column = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        ok &= pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False).to_numpy(
            zero_copy_only=False)
        columns[name] = column
    units, amount_ok = _amount_units(table.column("amount") if "amount" in table.column_names else None, n)
    ok &= amount_ok & (units > 0) & (units <= int(max_amount * AMOUNT_SCALE))
    stamps, ts_ok = _timestamps(table.column("ts") if "ts" in table.column_names else None, n)
    ok &= ts_ok
    currency = table.column("currency") if "currency" in table.column_names else pa.nulls(n, pa.string())
    currency = currency.combine_chunks() if isinstance(currency, pa.ChunkedArray) else currency
    if not pa.types.is_string(currency.type):
        ok &= pc.is_null(currency).to_numpy(zero_copy_only=False)
        currency = pa.nulls(n, pa.string())
    keep = np.flatnonzero(ok)
    indices = pa.array(keep)
    accepted = pa.table([columns["tx_id"].take(indices), columns["src"].take(indices), columns["dst"].take(indices),
                         pa.array(stamps[keep]), pa.array(units[keep]), currency.take(indices)], schema=PAYMENT_SCHEMA)
    return accepted, np.flatnonzero(~ok)


def _amount_units(column: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if column is None:
        return np.zeros(n, np.int64), np.zeros(n, np.bool_)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = ~pc.is_null(column).to_numpy(zero_copy_only=False)
    kind = column.type
    if pa.types.is_string(kind):
        try:
            column = column.cast(pa.decimal128(38, 4))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return np.zeros(n, np.int64), np.zeros(n, np.bool_)
        kind = column.type
    if pa.types.is_decimal(kind):
        try:
            column = column.cast(pa.decimal128(38, 4))
        except pa.ArrowInvalid:
            return np.zeros(n, np.int64), np.zeros(n, np.bool_)
        raw = np.frombuffer(column.buffers()[1], np.int64)[2 * column.offset:2 * (column.offset + n)]
        low, high = raw[0::2], raw[1::2]
        fits = (high == 0) & (low >= 0) | (high == -1) & (low < 0)
        return np.where(valid & fits, low, 0), valid & fits
    if pa.types.is_integer(kind):
        values = column.fill_null(0).to_numpy().astype(np.int64)
        small = np.abs(values) < 2**62 // AMOUNT_SCALE
        return np.where(small, values * AMOUNT_SCALE, 0), valid & small
    if pa.types.is_floating(kind):
        values = column.fill_null(0).to_numpy().astype(np.float64)
        scaled = values * AMOUNT_SCALE
        units = np.rint(np.where(np.isfinite(scaled) & (np.abs(scaled) < 2**52), scaled, 0))
        # exact when the value is the double nearest to units / 10,000: then its repr has at most 4 decimals
        exact = units / AMOUNT_SCALE == values
        return units.astype(np.int64), valid & exact & (units != 0)
    return np.zeros(n, np.int64), np.zeros(n, np.bool_)


def _timestamps(column: pa.ChunkedArray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if column is None:
        return np.zeros(n, np.int64), np.zeros(n, np.bool_)
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    valid = ~pc.is_null(column).to_numpy(zero_copy_only=False)
    if pa.types.is_string(column.type):
        digits = pc.fill_null(pc.match_substring_regex(column, r"^\s*\d{1,15}\s*$"), False)
        column = pc.if_else(digits, pc.utf8_trim_whitespace(column), "0").cast(pa.int64())
        valid &= digits.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(column.type):
        values = column.fill_null(0).to_numpy().astype(np.int64)
    else:
        return np.zeros(n, np.int64), np.zeros(n, np.bool_)
    return values, valid & (values >= TS_MIN) & (values <= TS_MAX)
