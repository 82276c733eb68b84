"""The fused Triton kernel against the torch oracle and combine(): greedy exact, sampling exact and in distribution.

On a machine without CUDA the kernel runs in Triton's CPU interpreter, in a worker process (kernel_cases): the
vocabularies and batches here are sized for it. Sizes that are not multiples of the kernel's 1024-token chunk (and
not powers of two) check the masks; 32000 spans 32 chunks.
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import (
    TritonRunner,
    chi_square_pvalue,
    combined,
    flat_logits,
    lm_logits,
    sparse_head,
    truncated_probs,
)

from uld_kernels import SparseAssistant, combine_and_sample
from uld_kernels.rng import gumbel_noise, stream_keys, token_bits

pytestmark = pytest.mark.usefixtures("single_torch_thread")

API = "uld_kernels.combine_and_sample"
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}  # log-probs: float32 math throughout


def both(run: TritonRunner, target, assistant, **kwargs):
    """(kernel result, torch result) for the same call; both with log-probs."""
    kernel = run(API, target, assistant, backend="triton", return_logprobs=True, **kwargs)
    oracle = combine_and_sample(target, assistant, backend="torch", return_logprobs=True, **kwargs)
    return kernel, oracle


def test_kernel_noise_is_bit_exact_with_rng(triton_run: TritonRunner) -> None:
    keys = stream_keys(torch.tensor([0, -3, 1 << 50]), torch.tensor([0, 17, 5]))
    ids = torch.cat([torch.arange(3000), torch.tensor([262143, 131071, (1 << 24) - 1])])
    bits, gumbel = triton_run("uld_kernels.combine_sample.noise_triton", keys, ids)
    assert torch.equal(bits, token_bits(keys, ids))
    torch.testing.assert_close(gumbel, gumbel_noise(keys, ids), rtol=1e-6, atol=1e-6)  # log: last-ulp differences


@pytest.mark.parametrize(
    ("vocab", "dtype"),
    [(1000, torch.float32), (4099, torch.float16), (4099, torch.bfloat16), (32000, torch.bfloat16)],
)
def test_greedy_is_exactly_the_argmax_of_combine(triton_run: TritonRunner, vocab: int, dtype: torch.dtype) -> None:
    rows = 3 if vocab < 32000 else 2
    target, assistant = lm_logits(rows, vocab, seed=vocab, dtype=dtype)
    weights, filters = [-0.8, -1.0, -0.5][:rows], [0.1, 0.0, 0.01][:rows]
    kwargs = dict(weight=torch.tensor(weights), filter=torch.tensor(filters, dtype=torch.float64))
    (tokens, logprobs), (want, want_logprobs) = both(triton_run, target, assistant, temperature=0.0, seeds=0, **kwargs)
    logits = combined(target, assistant, weights, filters, "generate")
    assert torch.equal(want, logits.argmax(-1))
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=0, atol=TOLERANCE[dtype])


def test_the_largest_vocabulary(triton_run: TritonRunner) -> None:
    target, assistant = lm_logits(2, 262144, seed=19, dtype=torch.bfloat16)  # 256 chunks per pass
    kwargs = dict(
        weight=-0.8, filter=torch.tensor([0.01, 0.0], dtype=torch.float64), temperature=torch.tensor([0.0, 1.0]),
        top_k=torch.tensor([0, 40]), seeds=1, steps=2,
    )  # fmt: skip
    (tokens, logprobs), (want, want_logprobs) = both(triton_run, target, assistant, **kwargs)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=0, atol=2e-5)


def test_greedy_ties_go_to_the_first_index_across_chunks(triton_run: TritonRunner) -> None:
    vocab = 3000  # three 1024-token chunks: ties within a chunk and across chunks
    target = torch.full((4, vocab), -2.0)
    assistant = torch.zeros(4, vocab)
    for row, tied in enumerate([[2500, 900, 700, 1500], [1023, 1024], [40, 5, 2999], [2048, 100, 1100, 130]]):
        target[row, tied] = 6.0  # exact ties of the combined logits too: the assistant is flat on them
    filters = torch.tensor([0.1, 0.0, 0.001, 0.0], dtype=torch.float64)
    kwargs = dict(weight=-0.8, filter=filters, temperature=0.0, seeds=0)
    (tokens, _), (want, _) = both(triton_run, target, assistant, **kwargs)
    assert tokens.tolist() == want.tolist() == [700, 1023, 5, 100]


def test_minus_inf_target_tokens(triton_run: TritonRunner) -> None:
    target, assistant = lm_logits(4, 1500, seed=9)
    target[:, ::3] = float("-inf")
    target[1, target[1].argmax()] = float("-inf")  # the old maximum too
    filters = torch.tensor([0.0, 0.1, 0.0, 0.01], dtype=torch.float64)
    temperature = torch.tensor([0.0, 0.0, 1.0, 1.0])
    kwargs = dict(weight=-0.8, filter=filters, temperature=temperature, seeds=torch.arange(4))
    (tokens, logprobs), (want, want_logprobs) = both(triton_run, target, assistant, **kwargs)
    assert torch.equal(tokens, want)
    assert (tokens % 3 != 0).all()
    torch.testing.assert_close(logprobs, want_logprobs, rtol=0, atol=2e-5)


SAMPLING_ROWS = dict(
    weight=torch.tensor([-0.8, -1.0, -0.8, -0.5, -0.8, 0.0, -0.8, -1.0]),
    filter=torch.tensor([0.1, 0.0, 0.01, 0.1, 0.0, 0.05, 0.1, 0.0], dtype=torch.float64),
    temperature=torch.tensor([1.0, 0.7, 1.3, 0.5, 1.0, 2.0, 0.0, 1.0]),
    top_k=torch.tensor([0, 0, 20, 5, 50, 0, 3, 1]),
    top_p=torch.tensor([1.0, 0.9, 1.0, 0.8, 0.95, 0.5, 0.5, 1.0]),
)


@pytest.mark.parametrize(("vocab", "dtype"), [(1000, torch.float32), (4099, torch.bfloat16)])
def test_sampled_tokens_are_the_oracles(triton_run: TritonRunner, vocab: int, dtype: torch.dtype) -> None:
    target, assistant = lm_logits(8, vocab, seed=11, dtype=dtype)
    kwargs = dict(SAMPLING_ROWS, seeds=torch.arange(8) * 1000 + vocab, steps=torch.arange(8))
    (tokens, logprobs), (want, want_logprobs) = both(triton_run, target, assistant, **kwargs)
    assert torch.equal(tokens, want)
    torch.testing.assert_close(logprobs, want_logprobs, rtol=0, atol=2e-5)
    assert tokens[7] == combined(target, assistant, [-1.0] * 8, [0.0] * 8, "generate")[7].argmax()  # top-k 1


def test_top_k_and_top_p_keep_ties_like_the_oracle(triton_run: TritonRunner) -> None:
    n, vocab = 32, 200
    gen = torch.Generator().manual_seed(23)
    target = torch.randint(-3, 3, (1, vocab), generator=gen).float().expand(n, -1).contiguous()  # 6 tied levels
    assistant = torch.zeros(n, vocab)  # flat: the combined logits keep the target's ties exactly
    kwargs = dict(
        weight=-0.8, filter=0.0, temperature=torch.tensor([0.5, 1.0]).repeat(n // 2),
        top_k=torch.tensor([1, 10, 0, 40]).repeat(n // 4), top_p=torch.tensor([1.0, 1.0, 0.3, 0.6]).repeat(n // 4),
        seeds=torch.arange(n),
    )  # fmt: skip
    (tokens, _), (want, _) = both(triton_run, target, assistant, **kwargs)
    assert torch.equal(tokens, want)
    top = target[0] == target[0].max()
    assert top[tokens[0::4]].all() and top.sum() > 10  # top-k 1 keeps all the tied maxima, and draws among them
    assert tokens[0::4].unique().numel() > 1


def test_sampled_frequencies_pass_chi_square(triton_run: TritonRunner) -> None:
    target, assistant = flat_logits(1, 48, seed=3)
    n = 240
    kwargs = dict(weight=-0.8, filter=0.1, temperature=0.8, top_k=10, top_p=0.9, seeds=torch.arange(n) + 10**6)
    rows = (target.expand(n, -1).contiguous(), assistant.expand(n, -1).contiguous())
    tokens = triton_run(API, *rows, backend="triton", **kwargs)
    assert torch.equal(tokens, combine_and_sample(*rows, backend="torch", **kwargs))
    logits = combined(target, assistant, [-0.8], [0.1], "generate")[0]
    probs = truncated_probs(logits, 0.1, 0.8, 10, 0.9)
    assert (probs > 0).sum() >= 5 and probs[probs > 0].min() * n >= 5  # 8 tokens, at least 10 draws expected each
    assert chi_square_pvalue(tokens, probs) > 1e-3
    # The test can fail: the same draws are rejected against the distribution without top-k and top-p.
    assert chi_square_pvalue(tokens, truncated_probs(logits, 0.1, 0.8, 0, 1.0)) < 1e-6


@pytest.mark.parametrize("layout", ["row", "union"])
def test_sparse_assistant_heads_give_the_dense_tokens(triton_run: TritonRunner, layout: str) -> None:
    target, assistant = lm_logits(4, 3000, seed=13, dtype=torch.bfloat16)
    filters = torch.tensor([0.01, 0.1, 0.05, 0.1], dtype=torch.float64)
    sparse = sparse_head(target.float(), assistant, filters, layout, extra=40, seed=2)
    kwargs = dict(
        weight=-0.8, filter=filters, temperature=torch.tensor([0.0, 1.0, 0.7, 1.0]), top_k=torch.tensor([0, 0, 5, 0]),
        top_p=torch.tensor([1.0, 1.0, 1.0, 0.9]), seeds=torch.arange(4), steps=4,
    )  # fmt: skip
    dense_tokens, dense_logprobs = triton_run(API, target, assistant, backend="triton", return_logprobs=True, **kwargs)
    tokens, logprobs = triton_run(API, target, sparse, backend="triton", return_logprobs=True, **kwargs)
    assert torch.equal(tokens, dense_tokens)
    torch.testing.assert_close(logprobs, dense_logprobs, rtol=0, atol=2e-5)
    assert torch.equal(tokens, combine_and_sample(target, sparse, backend="torch", **kwargs))


def test_sparse_head_missing_a_kept_token_is_refused_by_the_kernel(triton_run: TritonRunner) -> None:
    target, assistant = lm_logits(2, 1000, seed=7)
    sparse = sparse_head(target, assistant, torch.tensor([0.1, 0.1]), "row", extra=0, seed=1)
    ids = sparse.ids.clone()
    ids[1, 0] = -1
    with pytest.raises(ValueError, match="misses 1 token.*row 1"):
        triton_run(API, target, SparseAssistant(ids, sparse.logits), weight=-0.8, filter=0.1, temperature=0.0,
                   seeds=0, backend="triton")  # fmt: skip


def test_seed_and_step_decide_the_token(triton_run: TritonRunner) -> None:
    target, assistant = flat_logits(1, 1000, seed=17)
    n = 24
    rows = (target.expand(n, -1).contiguous(), assistant.expand(n, -1).contiguous())
    steps = torch.arange(n) % 12  # rows i and i + 12 share (seed, step)
    kwargs = dict(weight=-0.8, filter=0.0, temperature=1.5, seeds=5, steps=steps, backend="triton")
    first = triton_run(API, *rows, **kwargs)
    assert torch.equal(first, triton_run(API, *rows, **kwargs))
    assert torch.equal(first[:12], first[12:])
    assert first[:12].unique().numel() > 8  # twelve steps of a flat distribution: mostly different tokens
    other_seed = triton_run(API, *rows, **(kwargs | {"seeds": 6}))
    assert not torch.equal(other_seed, first)
