"""Replay an IBM AMLworld `*_Trans.csv` through the ring detector and score it on the laundering labels.

    python demos/amlworld_replay.py                      # the bundled sample
    python demos/amlworld_replay.py HI-Small_Trans.csv   # a real AMLworld file (Kaggle: IBM "Transactions
                                                         # for Anti Money Laundering")
    python demos/amlworld_replay.py --write-sample demos/data/HI-Sample_Trans.csv

AMLworld marks every laundering payment (`Is Laundering` = 1), whatever its
pattern; only some patterns are rings. So the score is on the labelled rows
that form cycles:

- recall: a laundering row counts when its payment lies on a directed cycle of
  laundering payments, and is caught when an alert names it as one of its
  ring's payments. Fan-outs, fan-ins and other acyclic patterns are not rings
  and are left out (they are counted and shown);
- precision: an alert is right when every payment of its ring is labelled
  laundering; a ring of ordinary payments (or one mixing the two) is a false
  alarm by the labels, though it is still a genuine cycle of money.

The bundled sample (`demos/data/HI-Sample_Trans.csv`) is synthetic, written by
`--write-sample` in the AMLworld layout: background payments, laundering rings
of 2-6 hops, one 8-hop ring (longer than the default `max_hops`, so it shows
what the bound costs), and acyclic fan-out / fan-in laundering.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from datetime import datetime, timezone
from pathlib import Path

import networkx as nx

from ringwatch.connectors import FileSource, SyntheticConfig, generate
from ringwatch.connectors.files import AMLWORLD_HEADER
from ringwatch.stream import detect

SAMPLE = Path(__file__).parent / "data" / "HI-Sample_Trans.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", type=Path, default=SAMPLE, help="an AMLworld *_Trans.csv")
    parser.add_argument("--max-hops", type=int, default=6, help="longest ring, in payments (default 6)")
    parser.add_argument("--window", default="7d", help="time window of a ring (default 7d)")
    parser.add_argument("--write-sample", type=Path, metavar="PATH", help="write a synthetic sample and exit")
    args = parser.parse_args(argv)
    if args.write_sample:
        rows = write_sample(args.write_sample)
        print(f"wrote {rows} rows in the AMLworld layout to {args.write_sample}")
        return 0

    laundering = nx.MultiDiGraph()  # the labelled payments, keyed by tx_id
    for record in FileSource(args.path):
        if record.ok and record.transaction.extra.get("is_laundering"):
            tx = record.transaction
            laundering.add_edge(tx.src, tx.dst, key=tx.tx_id)
    on_cycles = {key for cycle in nx.simple_cycles(nx.DiGraph(laundering))
                 for src, dst in zip(cycle, cycle[1:] + cycle[:1]) for key in laundering[src][dst]}
    alerts = detect(str(args.path), max_hops=args.max_hops, window=args.window)
    caught = on_cycles & {tx_id for alert in alerts for tx_id in alert.tx_ids}
    print(f"{args.path.name}: {laundering.number_of_edges()} laundering payments, {len(on_cycles)} of them on "
          f"cycles of laundering payments; {len(alerts)} rings found (max_hops {args.max_hops}, "
          f"window {args.window})")
    labelled = {key for _, _, key in laundering.edges(keys=True)}
    right = [alert for alert in alerts if set(alert.tx_ids) <= labelled]
    print(f"precision: {len(right) / len(alerts) if alerts else 1.0:.2f} ({len(right)} of {len(alerts)} rings found "
          f"are made only of laundering payments)")
    print(f"recall:    {len(caught) / max(len(on_cycles), 1):.2f} ({len(caught)} of {len(on_cycles)} laundering "
          f"payments that form cycles are in a ring found)")
    missed = on_cycles - caught
    if missed:
        print(f"missed: {len(missed)} (rings longer than {args.max_hops} payments or slower than "
              f"{args.window} are outside the ring definition: try --max-hops / --window)")
    return 0


def write_sample(path: Path, seed: int = 17) -> int:
    """Background and ring payments from the synthetic generator, plus acyclic laundering, as AMLworld rows."""
    stream = generate(SyntheticConfig(n_transactions=2_400, n_accounts=800, n_rings=8, days=6, seed=seed))
    rng = random.Random(seed)
    laundering_tx = {tx_id for ring in stream.rings for tx_id in ring.tx_ids}
    rows = [(tx.ts, tx.src, tx.dst, tx.amount, tx.tx_id in laundering_tx) for tx in stream.transactions]
    start, day = int(stream.ts[0]), 86_400_000
    fresh = iter(f"L{i:03d}" for i in range(1000))  # accounts of the extra patterns
    long_ring = [next(fresh) for _ in range(8)]
    rows += [(start + day + i * 3_600_000, a, b, 9_000.0 * 0.97 ** i, True)
             for i, (a, b) in enumerate(zip(long_ring, long_ring[1:] + long_ring[:1]))]
    for pattern in range(4):  # fan-out then fan-in: laundering, but no cycle
        hub, sink, mules = next(fresh), next(fresh), [next(fresh) for _ in range(4)]
        t = start + (pattern + 2) * day
        rows += [(t + i * 60_000, hub, mule, 2_000.0, True) for i, mule in enumerate(mules)]
        rows += [(t + 3_600_000 + i * 60_000, mule, sink, 1_950.0, True) for i, mule in enumerate(mules)]
    rows.sort(key=lambda row: row[0])
    banks: dict[str, tuple[str, str]] = {}
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(AMLWORLD_HEADER)
        for ts, src, dst, amount, laundering in rows:
            payer, payee = (banks.setdefault(a, (str(rng.randint(1, 300)), f"{rng.getrandbits(36):09X}"))
                            for a in (src, dst))
            when = datetime.fromtimestamp(ts // 60_000 * 60, tz=timezone.utc).strftime("%Y/%m/%d %H:%M")
            paid = f"{amount:.2f}"
            writer.writerow([when, *payer, *payee, paid, "US Dollar", paid, "US Dollar",
                             rng.choice(("ACH", "Wire", "Cheque", "Credit Card")), int(laundering)])
    return len(rows)


if __name__ == "__main__":
    sys.exit(main())
