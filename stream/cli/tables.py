"""Plain-text tables for the query and demo commands.

Hand-written rather than `tabulate` or `rich`: a dozen lines give aligned
columns, and the output stays one line per row whatever the terminal's width
(rich wraps or truncates wide cells such as a ring's accounts when piped),
which keeps it easy to grep and to quote in the README.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[str] = ()) -> None:
    """Left-aligned text columns; numbers, and the columns named in `right`, right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and (h in right or all(isinstance(row[i], (int, float, Decimal)) for row in rows))
               for i, h in enumerate(headers)]
    line = lambda values: "  ".join(v.rjust(w) if n else v.ljust(w)  # noqa: E731
                                    for v, w, n in zip(values, widths, numeric)).rstrip()
    print(line(list(headers)))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
