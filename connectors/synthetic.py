"""A seedable AML-like payment stream with injected laundering rings and their ground truth.

One generator serves the benchmarks, the tests and `GeneratorSource`, so every
figure and every test is about the same kind of traffic. Two modes:

- ``bank``: retail-bank roles. Consumers pay merchants (heavy-tailed merchant
  popularity), employers pay salaries to consumers, consumers pay each other
  (P2P, mildly skewed), merchants pay suppliers (B2B). Few genuine cycles, big hubs.
- ``dense``: both ends of every payment drawn from one heavy-tailed
  distribution, so a strongly connected core full of genuine short cycles
  forms: the adversarial case for a ring search.

Both inject time-ordered rings of 2..6 hops among ordinary (non-hub) accounts,
each hop passing on 85..99% of the previous amount; `SyntheticStream.rings` is
the ground truth. Everything is built with numpy in vectorised steps, so a
million transactions take seconds, and the same seed gives the same stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ringwatch.graph import Transaction

from .records import SourceRecord
from .source import RebalanceListener, SequentialSource
from .synthetic_config import DAY_MS, RING_GAP_MS, InvalidSyntheticConfigError, SyntheticConfig

# Bank mode: share of accounts per role and share of payments per kind.
_ROLE_SHARES = {"merchant": 0.05, "employer": 0.01, "supplier": 0.01}
_KIND_SHARES = {"purchase": 0.62, "p2p": 0.20, "salary": 0.08, "b2b": 0.10}
# (log-mean, log-sigma) of the amount of each kind of payment, in currency units.
_AMOUNT_LOGNORMAL = {"purchase": (3.3, 1.0), "p2p": (4.0, 1.1), "salary": (7.8, 0.4),
                     "b2b": (8.0, 1.2), "dense": (4.5, 1.3), "ring": (8.5, 0.6)}


@dataclass(frozen=True, slots=True)
class InjectedRing:
    """A laundering ring: `accounts[i]` pays `accounts[i+1]` in `tx_ids[i]`, the last pays `accounts[0]`.

    `tx_ids[-1]` closes the ring: it is the trigger that should raise the alert.
    """

    accounts: tuple[str, ...]
    tx_ids: tuple[str, ...]


@dataclass
class SyntheticStream:
    """A generated stream held as columns, in non-decreasing `ts` order.

    `src`/`dst` are indices into `account_names`; row i has the id `tx_id(i)`.
    """

    config: SyntheticConfig
    src: np.ndarray
    dst: np.ndarray
    amount: np.ndarray
    ts: np.ndarray
    rings: list[InjectedRing]
    account_names: np.ndarray = field(repr=False)
    _transactions: list[Transaction] | None = field(default=None, init=False, repr=False)

    def __len__(self) -> int:
        return len(self.ts)

    def tx_id(self, index: int) -> str:
        return _tx_id(index, len(self))

    @property
    def transactions(self) -> list[Transaction]:
        """All transactions as records, built once on first use."""
        if self._transactions is None:
            self._transactions = list(self.iter_transactions())
        return self._transactions

    def iter_transactions(self, start: int = 0) -> Iterator[Transaction]:
        """Transactions from row `start` on, built lazily (no list of a million records)."""
        names = self.account_names
        src, dst = names[self.src[start:]].tolist(), names[self.dst[start:]].tolist()
        amounts, stamps = self.amount[start:].tolist(), self.ts[start:].tolist()
        width, currency = _tx_id_width(len(self)), self.config.currency
        for offset, (s, d, a, t) in enumerate(zip(src, dst, amounts, stamps)):
            yield Transaction(f"tx{start + offset:0{width}d}", s, d, a, t, currency)

    def to_arrow(self) -> pa.Table:
        width = _tx_id_width(len(self))
        tx_ids = np.char.add("tx", np.char.zfill(np.arange(len(self)).astype(str), width))
        return pa.table({
            "tx_id": pa.array(tx_ids.tolist(), pa.string()),
            "src": pa.array(self.account_names[self.src].tolist(), pa.string()),
            "dst": pa.array(self.account_names[self.dst].tolist(), pa.string()),
            "amount": pa.array(self.amount, pa.float64()),
            "ts": pa.array(self.ts, pa.int64()),
            "currency": pa.array([self.config.currency] * len(self), pa.string()),
        })


def _tx_id_width(n: int) -> int:
    return max(8, len(str(max(n - 1, 0))))


def _tx_id(index: int, n: int) -> str:
    return f"tx{index:0{_tx_id_width(n)}d}"


def generate(config: SyntheticConfig) -> SyntheticStream:
    """Build the stream for `config`; the same config (seed included) gives the same stream."""
    rng = np.random.default_rng(config.seed)
    ring_lengths = rng.integers(config.ring_hops[0], config.ring_hops[1] + 1, size=config.n_rings)
    n_background = config.n_transactions - int(ring_lengths.sum())
    span_ms = int(config.days * DAY_MS)
    if config.mode == "bank":
        src, dst, amount, ordinary = _bank_payments(rng, config.n_accounts, n_background)
    else:
        src, dst, amount, ordinary = _dense_payments(rng, config.n_accounts, n_background)
    ts = config.start_ts + rng.integers(0, span_ms, size=n_background)
    ring_src, ring_dst, ring_amount, ring_ts, ring_of_row = _ring_payments(
        rng, config, ring_lengths, ordinary, span_ms
    )
    src = np.concatenate([src, ring_src])
    dst = np.concatenate([dst, ring_dst])
    amount = np.concatenate([amount, ring_amount])
    ts = np.concatenate([ts, ring_ts])
    order = np.argsort(ts, kind="stable")
    names = np.array([f"A{i:0{len(str(config.n_accounts - 1))}d}" for i in range(config.n_accounts)])
    stream = SyntheticStream(config, src[order], dst[order], amount[order], ts[order], [], names)
    stream.rings = _ring_truth(stream, order, n_background, ring_of_row, ring_lengths)
    return stream


def _heavy_tailed_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Zipf-like popularity in a random order: weight of rank r is r**-exponent."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    rng.shuffle(weights)
    return weights / weights.sum()


def _draw(rng: np.random.Generator, pool: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    return pool[rng.choice(len(pool), size=size, p=weights)]


def _lognormal_amounts(rng: np.random.Generator, kind: str, size: int) -> np.ndarray:
    mean, sigma = _AMOUNT_LOGNORMAL[kind]
    return np.maximum(np.round(rng.lognormal(mean, sigma, size=size), 2), 0.01)


def _bank_payments(rng: np.random.Generator, n_accounts: int, n: int) -> tuple[np.ndarray, ...]:
    """Payments between role-typed accounts; returns src, dst, amount and the ordinary accounts."""
    accounts = rng.permutation(n_accounts)
    counts = {role: max(1, int(n_accounts * share)) for role, share in _ROLE_SHARES.items()}
    merchants = accounts[:counts["merchant"]]
    employers = accounts[counts["merchant"]:counts["merchant"] + counts["employer"]]
    suppliers = accounts[counts["merchant"] + counts["employer"]:sum(counts.values())]
    consumers = accounts[sum(counts.values()):]
    merchant_w = _heavy_tailed_weights(rng, len(merchants), 1.1)
    supplier_w = _heavy_tailed_weights(rng, len(suppliers), 1.0)
    p2p_w = _heavy_tailed_weights(rng, len(consumers), 0.5)
    employer_of = _draw(rng, employers, _heavy_tailed_weights(rng, len(employers), 1.0), len(consumers))

    kinds = list(_KIND_SHARES)
    kind = rng.choice(len(kinds), size=n, p=list(_KIND_SHARES.values()))
    src = np.empty(n, dtype=np.int64)
    dst = np.empty(n, dtype=np.int64)
    amount = np.empty(n, dtype=np.float64)
    for k, name in enumerate(kinds):
        rows = np.flatnonzero(kind == k)
        size = len(rows)
        if name == "purchase":
            src[rows] = _draw(rng, consumers, None, size)
            dst[rows] = _draw(rng, merchants, merchant_w, size)
        elif name == "p2p":
            src[rows] = _draw(rng, consumers, p2p_w, size)
            dst[rows] = _distinct_from(rng, src[rows], consumers, p2p_w)
        elif name == "salary":
            payee = rng.integers(0, len(consumers), size=size)
            src[rows] = employer_of[payee]
            dst[rows] = consumers[payee]
        else:
            src[rows] = _draw(rng, merchants, merchant_w, size)
            dst[rows] = _draw(rng, suppliers, supplier_w, size)
        amount[rows] = _lognormal_amounts(rng, name, size)
    return src, dst, amount, consumers


def _dense_payments(rng: np.random.Generator, n_accounts: int, n: int) -> tuple[np.ndarray, ...]:
    """Both ends from one heavy-tailed law; the ordinary accounts are the least popular half."""
    accounts = np.arange(n_accounts)
    weights = _heavy_tailed_weights(rng, n_accounts, 1.0)
    src = _draw(rng, accounts, weights, n)
    dst = _distinct_from(rng, src, accounts, weights)
    ordinary = np.argsort(weights, kind="stable")[: n_accounts // 2]
    return src, dst, _lognormal_amounts(rng, "dense", n), ordinary


def _distinct_from(rng: np.random.Generator, src: np.ndarray, pool: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Draw payees from `pool`; a payee equal to its payer is redrawn until none is (no self-payments)."""
    dst = _draw(rng, pool, weights, len(src))
    clash = np.flatnonzero(dst == src)
    while len(clash):
        dst[clash] = _draw(rng, pool, weights, len(clash))
        clash = clash[dst[clash] == src[clash]]
    return dst


