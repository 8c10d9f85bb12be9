"""What the synthetic generator is asked for (`SyntheticConfig`) and the checks on it.

Apart from the generator (synthetic.py, numpy and pyarrow) so that `ringwatch
generate` can show its defaults and choices without importing them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ringwatch.runtime.errors import RingwatchError

DAY_MS = 86_400_000
MODES = ("bank", "dense")
# Gap between consecutive hops of an injected ring: 5 minutes to 8 hours.
RING_GAP_MS = (5 * 60_000, 8 * 3_600_000)


class InvalidSyntheticConfigError(RingwatchError, ValueError):
    """A `SyntheticConfig` that cannot produce a stream; the message names the field."""


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. `n_transactions` counts ring payments too."""

    n_transactions: int = 100_000
    n_accounts: int = 10_000
    days: float = 10.0
    mode: str = "bank"
    n_rings: int = 20
    ring_hops: tuple[int, int] = (2, 6)
    pass_on: tuple[float, float] = (0.85, 0.99)
    seed: int = 0
    start_ts: int = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    currency: str = "EUR"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidSyntheticConfigError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if self.n_accounts < 100:
            raise InvalidSyntheticConfigError(f"n_accounts: need at least 100, got {self.n_accounts}")
        if self.days <= 0:
            raise InvalidSyntheticConfigError(f"days: must be > 0, got {self.days}")
        low, high = self.ring_hops
        if not 2 <= low <= high:
            raise InvalidSyntheticConfigError(f"ring_hops: need 2 <= low <= high, got {self.ring_hops}")
        low_p, high_p = self.pass_on
        if not 0 < low_p <= high_p <= 1:
            raise InvalidSyntheticConfigError(f"pass_on: need 0 < low <= high <= 1, got {self.pass_on}")
        if self.n_rings < 0:
            raise InvalidSyntheticConfigError(f"n_rings: must be >= 0, got {self.n_rings}")
        if self.n_rings * high > self.n_transactions:
            raise InvalidSyntheticConfigError(
                f"n_transactions: {self.n_transactions} is too few for {self.n_rings} rings of up to {high} hops"
            )
        if self.n_rings * high > self.n_accounts // 4:
            raise InvalidSyntheticConfigError(
                f"n_rings: {self.n_rings} rings of up to {high} hops need more than a quarter of "
                f"the {self.n_accounts} accounts; raise n_accounts or lower n_rings"
            )
        if (high - 1) * RING_GAP_MS[1] >= self.days * DAY_MS:
            raise InvalidSyntheticConfigError(f"days: {self.days} is too short to hold a {high}-hop ring")
