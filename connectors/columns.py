"""Rows to payment columns in bulk, judged by the same rule as one row at a time.

Both columnar readers use this: `detect` over files (`FileSource.chunks`) and
`KafkaSource.poll` over a poll's messages. Arrow's JSON reader parses many
values at once and `accept` keeps the rows that plainly pass the transaction
contract with vectorised tests that only ever accept; every other row — one
Arrow could not parse, or one `accept` cannot vouch for — goes through the
per-row rule (`records.record_from_json`: the mapping and
`Transaction.from_dict`), which decides and words the reason. So a row is
accepted or refused for the same reason on either path, and a bad row costs
only its own slow path (plus the halving of the part Arrow refused).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from ringwatch.graph import AMOUNT_SCALE, PAYMENT_SCHEMA, payment_table
from ringwatch.graph.model import DEFAULT_MAX_AMOUNT, TS_MAX, TS_MIN

from .records import SourceRecord

ARROW_MIN_ROWS = 32  # below this many values Arrow's per-call cost is more than the per-row rule's


@dataclass
class Payments:
    """Values decoded in bulk: the valid ones as a `PAYMENT_SCHEMA` table, `rows[i]` the value index of its
    row i; `rejected` the others as error records (the per-row rule's reasons)."""

    table: pa.Table
    rows: np.ndarray
    rejected: list[SourceRecord] = field(default_factory=list)

    @classmethod
    def joined(cls, parts: Sequence["Payments"], sizes: Sequence[int]) -> "Payments":
        """The payments of consecutive value lists (part i decoded from `sizes[i]` values) as one."""
        starts = np.cumsum([0, *sizes[:-1]])
        tables = [part.table for part in parts if part.table.num_rows]
        table = (PAYMENT_SCHEMA.empty_table() if not tables else tables[0] if len(tables) == 1
                 else pa.concat_tables(tables).combine_chunks())
        return cls(table, np.concatenate([part.rows + start for part, start in zip(parts, starts.tolist())]),
                   [record for part in parts for record in part.rejected])


def json_payments(values: Sequence[bytes | None], per_row: Callable[[int], SourceRecord],
                  max_amount: Decimal = DEFAULT_MAX_AMOUNT, max_bytes: int | None = None) -> Payments:
    """JSON objects, one per value, as payments; `per_row(i)` judges value i alone (with its reason).

    Values Arrow could misread go the per-row way alone: no value, one over
    `max_bytes`, a blank one or one with a line break (Arrow reads lines, and
    skips blank ones), one that is not UTF-8 (Arrow does not check). Arrow
    parses the others joined by newlines, and each part must give one row per
    value; a part it refuses is halved until the bad values go the per-row way.
    """
    plain = _plain(values, max_bytes)
    tables: list[pa.Table] = []
    rows: list[np.ndarray] = []
    rejected: list[SourceRecord] = []
    index = np.arange(len(values), dtype=np.int64)
    if plain is not None:
        _records_to([per_row(int(i)) for i in index[~plain]], index[~plain], tables, rows, rejected)
        index = index[plain]
        values = [values[i] for i in index.tolist()]
    _json_part(values, index, per_row, max_amount, tables, rows, rejected)
    if not tables:
        return Payments(PAYMENT_SCHEMA.empty_table(), np.zeros(0, np.int64), rejected)
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables).combine_chunks()
    return Payments(table, rows[0] if len(rows) == 1 else np.concatenate(rows), rejected)


def _plain(values: Sequence[bytes | None], max_bytes: int | None) -> np.ndarray | None:
    """None when every value may go to Arrow (checked at C speed); otherwise which ones may."""
    try:
        joined = b"\n".join(values)  # type: ignore[arg-type]  # a None value raises TypeError
        if (joined.count(b"\n") == len(values) - 1 and b"\r" not in joined and _utf8(joined)
                and all(map(bytes.strip, values))  # type: ignore[arg-type]
                and (max_bytes is None or max(map(len, values), default=0) <= max_bytes)):  # type: ignore[arg-type]
            return None
    except TypeError:
        pass
    return np.asarray([value is not None and b"\n" not in value and b"\r" not in value and bool(value.strip())
                       and _utf8(value) and (max_bytes is None or len(value) <= max_bytes) for value in values],
                      np.bool_)


def _utf8(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _json_part(values: Sequence[bytes], index: np.ndarray, per_row: Callable[[int], SourceRecord],
               max_amount: Decimal, tables: list[pa.Table], rows: list[np.ndarray],
               rejected: list[SourceRecord]) -> None:
    if not len(values):
        return
    table = read_json(b"\n".join(values)) if len(values) >= ARROW_MIN_ROWS else None
    if table is None or table.num_rows != len(values):
        if len(values) > ARROW_MIN_ROWS:
            half = len(values) // 2
            _json_part(values[:half], index[:half], per_row, max_amount, tables, rows, rejected)
            _json_part(values[half:], index[half:], per_row, max_amount, tables, rows, rejected)
            return
        _records_to([per_row(int(i)) for i in index], index, tables, rows, rejected)
        return
    accepted, doubtful = accept(table, max_amount)
    ok = np.ones(len(values), np.bool_)
    ok[doubtful] = False
    tables.append(accepted)
    rows.append(index[ok])
    if doubtful.size:
        _records_to([per_row(int(i)) for i in index[doubtful]], index[doubtful], tables, rows, rejected)


def _records_to(records: list[SourceRecord], index: np.ndarray, tables: list[pa.Table], rows: list[np.ndarray],
                rejected: list[SourceRecord]) -> None:
    valid = [k for k, record in enumerate(records) if record.ok]
    tables.append(payment_table([records[k].transaction for k in valid]))
    rows.append(index[np.asarray(valid, np.int64)])
    rejected.extend(record for record in records if not record.ok)


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


def read_json(data: bytes) -> pa.Table | None:
    """Newline-separated JSON objects as a table of the contract columns (None: Arrow refuses them)."""
    return _read_json(data, _JSON_PARSE) or _read_json(data, _JSON_PARSE_TEXT_TS)


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
        # compared in numpy: a Python scalar handed to pyarrow.compute costs a failed import on every call
        ok &= pc.utf8_length(pc.utf8_trim_whitespace(column)).fill_null(0).to_numpy(zero_copy_only=False) > 0
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