def _ring_payments(rng: np.random.Generator, config: SyntheticConfig, lengths: np.ndarray,
                   ordinary: np.ndarray, span_ms: int) -> tuple[np.ndarray, ...]:
    """Rows of every injected ring, each ring on its own accounts, hops strictly later than the last."""
    total = int(lengths.sum())
    members = rng.choice(ordinary, size=total, replace=False)
    src = np.empty(total, dtype=np.int64)
    dst = np.empty(total, dtype=np.int64)
    amount = np.empty(total, dtype=np.float64)
    ts = np.empty(total, dtype=np.int64)
    ring_of_row = np.repeat(np.arange(len(lengths)), lengths)
    first = 0
    for hops in lengths.tolist():
        ring = members[first:first + hops]
        rows = slice(first, first + hops)
        src[rows], dst[rows] = ring, np.roll(ring, -1)
        ratios = rng.uniform(config.pass_on[0], config.pass_on[1], size=hops - 1)
        start_amount = _lognormal_amounts(rng, "ring", 1)[0]
        amount[rows] = np.maximum(np.round(start_amount * np.concatenate([[1.0], np.cumprod(ratios)]), 2), 0.01)
        gaps = rng.integers(RING_GAP_MS[0], RING_GAP_MS[1], size=hops - 1)
        offsets = np.concatenate([[0], np.cumsum(gaps)])
        begin = rng.integers(0, span_ms - int(offsets[-1]))
        ts[rows] = config.start_ts + begin + offsets
        first += hops
    return src, dst, amount, ts, ring_of_row


