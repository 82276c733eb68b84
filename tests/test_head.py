"""The sparse assistant head: the dense head's logits on every kept token, and the dense path when that is cheaper."""

from __future__ import annotations

import torch

from uld_vllm.combine import combine, relative_top_mask
from uld_vllm.head import HeadStats, union_assistant_logits


def test_union_head_equals_the_dense_head_wherever_ULD_reads_it():
    torch.manual_seed(1)
    rows, hidden, vocab = 6, 32, 1000
    x, weight = torch.randn(rows, hidden), torch.randn(vocab + 24, hidden)  # + vocab padding rows, never read
    target = torch.randn(rows, vocab) * 4
    implausible = relative_top_mask(target, 0.01)
    stats = HeadStats()
    sparse = union_assistant_logits(x, weight, ~implausible, stats)
    dense = x @ weight[:vocab].T
    assert sparse is not None and stats.sparse_calls == 1
    torch.testing.assert_close(sparse[~implausible], dense[~implausible], rtol=1e-5, atol=1e-5)
    assert (sparse[:, ~(~implausible).any(0)] == 0).all()  # outside the union: nothing computed
    for mode in ("generate", "score"):
        torch.testing.assert_close(
            combine(target, sparse, -0.8, 0.01, mode, implausible), combine(target, dense, -0.8, 0.01, mode)
        )
    assert stats.as_dict()["mean_kept_per_row"] >= int(0.01 * vocab)  # at least k = int(r * V) per row


def test_a_union_over_half_the_vocabulary_leaves_the_head_dense():
    vocab = 100
    keep = torch.zeros(3, vocab, dtype=torch.bool)
    keep[0, :30], keep[1, 30:60] = True, True  # 60 of 100 tokens kept by some row
    stats = HeadStats()
    assert union_assistant_logits(torch.randn(3, 8), torch.randn(vocab, 8), keep, stats) is None
    assert (stats.calls, stats.sparse_calls, stats.union) == (1, 0, 60)
