"""File sources read every row: valid ones as transactions, bad ones as error records with their raw text."""

from __future__ import annotations

import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ringwatch.connectors import FileSource, SyntheticConfig, UnsupportedFileError, generate, write_stream
from ringwatch.graph import Transaction


def test_jsonl_keeps_bad_lines_as_error_records_with_raw_bytes(tmp_path):
    path = tmp_path / "payments.jsonl"
    lines = [
        b'{"tx_id": "t1", "src": "a", "dst": "b", "amount": 10.5, "ts": 1000, "channel": "app"}',
        b'{"tx_id": "t2", "src": "b", "dst": "a", "amount"',
        b'',
        b'{"tx_id": "t3", "src": "b", "amount": 3, "ts": 1001}',
        b'{"tx_id": "t4", "src": "b", "dst": "c", "amount": -3, "ts": "2024-01-01T00:00:00Z"}',
        b'\xff\xfe not utf-8',
        b'{"tx_id": "t5", "src": "c", "dst": "a", "amount": 2, "ts": "2024-01-01T00:00:01Z"}',
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")

    records = list(FileSource(path))

    assert [r.position for r in records] == [(str(path), 0, row) for row in (0, 1, 3, 4, 5, 6)]
    first, malformed, no_dst, negative, binary, last = records
    assert first.transaction == Transaction("t1", "a", "b", 10.5, 1000)
    assert first.transaction.extra == {"channel": "app"}
    assert malformed.error.startswith("malformed:") and malformed.raw == lines[1]
    assert no_dst.error == "invalid:dst: missing" and no_dst.raw == lines[3]
    assert negative.error.startswith("invalid:amount:") and negative.transaction is None
    assert binary.error.startswith("malformed:") and binary.raw == lines[5]
    assert last.ok and last.transaction.ts == 1_704_067_201_000


def test_csv_reads_contract_columns_and_keeps_bad_rows(tmp_path):
    path = tmp_path / "payments.csv"
    path.write_text(
        "tx_id,src,dst,amount,ts,currency,channel\n"
        "t1,a,b,10.5,1000,EUR,app\n"
        "t2,b,a,ten,1001,EUR,app\n"
        "t3,b,c,4,1002,,\n"
        "t4,c,a,4\n"
        '"t,5",c,a,7,2024-01-01T00:00:00,USD,branch\n'
    )

    first, bad_amount, no_currency, short, quoted = FileSource(path)

    assert first.transaction == Transaction("t1", "a", "b", 10.5, 1000, "EUR")
    assert first.transaction.extra == {"channel": "app"}
    assert bad_amount.error.startswith("invalid:amount:") and bad_amount.raw == b"t2,b,a,ten,1001,EUR,app"
    assert no_currency.ok and no_currency.transaction.currency is None
    assert short.error.startswith("columns:") and short.raw == b"t4,c,a,4"
    assert quoted.transaction.tx_id == "t,5" and quoted.transaction.ts == 1_704_067_200_000
    assert [r.offset for r in (first, bad_amount, no_currency, short, quoted)] == [0, 1, 2, 3, 4]


def test_amlworld_layout_is_detected_by_its_header(tmp_path):
    path = tmp_path / "HI-Small_Trans.csv"
    path.write_text(
        "Timestamp,From Bank,Account,To Bank,Account,Amount Received,Receiving Currency,"
        "Amount Paid,Payment Currency,Payment Format,Is Laundering\n"
        "2022/09/01 00:20,010,8000EBD30,010,8000EBD30,3697.34,US Dollar,3697.34,US Dollar,Reinvestment,0\n"
        "2022/09/01 00:20,03208,8000F4580,001,8000F5340,0.01,US Dollar,0.01,US Dollar,Cheque,1\n"
        "2022/09/01 00:21,03209,8000F4670,001,8000F5340,abc,US Dollar,abc,US Dollar,Cheque,0\n"
    )

    first, laundering, bad = FileSource(path)

    tx = laundering.transaction
    assert (tx.tx_id, tx.src, tx.dst, tx.amount, tx.currency) == (
        "HI-Small_Trans-1", "03208-8000F4580", "001-8000F5340", Decimal("0.01"), "US Dollar")
    assert tx.ts == 1_661_991_600_000  # 2022-09-01T00:20:00Z
    assert tx.extra == {"amount_received": "0.01", "receiving_currency": "US Dollar",
                        "payment_format": "Cheque", "is_laundering": True}
    assert first.transaction.extra["is_laundering"] is False
    assert bad.error.startswith("invalid:amount:") and bad.raw.startswith(b"2022/09/01 00:21,03209")


def test_parquet_is_read_batch_by_batch_with_null_cells_as_errors(tmp_path):
    path = tmp_path / "payments.parquet"
    n = 20_000
    table = pa.table({
        "tx_id": [f"t{i}" for i in range(n)],
        "src": [f"a{i % 97}" for i in range(n)],
        "dst": [None if i == 12_345 else f"b{i % 89}" for i in range(n)],
        "amount": [1.0 + i for i in range(n)],
        "ts": list(range(n)),
    })
    pq.write_table(table, path, row_group_size=1_000)

    records = list(FileSource(path))

    assert len(records) == n
    assert [r.offset for r in records] == list(range(n))
    bad = records[12_345]
    assert bad.error == "invalid:dst: missing" and json.loads(bad.raw)["tx_id"] == "t12345"
    assert records[19_999].transaction == Transaction("t19999", f"a{19_999 % 97}",
                                                      f"b{19_999 % 89}", 20_000.0, 19_999)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_generated_stream_reads_back_identically_and_resumes_from_a_row(tmp_path, suffix):
    stream = generate(SyntheticConfig(n_transactions=3_000, n_accounts=500, days=2, n_rings=5, seed=11))
    path = tmp_path / f"stream{suffix}"
    write_stream(stream, path)

    assert [r.transaction for r in FileSource(path)] == stream.transactions
    assert [r.transaction for r in FileSource(path, start=2_990)] == stream.transactions[2_990:]


def test_unknown_suffix_and_missing_file_are_refused_with_the_path(tmp_path):
    (tmp_path / "payments.xlsx").write_text("x")
    with pytest.raises(UnsupportedFileError, match="payments.xlsx"):
        FileSource(tmp_path / "payments.xlsx")
    with pytest.raises(UnsupportedFileError, match="no such file"):
        FileSource(tmp_path / "absent.csv")
    with pytest.raises(UnsupportedFileError, match="a directory, not a file"):
        FileSource(tmp_path)
