"""The assistant's LM head, computed only where ULD reads it, and only where that is cheaper than the dense head.

With the plausibility filter on (r > 0), the assistant's logit of a token the target rules out is never used (a' = 0
there, docs/ULD_REFERENCE.md section 3), in generation and in scoring mode alike. So once the target's logits
and its keep set are known, the assistant's head is only needed on the kept tokens: at least k = int(r * V) per row
(320 of 32000 at r = 0.01), often not many more. Over a batch the rows' keep sets overlap (frequent tokens lead in
every context), so their union U is what one GEMM computes: hidden (N, H) @ W[U].T.

Why the union and not per-row gathers: a per-row gather moves N * k rows of W (at N = 64, k = 320, H = 1024: 84 MB
in fp32, more than the whole 32000-row head), and a batched GEMV over them cannot use the GEMM's blocking; the union
gathers each needed row once.

When the dense head is cheaper, and why the choice comes before the target's logits: the dense path runs ONE GEMM
over both streams' rows [target; assistant], which reads the head's weight once. Where that GEMM is weight-bound
(few rows) the assistant's rows ride along almost free, and no union can beat free: the sparse path first needs the
target's logits alone (the same weight read), then gathers U rows and runs a second GEMM. Where it is compute-bound
the union's GEMM costs about U/V of the dense one. Which regime a call is in depends on the machine more than on the
model: on the CPUs measured, the assistant's stacked rows cost from a fraction of the target's GEMM to as much again,
and a fixed union bound right on one machine was wrong on another (bench/results/README.md, "Why the code is as it
is").

So on CPU the rule is timed: compute_logits is synchronous there, so each call's wall time is known, and per call
size (rows rounded down to a power of 2: decode steps of a batch, prompt chunks of a size) a `PathClock` times both
paths and takes the faster, re-timing the other now and then. The union bound (V/2) then only spares the union head
calls it cannot win. On a GPU timing a call would synchronise the device, so the rule there is untimed: `min_rows`
from the roofline (H100, bf16: the head stays weight-bound to a few hundred rows; not measured here) and a V/4 bound
on the last looked-at call's union (decode steps of one batch keep similar keep sets). `SparseRule` holds the
numbers; `uld_sparse_head` in hf_overrides can replace them ({"min_rows": ..., "max_union_fraction": ...,
"timed": ...}) or turn the union head off (False).

The union is only known after the target's logits; when it turns out larger than the bound, the assistant's head
runs dense on its own rows (a fallback, timed as the union path's cost). The union head hands ULD's combination its
(N, U) logits and the union's ids (`combine(..., columns=...)`): no (N, V) assistant tensor is filled. Every path
gives the dense path's output.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from uld_vllm.combine import relative_top_mask
from uld_vllm.timed_choice import PathClock, size_class

# vLLM's LogitsProcessor as called: (lm_head, hidden (N, H)) -> logits (N, V), None on all but the last pipeline rank.
LogitsProcessor = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class SparseRule:
    """When the union head runs: at least `min_rows` logits rows and a union of at most `max_union_fraction` * V;
    `timed`: between those bounds, whichever path measured faster on calls of this size (`PathClock`)."""

    min_rows: int
    max_union_fraction: float
    timed: bool = False

    @classmethod
    def from_setting(cls, setting: object, device_type: str) -> SparseRule | None:
        """`uld_sparse_head` from hf_overrides: True (this device's default), False (off) or the numbers
        ({"min_rows": n, "max_union_fraction": f} and optionally "timed": bool)."""
        if setting is False:
            return None
        if setting is True or setting is None:
            return DEFAULT_RULES.get(device_type, DEFAULT_RULES["cuda"])
        keys = {"min_rows", "max_union_fraction"}
        if isinstance(setting, dict) and keys <= set(setting) <= keys | {"timed"}:
            rule = cls(int(setting["min_rows"]), float(setting["max_union_fraction"]), setting.get("timed") is True)
            if rule.min_rows >= 1 and 0.0 < rule.max_union_fraction <= 1.0:
                return rule
        raise ValueError(
            "uld_sparse_head must be true, false or {'min_rows': n >= 1, 'max_union_fraction': 0 < f <= 1"
            f"[, 'timed': bool]}}, got {setting!r}"
        )


# CPU: timed (which path wins differs from one CPU to the next, module docstring); CUDA from the H100 roofline,
# untimed (timing a CUDA call would synchronise the device).
DEFAULT_RULES = {"cpu": SparseRule(min_rows=8, max_union_fraction=0.5, timed=True), "cuda": SparseRule(256, 0.25)}
UNION_BLOCK = 256  # the union head's GEMM width is a multiple of this (see union_logits)


@dataclass
class HeadStats:
    """What the head saw on calls the rule looked at (>= min_rows rows, filter on): what benchmarks report."""

    calls: int = 0
    sparse_calls: int = 0  # the union head ran
    fallback_calls: int = 0  # the target's logits came alone, but the union was too large: the assistant's, dense
    union_calls: int = 0  # calls whose union was computed (a timed rule's stacked calls skip it): what follows counts
    rows: int = 0
    kept: int = 0  # kept tokens summed over rows
    union: int = 0  # union sizes summed over calls
    vocab: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "sparse_calls": self.sparse_calls,
            "fallback_calls": self.fallback_calls,
            "mean_kept_per_row": self.kept / max(self.rows, 1),
            "mean_union": self.union / max(self.union_calls, 1),
            "vocab": self.vocab,
        }


class HeadLogits(NamedTuple):
    """Both streams' logits as `combine` takes them."""

    target: torch.Tensor  # (N, V)
    assistant: torch.Tensor  # (N, V), or (N, U) on `columns`
    implausible: torch.Tensor | None  # (N, V) relative_top_mask of the target, where the head needed it
    columns: torch.Tensor | None  # (U,) the union head's token ids

    def dense_assistant(self) -> torch.Tensor:
        """The assistant's logits as (N, V), for consumers that read every column (fused sampling)."""
        if self.columns is None:
            return self.assistant
        return scatter_columns(self.assistant, self.columns, self.target.shape[1])


def stacked_logits(
    lm_head: torch.nn.Module, processor: LogitsProcessor, target_hidden: torch.Tensor, assistant_hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One GEMM over both streams' rows, so the LM head's weight is read once; None on all but the last pipeline rank."""
    logits = processor(lm_head, torch.cat([target_hidden, assistant_hidden]))
    return None if logits is None else logits.chunk(2)  # (N, V) each


def head_logits(
    head: AssistantHead | None,
    lm_head: torch.nn.Module,
    processor: LogitsProcessor,
    target_hidden: torch.Tensor,
    assistant_hidden: torch.Tensor,
    filter: float,
    min_keep: int | None = None,
) -> AbstractContextManager[HeadLogits | None]:
    """Both streams' logits, by `head`'s choice where it has one to make (with the filter off ULD reads every
    assistant logit: always stacked). The caller combines inside the with-block (see `AssistantHead.logits`)."""
    if head is not None and filter > 0.0:
        return head.logits(lm_head, processor, target_hidden, assistant_hidden, filter, min_keep)
    stacked = stacked_logits(lm_head, processor, target_hidden, assistant_hidden)
    return contextlib.nullcontext(None if stacked is None else HeadLogits(*stacked, None, None))


class AssistantHead:
    """The cost-based choice between the stacked dense head and the union head, and the union head itself."""

    def __init__(self, rule: SparseRule) -> None:
        self.rule = rule
        self.stats = HeadStats()
        self.last_union_fraction = 0.0  # of the last call the rule looked at: the untimed rule's prediction
        self.clocks: dict[int, PathClock] = {}  # timed rule: by size_class of the rows
        self._rows = torch.empty(0)  # gathered head rows, kept between calls (CPU allocations page-fault each time)

    def looks_at(self, rows: int) -> bool:
        """Whether the rule considers a call of `rows` logits rows at all (fewer: always the stacked head)."""
        return rows >= self.rule.min_rows

    def plans_union(self, rows: int) -> bool:
        """Whether this call should compute the target's logits alone and then the union head (else: stacked)."""
        if not self.looks_at(rows):
            return False
        if self.rule.timed:
            return self._clock(rows).next_path() == 1  # path 1: the union head, 0: the stacked head
        return self.last_union_fraction <= self.rule.max_union_fraction

    def timed(self, rows: int, union: bool, seconds: float) -> None:
        """A looked-at call's time, by the path it planned (a union that fell back counts as the union's cost)."""
        if self.rule.timed and self.looks_at(rows):
            self._clock(rows).record(int(union), seconds)

    def report(self) -> dict:
        """The stats, and per call size the timed rule's clocks: ms per compute_logits call of each path (what the
        head saves where it runs, without the noise of whole runs compared across rounds)."""
        clocks = {
            f"{1 << (size - 1)}-{(1 << size) - 1}": {
                path: None if seconds is None else seconds * 1e3
                for path, seconds in zip(("stacked", "union"), clock.seconds, strict=True)
            }
            | {"calls": clock.calls}
            for size, clock in sorted(self.clocks.items())
        }
        return self.stats.as_dict() | {"logits_ms_by_rows": clocks}

    @contextlib.contextmanager
    def logits(
        self,
        lm_head: torch.nn.Module,
        processor: LogitsProcessor,
        target_hidden: torch.Tensor,
        assistant_hidden: torch.Tensor,
        filter: float,
        min_keep: int | None = None,
    ) -> Iterator[HeadLogits | None]:
        """Both streams' logits by the path the rule plans, with the target's mask (filter > 0). A timed rule records
        the with-block's wall time: the caller's combination runs inside it, since its cost differs by path too
        (the union's (N, U) against a dense (N, V)). None (and nothing recorded) on all but the last pipeline rank."""
        started, rows = time.perf_counter(), target_hidden.shape[0]
        union_planned = self.plans_union(rows)
        if union_planned:
            target = processor(lm_head, target_hidden)  # (N, V)
            implausible = relative_top_mask(target, filter, min_keep)  # (N, V): where a' = 0
            union = self.union_logits(assistant_hidden, lm_head.weight, ~implausible)
            if union is None:  # the union came out too large: the assistant's rows alone, dense
                logits = HeadLogits(target, processor(lm_head, assistant_hidden), implausible, None)
            else:
                logits = HeadLogits(target, union[0], implausible, union[1])  # (N, U) on the union's token ids
        else:
            stacked = stacked_logits(lm_head, processor, target_hidden, assistant_hidden)
            if stacked is None:
                yield None
                return
            implausible = relative_top_mask(stacked[0], filter, min_keep)
            self.stacked(implausible)
            logits = HeadLogits(*stacked, implausible, None)
        yield logits
        self.timed(rows, union_planned, time.perf_counter() - started)  # CPU: every op in the block has finished

    def _clock(self, rows: int) -> PathClock:
        return self.clocks.setdefault(size_class(rows), PathClock())

    def observe(self, keep: torch.Tensor) -> torch.Tensor | None:
        """Record a call's keep set (N, V); returns its union's token ids, or None for fewer than min_rows rows (the
        rule does not look: the stacked head runs)."""
        rows, vocab = keep.shape
        if not self.looks_at(rows):
            return None
        union, kept = union_and_count(keep)
        self.last_union_fraction = union.numel() / vocab
        stats = self.stats
        stats.calls += 1
        stats.union_calls += 1
        stats.rows += rows
        stats.kept += kept
        stats.union += union.numel()
        stats.vocab = vocab
        return union

    def stacked(self, implausible: torch.Tensor) -> None:
        """A call that took the stacked head, with its (N, V) mask of ruled-out tokens: the untimed rule observes its
        union (the next call's prediction); a timed one only counts it (its clock has the time, and the keep set and
        its union would cost passes over (N, V))."""
        if self.rule.timed:
            self.stats.calls += self.looks_at(implausible.shape[0])
        else:
            self.observe(~implausible)

    def union_logits(
        self, hidden: torch.Tensor, weight: torch.Tensor, keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The assistant's logits on the batch's union of kept tokens: ((N, U) logits, (U,) token ids), which
        `combine(..., columns=ids)` reads without an (N, V) tensor; None when the union is over the rule's bound (the
        caller runs the dense head). hidden (N, H), weight (V', H) with V' >= V (vocab padding), keep (N, V) bool."""
        union = self.observe(keep)
        if union is None:  # fewer rows than the rule looks at
            return None
        if self.last_union_fraction > self.rule.max_union_fraction:
            self.stats.fallback_calls += 1
            return None
        self.stats.sparse_calls += 1
        # The GEMM's width rounded up to a multiple of UNION_BLOCK (padded with token 0, whose logits are dropped):
        # every call's union has another size, and each new GEMM shape costs the CPU GEMM a new kernel, more than the
        # padding's columns cost (bench/results/README.md).
        width = min(-(-union.numel() // UNION_BLOCK) * UNION_BLOCK, weight.shape[0])
        padded = torch.nn.functional.pad(union, (0, width - union.numel()))
        rows_fit = (self._rows.dtype, self._rows.device) == (weight.dtype, weight.device)
        if not rows_fit or self._rows.shape[0] < width:
            self._rows = weight.new_empty(width, weight.shape[1])
        rows = torch.index_select(weight, 0, padded, out=self._rows[:width])  # (U padded, H)
        if wide_operand_first(hidden):  # (N, U): a transposed view, which combine's index_add_ reads as it is
            return (rows @ hidden.T).T[:, : union.numel()], union
        return (hidden @ rows.T)[:, : union.numel()], union


def wide_operand_first(hidden: torch.Tensor) -> bool:
    """Whether the union GEMM runs as rows @ hidden.T (the wide (U, H) operand first) rather than hidden @ rows.T:
    the same product, but torch's CPU GEMM picks other kernels for the two, and which is faster depends on the dtype:
    in float32 wide first at most sizes, in bfloat16 only at multiples of 16 rows from 32 (bench/results/README.md).
    CUDA keeps the float32 order (not measured there)."""
    rows = hidden.shape[0]
    if hidden.dtype == torch.float32 or hidden.is_cuda:
        return True
    return rows >= 32 and rows % 16 == 0


def union_and_count(keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The (U,) ids of the tokens some row keeps, and how many (row, token) pairs are kept, from (N, V) bool.

    On CPU by numpy: its bool reductions over the rows vectorise across the vocabulary, where torch's any(dim=0) and
    sum walk it slowly, an order of magnitude slower on every call the union head runs (bench/results/README.md)."""
    if keep.device.type != "cpu":
        return keep.any(dim=0).nonzero().squeeze(1), int(keep.sum())
    array = keep.numpy()
    return torch.from_numpy(np.flatnonzero(array.any(axis=0))), int(np.count_nonzero(array))


def scatter_columns(values: torch.Tensor, columns: torch.Tensor, vocab: int) -> torch.Tensor:
    """(N, U) logits on `columns` as (N, vocab) float32, 0 elsewhere: for consumers that need every column (the
    fused sampling kernel's inputs)."""
    out = values.new_zeros((values.shape[0], vocab), dtype=torch.float32)
    return out.index_copy_(1, columns, values.float())
