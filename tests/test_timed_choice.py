"""The timed choice between two exact paths: both are timed before any choice, then the faster runs, and the slower
one is re-timed once in RETRY_EVERY calls, so a change on the machine is followed."""

from __future__ import annotations

import pytest

from uld_vllm.timed_choice import RETRY_EVERY, PathClock


def run(clock: PathClock, calls: int, seconds: dict[int, float]) -> list[int]:
    chosen = []
    for _ in range(calls):
        path = clock.next_path()
        clock.record(path, seconds[path])
        chosen.append(path)
    return chosen


def test_both_paths_are_timed_then_the_faster_runs_with_one_retry_in_RETRY_EVERY() -> None:
    clock = PathClock()
    chosen = run(clock, 4 + 2 * RETRY_EVERY, {0: 0.010, 1: 0.030})
    assert chosen[:4] == [1, 1, 0, 0], "each path twice (a warm-up, then a kept time) before any choice"
    assert chosen[4:].count(1) == 2 and clock.seconds == pytest.approx([0.010, 0.030])


def test_a_path_that_turns_slower_is_left_at_its_next_retries() -> None:
    clock = PathClock()
    run(clock, 4 + RETRY_EVERY, {0: 0.010, 1: 0.030})
    chosen = run(clock, 6 * RETRY_EVERY, {0: 0.050, 1: 0.030})  # path 0 slowed down
    assert chosen[-RETRY_EVERY:].count(0) == 1, "path 1 runs now; the slower path 0 only at its retry"
