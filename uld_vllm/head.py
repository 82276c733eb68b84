"""The assistant's LM head, computed only where ULD reads it.

With the plausibility filter on (r > 0), the assistant's logit of a token the target rules out is never used (a' = 0
there, ../shared/ULD_REFERENCE.md section 3), in generation and in scoring mode alike. So once the target's logits
and its keep set are known, the assistant's head is only needed on the kept tokens. Per row that is at least
k = int(r * V) tokens (320 of 32000 at r = 0.01), often not many more; over a batch, the rows' keep sets overlap
(frequent tokens lead in every context), so their union U is what one GEMM computes: hidden (N, H) @ W[U].T.

Why the union and not per-row gathers: a per-row gather moves N * k rows of W (at N = 64, k = 320, H = 1024: 84 MB
in fp32, more than the whole 32000-row head), and a batched GEMV over them cannot use the GEMM's blocking; the union
gathers each needed row once. At N = 1 the two are the same.

When dense is cheaper: the union costs a gather of U rows (read + write U*H) and a GEMM over U columns; the dense
head reads all V rows once and does N*V*H multiply-adds. Weight-bound (small N) the union wins while 2U < V;
compute-bound (large N) while U < V. `UNION_FRACTION_MAX` takes the smaller bound, so the sparse head never costs
more than the dense one; beyond it (flat rows keep almost everything, or a very diverse batch) the dense head runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

UNION_FRACTION_MAX = 0.5


@dataclass
class HeadStats:
    """What the sparse head did (summed over calls with the filter on): what benchmarks report beside speed."""

    calls: int = 0
    sparse_calls: int = 0
    rows: int = 0
    kept: int = 0  # kept tokens summed over rows
    union: int = 0  # union sizes summed over calls
    vocab: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "calls": self.calls,
            "sparse_calls": self.sparse_calls,
            "mean_kept_per_row": self.kept / max(self.rows, 1),
            "mean_union": self.union / max(self.calls, 1),
            "vocab": self.vocab,
        }


def union_assistant_logits(
    hidden: torch.Tensor, lm_head_weight: torch.Tensor, keep: torch.Tensor, stats: HeadStats | None = None
) -> torch.Tensor | None:
    """The assistant's logits (N, V) on the batch's union of kept tokens, 0 elsewhere; None when the dense head is
    cheaper (see the module docstring). hidden (N, H), lm_head_weight (V', H) with V' >= V (vocab padding), keep
    (N, V) bool."""
    rows, vocab = keep.shape
    union = keep.any(dim=0).nonzero().squeeze(1)  # (U,)
    if stats is not None:
        stats.calls += 1
        stats.rows += rows
        stats.kept += int(keep.sum())
        stats.union += union.numel()
        stats.vocab = vocab
    if union.numel() > UNION_FRACTION_MAX * vocab:
        return None
    if stats is not None:
        stats.sparse_calls += 1
    logits = hidden.new_zeros(rows, vocab, dtype=torch.float32)
    logits[:, union] = F.linear(hidden, lm_head_weight.index_select(0, union)).float()  # (N, U): one GEMM
    return logits
