"""A choice between two interchangeable ways of computing the same thing, by their measured times on this machine.

Why measured and not fixed: on the CPUs this project runs on, the faster of two exact methods flips between machines
(the assistant's union head against the stacked dense one; numpy's introselect against torch.topk for the filter's
threshold: bench/results/README.md has the figures), and no rule from the shapes alone held on all of them. On CPU a call's wall time is its cost (the ops are
synchronous), so the caller times each call and records it here; on a GPU timing would synchronise the device, so
callers there decide without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RETRY_EVERY = 32  # a timed choice re-times the slower path once in this many calls of a size, to follow drift


def size_class(rows: int) -> int:
    """The call size a clock is kept for: rows rounded down to a power of 2, as its bit length (rows 2^(c-1) to
    2^c - 1): decode steps of one batch share a clock, while their rows shrink as requests finish."""
    return rows.bit_length()


@dataclass
class PathClock:
    """Measured times of two paths (0 and 1) for calls of one size.

    Each path runs twice before any choice (the first call of a path is a warm-up and is not kept: new GEMM sizes,
    allocations); then the faster path by exponential moving average runs, and every RETRY_EVERY-th call the other,
    so a change (other batch, other data) is noticed. At most 1 call in RETRY_EVERY takes the slower path."""

    seconds: list[float | None] = field(default_factory=lambda: [None, None])
    runs: list[int] = field(default_factory=lambda: [0, 0])
    calls: int = 0

    def next_path(self) -> int:
        self.calls += 1
        if self.runs[1] < 2:
            return 1
        if self.runs[0] < 2:
            return 0
        faster = int(self.seconds[1] <= self.seconds[0])
        return faster if self.calls % RETRY_EVERY else 1 - faster

    def record(self, path: int, seconds: float) -> None:
        self.runs[path] += 1
        if self.runs[path] == 1:  # the warm-up
            return
        kept = self.seconds[path]
        self.seconds[path] = seconds if kept is None else 0.7 * kept + 0.3 * seconds
