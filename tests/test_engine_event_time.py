"""The event-time clock: per-partition watermarks, the low watermark over live partitions, late and future."""

from __future__ import annotations

import numpy as np
import pytest

from ringwatch.stream import EventClock, TimeRules

HOUR = 3_600_000
NOW_MS = 1_800_000_000_000
A, B, C = ("t", 0), ("t", 1), ("t", 2)


class Clocks:
    """A wall clock and a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.wall_s = NOW_MS / 1000
        self.mono_s = 0.0

    def clock(self, **rules) -> EventClock:
        rules = {"window_ms": 24 * HOUR, "allowed_lateness_ms": HOUR, "max_clock_skew_ms": 5 * 60_000,
                 "idle_timeout_ms": 30_000, **rules}
        return EventClock(TimeRules(**rules), wall_clock=lambda: self.wall_s, monotonic=lambda: self.mono_s)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


def test_a_partition_that_never_delivered_holds_the_low_watermark_back(clocks):
    clock = clocks.clock()
    clock.assign([A, B])
    clock.accept(A, 10 * HOUR)
    clock.note_caught_up([A])  # A drained; B not fetched yet: kafka-python drains one partition after another
    clocks.mono_s += 3_600
    assert clock.advance() is None, "B has a backlog nobody has seen: nothing may be judged late yet"
    assert clock.judge(1 * HOUR) is None
    assert clock.eviction_horizon() is None
    clock.accept(B, 2 * HOUR)
    clock.note_caught_up([A])
    assert clock.advance() == 2 * HOUR, "A is idle (caught up for longer than idle_timeout): B alone counts"


def test_the_low_watermark_is_the_minimum_over_live_partitions_and_never_moves_back(clocks):
    clock = clocks.clock()
    clock.assign([A, B])
    clock.accept(A, 5 * HOUR)
    clock.accept(B, 3 * HOUR)
    clock.note_caught_up([])
    assert clock.advance() == 3 * HOUR
    assert clock.judge(2 * HOUR) is None, "within allowed_lateness"
    assert clock.judge(2 * HOUR - 1).startswith("late:")
    assert clock.eviction_horizon() == 3 * HOUR - 24 * HOUR - HOUR
    clock.accept(A, 6 * HOUR)
    clock.accept(B, 4 * HOUR)
    clock.accept(B, 2 * HOUR)  # out of order within B: B's watermark stays, so does the low watermark
    assert clock.advance() == 4 * HOUR


def test_partitions_assigned_in_a_rebalance_count_from_their_previous_owners_watermark(clocks):
    clock = clocks.clock()
    clock.assign([A])
    clock.accept(A, 9 * HOUR)
    assert clock.advance() == 9 * HOUR
    clock.assign([B], {B: 4 * HOUR})  # another engine had got B to 4h: B's next payments are not late
    assert clock.low_watermark == 4 * HOUR
    assert clock.judge(3 * HOUR) is None
    clock.assign([C])  # no one knows C's time: it holds the low watermark back until it delivers
    assert clock.low_watermark is None and clock.judge(0) is None
    clock.accept(C, 5 * HOUR)
    assert clock.advance() == 4 * HOUR


def test_caught_up_shorter_than_idle_timeout_still_holds_back(clocks):
    clock = clocks.clock()
    clock.assign([A, B])
    clock.accept(A, 9 * HOUR)
    clock.accept(B, 1 * HOUR)
    clock.note_caught_up([B])
    clocks.mono_s += 29
    assert clock.advance() == 1 * HOUR
    clock.note_caught_up([B])
    clocks.mono_s += 1
    assert clock.advance() == 9 * HOUR, "B idle after 30 s caught up"
    assert clock.idle() == [B]
    clock.accept(B, 9 * HOUR - 30 * 60_000)  # B wakes up: accepted within lateness, live again
    clock.note_caught_up([])
    assert clock.idle() == []


def test_a_future_payment_is_refused_and_moves_no_watermark(clocks):
    clock = clocks.clock()
    clock.assign([A])
    reason = clock.judge(NOW_MS + 5 * 60_000 + 1)
    assert reason.startswith("future:")
    assert clock.judge(NOW_MS + 5 * 60_000) is None
    assert clock.watermarks() == {A: None}
    clock.accept(A, NOW_MS - HOUR)
    clock.advance()
    assert clock.judge(NOW_MS - 2 * HOUR) is None, "only accepted payments move the watermark"


def test_a_checkpoint_restores_watermarks_for_partitions_assigned_later(clocks):
    clock = clocks.clock()
    clock.restore({A: 7 * HOUR, B: None}, 4 * HOUR)
    assert clock.partitions() == []
    clock.assign([A])
    assert clock.watermarks() == {A: 7 * HOUR}
    assert clock.low_watermark == 7 * HOUR, "recomputed from the partitions held (B is not ours now)"
    assert clock.judge(6 * HOUR - 1).startswith("late:")


def test_negative_settings_are_refused():
    with pytest.raises(ValueError, match="allowed_lateness_ms"):
        TimeRules(window_ms=1, allowed_lateness_ms=-1)


def test_alignment_holds_a_partition_read_too_far_ahead_of_the_slowest_backlog(clocks):
    clock = clocks.clock(max_drift_ms=1_000)
    clock.assign([A, B, C])
    clock.read([A, B, C], np.array([0, 1, 2, 2]), np.array([10 * HOUR, 2 * HOUR, 2 * HOUR + 500, 2 * HOUR + 900]))
    assert clock.ahead([A, B, C]) == {A}, "A is hours ahead of B; C is within the drift"
    assert clock.ahead([A, C]) == {A}
    assert clock.ahead([A]) == set(), "B and C near their log end hold nothing back"
    assert clock.ahead([]) == set(), "a live stream (no backlog) is never held"


def test_a_backlog_not_read_from_yet_goes_first_and_is_never_held(clocks):
    clock = clocks.clock(max_drift_ms=0)
    clock.assign([A, B])
    clock.read([A], np.array([0]), np.array([5 * HOUR]))
    assert clock.ahead([A, B]) == {A}, "B may start anywhere: A waits until B has delivered"
    clock.read([B], np.array([0]), np.array([1 * HOUR]))
    assert clock.ahead([A, B]) == {A}
    clock.read([B], np.array([0]), np.array([6 * HOUR]))
    assert clock.ahead([A, B]) == {B}


def test_a_single_partition_is_never_held(clocks):
    clock = clocks.clock(max_drift_ms=0)
    clock.assign([A])
    clock.read([A], np.array([0, 0]), np.array([HOUR, 2 * HOUR]))
    assert clock.ahead([A]) == set()


def test_alignment_places_a_partition_by_its_median_and_ignores_future_times(clocks):
    clock = clocks.clock(max_drift_ms=1_000)
    clock.assign([A, B])
    four_minutes_ahead = NOW_MS + 4 * 60_000  # inside max_clock_skew: accepted, but an outlier
    clock.read([A, B], np.array([0, 0, 0, 1]), np.array([NOW_MS, NOW_MS + 1, four_minutes_ahead, NOW_MS]))
    assert clock.ahead([A, B]) == set(), "one payment dated minutes ahead does not hold its partition back"
    clock.read([B], np.array([0, 0, 0]), np.array([NOW_MS, NOW_MS + HOUR, NOW_MS + 2 * HOUR]))
    assert clock.ahead([A, B]) == set(), "future times (beyond max_clock_skew) do not place B"
