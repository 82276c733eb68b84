"""The assistant's head: the union head gives the dense head's logits wherever ULD reads them, and the cost rule
picks the stacked dense GEMM where the union cannot win."""

from __future__ import annotations

import pytest
import torch

from uld_vllm.combine import combine, relative_top_mask
from uld_vllm.head import (
    DEFAULT_RULES,
    AssistantHead,
    SparseRule,
    scatter_columns,
    wide_operand_first,
)
from uld_vllm.timed_choice import RETRY_EVERY

EVERY_CALL = SparseRule(min_rows=1, max_union_fraction=0.5)


def test_union_head_equals_the_dense_head_wherever_ULD_reads_it():
    torch.manual_seed(1)
    rows, hidden, vocab = 6, 32, 1000
    x, weight = torch.randn(rows, hidden), torch.randn(vocab + 24, hidden)  # + vocab padding rows, never read
    target = torch.randn(rows, vocab) * 4
    implausible = relative_top_mask(target, 0.01)
    head = AssistantHead(EVERY_CALL)
    result = head.union_logits(x, weight, ~implausible)
    dense = x @ weight[:vocab].T
    assert result is not None and head.stats.sparse_calls == 1
    values, columns = result
    assert torch.equal(columns, (~implausible).any(0).nonzero().squeeze(1))  # the union, nothing outside it
    sparse = scatter_columns(values, columns, vocab)
    torch.testing.assert_close(sparse[~implausible], dense[~implausible], rtol=1e-5, atol=1e-5)
    for mode in ("generate", "score"):
        torch.testing.assert_close(
            combine(target, values, -0.8, 0.01, mode, implausible, columns), combine(target, dense, -0.8, 0.01, mode)
        )
    assert head.stats.as_dict()["mean_kept_per_row"] >= int(0.01 * vocab)  # at least k = int(r * V) per row


@pytest.mark.parametrize(
    ("dtype", "rows"), [(torch.float32, 24), (torch.bfloat16, 24), (torch.bfloat16, 32)], ids=["f32", "bf16", "bf16-32"]
)
def test_either_gemm_order_gives_the_dense_heads_kept_logits(dtype: torch.dtype, rows: int):
    torch.manual_seed(3)
    x, weight = torch.randn(rows, 64, dtype=dtype), torch.randn(500, 64, dtype=dtype)
    keep = torch.rand(rows, 500) < 0.01  # a union of about a quarter of the vocabulary
    values, columns = AssistantHead(EVERY_CALL).union_logits(x, weight, keep)
    assert wide_operand_first(x) == (dtype == torch.float32 or rows == 32)  # both orders run in this test
    dense = (x.float() @ weight.float().T)[keep]
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bf16 rounds the product to 8 bits of mantissa
    torch.testing.assert_close(
        scatter_columns(values, columns, 500)[keep].float(), dense, rtol=tolerance, atol=tolerance
    )


def test_the_kept_gather_buffer_serves_smaller_and_larger_unions():
    torch.manual_seed(2)
    x, weight = torch.randn(3, 16), torch.randn(200, 16)
    head = AssistantHead(EVERY_CALL)
    for kept in (80, 20, 100):
        keep = torch.zeros(3, 200, dtype=torch.bool)
        keep[:, torch.randperm(200)[:kept]] = True
        values, columns = head.union_logits(x, weight, keep)
        torch.testing.assert_close(scatter_columns(values, columns, 200)[keep], (x @ weight.T)[keep])


def test_a_union_over_the_bound_falls_back_and_the_next_call_stacks():
    vocab = 100
    keep = torch.zeros(3, vocab, dtype=torch.bool)
    keep[0, :30], keep[1, 30:60] = True, True  # 60 of 100 tokens kept by some row
    head = AssistantHead(EVERY_CALL)
    assert head.plans_union(3)
    assert head.union_logits(torch.randn(3, 8), torch.randn(vocab, 8), keep) is None
    assert (head.stats.calls, head.stats.sparse_calls, head.stats.fallback_calls, head.stats.union) == (1, 0, 1, 60)
    assert not head.plans_union(3), "a union over the bound predicts the next call: stacked dense"
    head.observe(keep[:1])  # the stacked path still observes: 30 of 100
    assert head.plans_union(3)


def test_few_rows_take_the_stacked_head_and_are_not_counted():
    head = AssistantHead(SparseRule(min_rows=64, max_union_fraction=0.25))
    assert not head.plans_union(63) and head.plans_union(64)
    assert head.observe(torch.ones(8, 10, dtype=torch.bool)) is None and head.stats.calls == 0


def run_timed_calls(head: AssistantHead, rows: int, calls: int, seconds: dict[bool, float]) -> list[bool]:
    """`calls` calls of `rows` rows, each path taking `seconds[path is union]`; the paths the rule chose."""
    chosen = []
    for _ in range(calls):
        union = head.plans_union(rows)
        head.timed(rows, union, seconds[union])
        chosen.append(union)
    return chosen


def test_a_timed_rule_times_both_paths_then_takes_the_faster_and_retries_the_other():
    head = AssistantHead(SparseRule(min_rows=8, max_union_fraction=0.5, timed=True))
    chosen = run_timed_calls(head, 64, 4 + 3 * RETRY_EVERY, {True: 0.020, False: 0.030})
    assert chosen[:4] == [True, True, False, False], "each path twice (the first of each is a warm-up)"
    later = chosen[4:]
    assert later.count(False) == 3, "the slower stacked path: once in RETRY_EVERY calls"
    # The union path turns slow (say larger unions): the choice follows within a retry.
    chosen = run_timed_calls(head, 64, 2 * RETRY_EVERY, {True: 0.050, False: 0.030})
    assert chosen[-RETRY_EVERY:].count(True) == 1, "only the retry takes the now slower union path"
    # Another call size has its own clock, and few rows are never timed.
    assert head.plans_union(8) and head.plans_union(127) is False
    assert not head.plans_union(7)
    head.timed(7, False, 1.0)
    assert set(head.clocks) == {(64).bit_length(), (8).bit_length()}
    clock = head.report()["logits_ms_by_rows"]["64-127"]  # 127 rows: the same clock as 64
    assert clock["calls"] == 4 + 5 * RETRY_EVERY + 1 and clock["stacked"] == pytest.approx(30.0)


@pytest.mark.parametrize(
    "setting, expected",
    [
        (True, DEFAULT_RULES["cpu"]),
        (False, None),
        ({"min_rows": 2, "max_union_fraction": 0.4}, SparseRule(2, 0.4)),
        ({"min_rows": 2, "max_union_fraction": 0.4, "timed": True}, SparseRule(2, 0.4, timed=True)),
    ],
)
def test_the_setting_chooses_the_rule(setting, expected):
    assert SparseRule.from_setting(setting, "cpu") == expected


@pytest.mark.parametrize(
    "setting",
    [
        "yes",
        {"min_rows": 0, "max_union_fraction": 0.4},
        {"min_rows": 4},
        {"min_rows": 4, "max_union_fraction": 0.4, "x": 1},
    ],
)
def test_a_bad_setting_is_refused_by_name(setting):
    with pytest.raises(ValueError, match="uld_sparse_head must be"):
        SparseRule.from_setting(setting, "cpu")