def _ring_truth(stream: SyntheticStream, order: np.ndarray, n_background: int,
                ring_of_row: np.ndarray, lengths: np.ndarray) -> list[InjectedRing]:
    """Map each ring's generated rows to their final positions (tx ids) after the time sort."""
    position_of_row = np.empty(len(order), dtype=np.int64)
    position_of_row[order] = np.arange(len(order))
    rings: list[InjectedRing] = []
    first = n_background
    for hops in lengths.tolist():
        positions = position_of_row[first:first + hops].tolist()
        rings.append(InjectedRing(
            accounts=tuple(str(stream.account_names[stream.src[p]]) for p in positions),
            tx_ids=tuple(stream.tx_id(p) for p in positions),
        ))
        first += hops
    return rings


def write_stream(stream: SyntheticStream, path: str | Path) -> Path:
    """Write the transactions (format by suffix: .jsonl/.ndjson/.json, .csv, .parquet) and the truth.

    The ground truth goes to `<path>.truth.json` (config and rings); returns its path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    table = stream.to_arrow()
    if suffix == ".parquet":
        pq.write_table(table, path, row_group_size=65_536)
    elif suffix == ".csv":
        pacsv.write_csv(table, path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        _write_jsonl(table, path)
    else:
        raise ValueError(f"write_stream: unknown suffix {path.suffix!r} of {path}; use .jsonl, .csv or .parquet")
    return write_truth(stream, path.with_name(path.name + ".truth.json"))


def write_truth(stream: SyntheticStream, path: str | Path) -> Path:
    """Write the config and the injected rings as JSON (what `read_truth` reads back)."""
    path = Path(path)
    truth = {"config": asdict(stream.config), "rings": [asdict(ring) for ring in stream.rings]}
    path.write_text(json.dumps(truth, indent=1))
    return path


def _write_jsonl(table: pa.Table, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as out:
        for batch in table.to_batches(max_chunksize=65_536):
            out.writelines(json.dumps(row, separators=(",", ":")) + "\n" for row in batch.to_pylist())


def read_truth(path: str | Path) -> list[InjectedRing]:
    """The injected rings from a truth file, or from the one `write_stream` put beside the stream at `path`."""
    path = Path(path)
    beside = path.with_name(path.name + ".truth.json")
    truth_path = beside if beside.exists() else path
    data = json.loads(truth_path.read_text())
    return [InjectedRing(tuple(r["accounts"]), tuple(r["tx_ids"])) for r in data["rings"]]


class GeneratorSource(SequentialSource):
    """The synthetic stream as a one-partition `Source`: records at `("synthetic", 0, row)`.

    With `rate` (tx/s) records become available at that pace, so a benchmark
    can offer a fixed load; without it they come as fast as read. `start`
    resumes after a checkpoint: rows before it are skipped.
    """

    PARTITION = ("synthetic", 0)

    def __init__(self, config: SyntheticConfig, rate: float | None = None, start: int = 0,
                 listener: RebalanceListener | None = None):
        if rate is not None and rate <= 0:
            raise InvalidSyntheticConfigError(f"rate: must be > 0 tx/s, got {rate}")
        super().__init__(self.PARTITION, start, listener, rate)
        self.config = config
        self.stream = generate(config)

    @property
    def rings(self) -> list[InjectedRing]:
        return self.stream.rings

    def rows(self, start: int) -> Iterator[SourceRecord]:
        for offset, tx in enumerate(self.stream.iter_transactions(start), start):
            yield SourceRecord((*self.PARTITION, offset), tx)

    def total(self) -> int:
        return len(self.stream)
