"""Pausing Python's cyclic garbage collector around the search's allocation bursts.

A search round allocates millions of small tuples (edges, partial paths) that
stay alive until the round ends. Each allocation counts towards the collector's
thresholds, so full collections keep firing and each one walks the whole live
working set: on the bank benchmark (60,000 payments, one local shard) that was
5.2 s of 11 s. None of these objects form reference cycles, so reference
counting frees all of them; the collector has nothing to find and runs again,
as usual, once the pause ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block; re-enable it only if it was on (so nesting is safe).

    Invariant: code run inside must not create reference cycles in bulk, since
    they are only reclaimed after the block.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
