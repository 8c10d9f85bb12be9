"""Plain-text tables and the bits of text the query and demo commands share."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any


def moment(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Left-aligned text columns, numbers right-aligned; shared by the query and demo commands."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and rows for i in range(len(headers))]
    line = lambda values: "  ".join(v.rjust(w) if n else v.ljust(w)  # noqa: E731
                                    for v, w, n in zip(values, widths, numeric)).rstrip()
    print(line(list(headers)))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))


def ring_text(accounts: Sequence[str]) -> str:
    return " -> ".join([*accounts, accounts[0]])
