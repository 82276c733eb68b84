"""combine() against an independent float64 reading of ULD_REFERENCE.md section 3 (not against relative_top_mask)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import torch_threads

from uld_vllm.combine import MASKED_LOGIT, combine, kth_largest_and_max, relative_top_mask

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FILTERS = (0.0, 0.01, 0.1)
WEIGHT = -0.8


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = np.max(x, axis=-1, keepdims=True)
    return x - (top + np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True)))


def hand_threshold(b: np.ndarray, r: float, min_keep: int | None = None) -> np.ndarray:
    """thr = min(max(lp) + log(r), kth_largest(lp, k)), k = int(r * V) (or min_keep), kept >= 1 (combine's
    docstring)."""
    lp = log_softmax64(b)
    k = max(1, int(r * b.shape[-1])) if min_keep is None else min_keep
    kth = -np.sort(-lp, axis=-1)[:, k - 1 : k]  # (N, 1): the k-th largest, duplicates counted
    return np.minimum(lp.max(axis=-1, keepdims=True) + math.log(r), kth)


def hand_combine(b: np.ndarray, a: np.ndarray, w: float, r: float, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """(out, mask) in float64, line by line from the spec; mask is all-False without the filter."""
    b, a = b.astype(np.float64), a.astype(np.float64)
    if r == 0:
        return log_softmax64(b) + w * log_softmax64(a), np.zeros(b.shape, dtype=bool)
    mask = log_softmax64(b) < hand_threshold(b, r)
    out = b + w * np.where(mask, 0.0, a)
    if mode == "generate":
        out = np.where(mask, -1e3, out)
    return out, mask


def random_logits(rows: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Target logits with a peaked head (like a trained LM) so the relative threshold, not only k, decides the mask.
    b = rng.normal(0.0, 2.0, (rows, vocab)).astype(np.float32)
    b[:, rng.integers(0, vocab, 5)] += 8.0
    a = rng.normal(0.0, 2.0, (rows, vocab)).astype(np.float32)
    return b, a


def run(b: np.ndarray, a: np.ndarray, w: float, r: float, mode: str) -> np.ndarray:
    out = combine(torch.from_numpy(b), torch.from_numpy(a), w, r, mode)
    assert out.dtype == torch.float32 and out.shape == b.shape
    return out.numpy().astype(np.float64)


@pytest.mark.parametrize("vocab", [32000, 128256])
@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize("mode", ["generate", "score"])
def test_combine_matches_float64_hand_computation(vocab: int, filter: float, mode: str) -> None:
    b, a = random_logits(3, vocab, seed=vocab + int(filter * 100))
    got = run(b, a, WEIGHT, filter, mode)
    want, mask = hand_combine(b, a, WEIGHT, filter, mode)
    if filter > 0:
        # float32 vs float64 log-probs may put a token within rounding of the threshold on either side; those tokens
        # (if any) are excluded, every other token must agree exactly on the mask and closely on the value.
        lp = log_softmax64(b)
        borderline = np.abs(lp - hand_threshold(b, filter)) < 1e-5  # float32 log-probs near -12 carry ~1e-6 error
        assert borderline.sum(-1).max() <= 3  # when k binds, the k-th token itself sits on the threshold
        keep = ~borderline
        assert mask.any() and (~mask).sum() >= int(filter * vocab) * 3  # the filter really removes and keeps tokens
    else:
        keep = np.ones(b.shape, dtype=bool)
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("min_keep", [1, 40, 3000])
def test_the_floor_of_kept_tokens_is_min_keep_when_set(min_keep: int) -> None:
    """1 is DoLa's floor (the relative threshold alone), int(r * V) = 3,200 the paper's; between them, at least
    min_keep tokens are kept and no more than the relative threshold or the floor keeps."""
    b, a = random_logits(4, 32000, seed=min_keep)
    mask = relative_top_mask(torch.from_numpy(b), 0.1, min_keep).numpy()
    want = log_softmax64(b) < hand_threshold(b, 0.1, min_keep)
    borderline = np.abs(log_softmax64(b) - hand_threshold(b, 0.1, min_keep)) < 1e-5
    assert (mask == want)[~borderline].all() and borderline.sum() <= 4
    kept = (~mask).sum(-1)
    relative_only = (log_softmax64(b) >= log_softmax64(b).max(-1, keepdims=True) + math.log(0.1)).sum(-1)
    assert (kept == np.maximum(relative_only, min_keep)).all()  # no ties in continuous random logits
    paper = (~relative_top_mask(torch.from_numpy(b), 0.1).numpy()).sum(-1)
    assert (kept <= paper).all() if min_keep <= 3200 else (kept >= paper).all()
    got = combine(torch.from_numpy(b), torch.from_numpy(a), WEIGHT, 0.1, "generate", min_keep=min_keep).numpy()
    assert ((got == MASKED_LOGIT) == mask).all()


@pytest.mark.parametrize("filter", [0.01, 0.1])
def test_generation_puts_exactly_masked_logit_on_implausible_tokens_and_scoring_does_not(filter: float) -> None:
    b, a = random_logits(4, 32000, seed=7)
    _, mask = hand_combine(b, a, WEIGHT, filter, "generate")
    generated = run(b, a, WEIGHT, filter, "generate")
    scored = run(b, a, WEIGHT, filter, "score")
    assert MASKED_LOGIT == -1e3
    assert np.all(generated[mask] == -1e3)
    assert np.all(generated[~mask] != -1e3)
    # Scoring leaves implausible tokens at the raw target logit (the assistant is ignored there, a' = 0).
    np.testing.assert_array_equal(scored[mask], b[mask].astype(np.float64))
    np.testing.assert_array_equal(scored[~mask], generated[~mask])


def test_without_filter_the_modes_agree() -> None:
    b, a = random_logits(2, 32000, seed=3)
    np.testing.assert_array_equal(run(b, a, WEIGHT, 0.0, "generate"), run(b, a, WEIGHT, 0.0, "score"))


@pytest.mark.parametrize("filter", FILTERS)
@pytest.mark.parametrize("mode", ["generate", "score"])
def test_weight_zero_gives_the_target_argmax(filter: float, mode: str) -> None:
    b, a = random_logits(6, 32000, seed=11)
    # A strongly disagreeing assistant must not matter at w = 0.
    a = -10.0 * b
    got = run(b, a, 0.0, filter, mode)
    np.testing.assert_array_equal(got.argmax(-1), b.argmax(-1))


def test_assistant_changes_the_argmax_at_negative_weight() -> None:
    # The counterpart of the w = 0 test: the assistant's preferred plausible token is pushed below the runner-up.
    b = np.array([[5.0, 4.9, 0.0, -1.0]], dtype=np.float32)
    a = np.array([[6.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    for r in FILTERS:
        assert run(b, a, WEIGHT, r, "generate").argmax(-1)[0] == 1


def test_ties_at_the_kth_largest_value_are_all_kept() -> None:
    vocab, r = 1000, 0.1  # k = 100
    rng = np.random.default_rng(0)
    b = np.full((1, vocab), -4.0, dtype=np.float32)
    order = rng.permutation(vocab)
    b[0, order[:95]] = rng.uniform(3.0, 5.0, 95).astype(np.float32)  # the head
    b[0, order[95:115]] = 0.0  # 20 duplicates straddling the 100th place; max + log r ~ 2.7 > 0, so k binds
    a = rng.normal(0.0, 1.0, (1, vocab)).astype(np.float32)
    for mode in ("generate", "score"):
        got = run(b, a, WEIGHT, r, mode)
        want, mask = hand_combine(b, a, WEIGHT, r, mode)
        assert (~mask).sum() == 115  # every token tied with the k-th largest survives, not exactly k
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    kept = run(b, a, WEIGHT, r, "generate") != -1e3
    assert kept[0, order[:115]].all() and not kept[0, order[115:]].any()


def test_ties_at_the_maximum_keep_every_tied_token() -> None:
    # r = 0.001 at V = 500 keeps k = 1 token minimum, and the tail sits 8 nats below the top, past log r = -6.9:
    # only the three tokens tied for the maximum survive, all three of them.
    b = np.full((1, 500), -6.0, dtype=np.float32)
    b[0, [3, 77, 400]] = 2.0
    a = np.random.default_rng(1).normal(0.0, 1.0, (1, 500)).astype(np.float32)
    got = run(b, a, WEIGHT, 0.001, "generate")
    want, mask = hand_combine(b, a, WEIGHT, 0.001, "generate")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    assert np.flatnonzero(~mask[0]).tolist() == [3, 77, 400]


def test_filter_below_one_token_keeps_the_top_token() -> None:
    # r * V < 1 gives k = 0, which the spec leaves undefined; combine keeps at least the target's best token.
    b, a = random_logits(4, 50, seed=5)
    got = run(b, a, WEIGHT, 0.01, "generate")
    lp = log_softmax64(b)
    kept = got != -1e3
    np.testing.assert_array_equal(kept, lp >= lp.max(-1, keepdims=True) + math.log(0.01))
    assert kept[np.arange(4), b.argmax(-1)].all()


@pytest.mark.parametrize("filter", FILTERS)
def test_tokens_the_target_rules_out_stay_ruled_out(filter: float) -> None:
    b, a = random_logits(2, 32000, seed=13)
    b[:, :100] = -np.inf
    a[:, 50:100] = -np.inf  # half of them also ruled out by the assistant: -inf + w * -inf must not become NaN
    for mode in ("generate", "score"):
        got = run(b, a, WEIGHT, filter, mode)
        assert not np.isnan(got).any()
        if filter > 0 and mode == "generate":
            assert np.all(got[:, :100] == -1e3)
        else:
            assert np.all(got[:, :100] == -np.inf)
        probs = torch.softmax(torch.from_numpy(got), dim=-1)
        assert probs[:, :100].max() == 0.0


@pytest.mark.parametrize("filter", [0.01, 0.1])
def test_assistant_minus_inf_on_implausible_tokens_is_ignored(filter: float) -> None:
    b, a = random_logits(2, 32000, seed=17)
    _, mask = hand_combine(b, a, WEIGHT, filter, "score")
    a[mask] = -np.inf  # the filter sets a' = 0 there, so the assistant's -inf never reaches the output
    for mode in ("generate", "score"):
        got = run(b, a, WEIGHT, filter, mode)
        want, _ = hand_combine(b, a, WEIGHT, filter, mode)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_target_minus_inf_matches_hand_computation_with_filter() -> None:
    b, a = random_logits(2, 32000, seed=19)
    b[:, ::7] = -np.inf
    for mode in ("generate", "score"):
        got = run(b, a, WEIGHT, 0.1, mode)
        want, _ = hand_combine(b, a, WEIGHT, 0.1, mode)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-4)


def test_accepts_half_precision_and_returns_float32() -> None:
    b, a = random_logits(2, 32000, seed=23)
    bt, at = torch.from_numpy(b).bfloat16(), torch.from_numpy(a).bfloat16()
    got = combine(bt, at, WEIGHT, 0.1, "generate")
    assert got.dtype == torch.float32
    want, _ = hand_combine(bt.float().numpy(), at.float().numpy(), WEIGHT, 0.1, "generate")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["generate", "score"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_assistant_logits_on_the_kept_columns_give_the_dense_output_bit_for_bit(mode: str, dtype) -> None:
    b, a = random_logits(5, 32000, seed=29)
    target, assistant = torch.from_numpy(b).to(dtype), torch.from_numpy(a).to(dtype)
    implausible = relative_top_mask(target, 0.01)
    columns = (~implausible).any(0).nonzero().squeeze(1)  # the rows' union, as the sparse head computes it
    sparse = combine(target, assistant[:, columns], WEIGHT, 0.01, mode, implausible, columns)
    assert torch.equal(sparse, combine(target, assistant, WEIGHT, 0.01, mode))
    assert sparse.dtype == torch.float32 and torch.equal(target, torch.from_numpy(b).to(dtype))  # input untouched


def test_assistant_columns_need_the_filter_and_matching_shapes() -> None:
    columns = torch.arange(4)
    with pytest.raises(ValueError, match="need filter > 0"):
        combine(torch.zeros(2, 10), torch.zeros(2, 4), WEIGHT, 0.0, columns=columns)
    with pytest.raises(ValueError, match=r"\(2, 5\) != \(2, 4\)"):
        combine(torch.zeros(2, 10), torch.zeros(2, 5), WEIGHT, 0.1, columns=columns)


@pytest.mark.parametrize("path", [0, 1, None], ids=["topk", "numpy", "timed"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("rows, vocab, k", [(1, 10, 1), (7, 32000, 320), (3, 1000, 999), (5, 128, 64)])
def test_kth_largest_and_max_are_topks(rows: int, vocab: int, k: int, threads: int, path: int | None) -> None:
    generator = torch.Generator().manual_seed(rows * vocab + k)
    values = torch.randint(-50, 50, (rows, vocab), generator=generator).float() / 4  # many duplicates
    values[0, :3] = float("-inf")
    top = torch.topk(values, k, dim=-1).values
    with torch_threads(threads):
        for _ in range(6 if path is None else 1):  # timed: both methods' warm-ups and timed calls, then the choice
            kth, best = kth_largest_and_max(values, k, path)
            assert torch.equal(kth, top[:, -1:]) and torch.equal(best, top[:, :1])


def test_mismatched_shapes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="!="):
        combine(torch.zeros(2, 32000), torch.zeros(2, 32001), WEIGHT, 0.1)
    with pytest.raises(ValueError, match="!="):
        combine(torch.zeros(2, 100), torch.zeros(3, 100), WEIGHT, 0.0)


@pytest.mark.parametrize("filter", [-0.1, 1.0, 1.5, float("nan")])
def test_filter_outside_zero_one_raises_value_error(filter: float) -> None:
    with pytest.raises(ValueError, match="filter must be in"):
        combine(torch.zeros(1, 10), torch.zeros(1, 10), WEIGHT, filter)


def test_unknown_mode_raises_value_error() -> None:
    with pytest.raises(ValueError, match="mode must be"):
        combine(torch.zeros(1, 10), torch.zeros(1, 10), WEIGHT, 0.1, "sample")  # type: ignore[arg-type]


def test_under_the_filter_a_log_prob_difference_would_generate_exactly_as_the_logit_difference() -> None:
    """The fluency issue's "log-prob difference" variant: on the kept tokens lp_t + w lp_a differs from l_t + w l_a by
    one constant per row (-lse_t - w lse_a), and implausible tokens are masked in generation, so the sampling
    distribution and the greedy token are the same; only scoring mode, which leaves implausible tokens unmasked, could
    differ. So it cannot make generation more fluent, and it is not an option."""
    b, a = random_logits(8, 32000, seed=7)
    t, s = torch.from_numpy(b), torch.from_numpy(a)
    raw = combine(t, s, WEIGHT, 0.1, "generate")
    mask = relative_top_mask(t, 0.1)
    lp = (t.log_softmax(-1) + WEIGHT * s.log_softmax(-1)).masked_fill(mask, MASKED_LOGIT)
    torch.testing.assert_close(raw.softmax(-1), lp.softmax(-1), atol=1e-6, rtol=1e-5)
    assert torch.equal(raw.argmax(-1), lp.argmax(-1))
    score_raw, score_lp = combine(t, s, WEIGHT, 0.1, "score"), t.log_softmax(-1) + WEIGHT * s.log_softmax(-1) * ~mask
    assert (score_raw.log_softmax(-1) - score_lp.log_softmax(-1)).abs().max() > 0.1  # scoring would differ
