"""The torch path of combine_and_sample (fallback and oracle): combine's math, the sampling rules, the inputs."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import chi_square_pvalue, combined, flat_logits, lm_logits, sparse_head, truncated_probs

from uld_kernels import SparseAssistant, combine_and_sample, resolve_backend, row_params
from uld_kernels.reference import truncate_top_k, truncate_top_p
from uld_vllm.combine import MASKED_LOGIT, relative_top_mask

pytestmark = pytest.mark.usefixtures("single_torch_thread")

WEIGHTS = [-0.8, -1.0, -0.5, 0.0]
FILTERS = [0.0, 0.01, 0.1, 0.1]


def sample(target, assistant, **kwargs):
    kwargs.setdefault("weight", torch.tensor(WEIGHTS[: target.shape[0]]))
    kwargs.setdefault("filter", torch.tensor(FILTERS[: target.shape[0]], dtype=torch.float64))
    kwargs.setdefault("seeds", torch.arange(target.shape[0]))
    return combine_and_sample(target, assistant, backend="torch", **kwargs)


@pytest.mark.parametrize("mode", ["generate", "score"])
def test_greedy_is_the_argmax_of_combine_per_row_and_logprobs_its_log_softmax(mode: str) -> None:
    target, assistant = lm_logits(4, 5000, seed=1)
    tokens, logprobs = sample(target, assistant, temperature=0.0, mode=mode, return_logprobs=True)
    logits = combined(target, assistant, WEIGHTS, FILTERS, mode)
    assert torch.equal(tokens, logits.argmax(-1))
    assert torch.equal(logprobs, torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1))
    # The per-row parameters reach their rows: w = 0 on the last row gives the target's own argmax.
    assert tokens[3] == target[3].argmax()


def test_truncation_matches_the_token_by_token_definitions() -> None:
    gen = torch.Generator().manual_seed(2)
    scaled = torch.randint(-6, 6, (6, 40), generator=gen).float() / 2  # many ties
    scaled[1, :10] = float("-inf")  # tokens already removed (masked by the filter)
    top_k = torch.tensor([0, 5, 1, 39, 12, 7], dtype=torch.int32)
    top_p = torch.tensor([0.5, 1.0, 0.9, 0.3, 0.99, 0.05])
    got = truncate_top_p(truncate_top_k(scaled, top_k), top_p)
    for i in range(6):
        logits = torch.where(scaled[i] == float("-inf"), MASKED_LOGIT, scaled[i])
        want = truncated_probs(logits, 0.1, 1.0, int(top_k[i]), float(top_p[i])) > 0
        assert torch.equal(got[i] > float("-inf"), want), i


def test_samples_follow_the_truncated_distribution_chi_square() -> None:
    target, assistant = flat_logits(1, 48, seed=3)
    n = 20000
    kwargs = dict(weight=-0.8, filter=0.1, temperature=0.8, top_k=10, top_p=0.9)
    tokens = combine_and_sample(
        target.expand(n, -1), assistant.expand(n, -1), seeds=torch.arange(n), backend="torch", **kwargs
    )
    logits = combined(target, assistant, [-0.8], [0.1], "generate")[0]
    probs = truncated_probs(logits, 0.1, 0.8, 10, 0.9)
    assert (probs > 0).sum() >= 5  # a distribution worth testing
    assert chi_square_pvalue(tokens, probs) > 1e-3
    # The test can fail: the same draws against the distribution without top-p, or at T = 1, are rejected.
    assert chi_square_pvalue(tokens, truncated_probs(logits, 0.1, 0.8, 10, 1.0)) < 1e-6
    assert chi_square_pvalue(tokens, truncated_probs(logits, 0.1, 1.0, 10, 0.9)) < 1e-6


def test_masked_tokens_are_never_sampled_even_at_high_temperature() -> None:
    target, assistant = lm_logits(1, 2000, seed=4)
    n = 400
    kwargs = dict(weight=-0.8, filter=0.1, temperature=100.0, seeds=torch.arange(n), backend="torch")
    masked = relative_top_mask(target, 0.1)[0]
    generated = combine_and_sample(target.expand(n, -1), assistant.expand(n, -1), **kwargs)
    assert not masked[generated].any()
    # Scoring mode leaves them in the distribution, and at T = 100 they are most of the draws.
    scored = combine_and_sample(target.expand(n, -1), assistant.expand(n, -1), mode="score", **kwargs)
    assert masked[scored].float().mean() > 0.5


def test_a_seed_step_pair_always_draws_the_same_token_and_steps_differ() -> None:
    target, assistant = flat_logits(1, 3000, seed=5)
    n = 64
    flat = dict(weight=-0.8, filter=0.0, temperature=1.5, seeds=7, backend="torch")
    rows = (target.expand(n, -1), assistant.expand(n, -1))
    first = combine_and_sample(*rows, steps=torch.arange(n), **flat)
    again = combine_and_sample(*rows, steps=torch.arange(n), **flat)
    assert torch.equal(first, again)
    assert first.unique().numel() > n // 2  # 64 steps of one seed: different noise, many different tokens
    same_step = combine_and_sample(*rows, steps=3, **flat)
    assert (same_step == first[3]).all()


@pytest.mark.parametrize("layout", ["row", "union"])
def test_sparse_assistant_gives_the_dense_tokens_and_logprobs(layout: str) -> None:
    target, assistant = lm_logits(3, 4000, seed=6)
    filters = torch.tensor([0.01, 0.1, 0.05], dtype=torch.float64)
    sparse = sparse_head(target, assistant, filters, layout, extra=50, seed=0)
    kwargs = dict(weight=-0.8, filter=filters, temperature=torch.tensor([0.0, 1.0, 0.7]), top_p=0.95, seeds=3)
    dense = combine_and_sample(target, assistant, return_logprobs=True, backend="torch", **kwargs)
    got = combine_and_sample(target, sparse, return_logprobs=True, backend="torch", **kwargs)
    assert torch.equal(got[0], dense[0]) and torch.equal(got[1], dense[1])


def test_sparse_assistant_missing_a_kept_token_is_refused() -> None:
    target, assistant = lm_logits(2, 1000, seed=7)
    sparse = sparse_head(target, assistant, torch.tensor([0.1, 0.1]), "row", extra=0, seed=1)
    ids = sparse.ids.clone()
    ids[1, 0] = -1  # drop one kept token of row 1
    with pytest.raises(ValueError, match="misses 1 token.*row 1"):
        combine_and_sample(
            target, SparseAssistant(ids, sparse.logits), weight=-0.8, filter=0.1, temperature=0.0, seeds=0
        )


def test_row_params_reproduce_combines_k_and_log_r() -> None:
    # int(0.7 * 1000) = 700 in float64, 699 if r were rounded to float32 first.
    rows = row_params(
        2, 1000, torch.device("cpu"), weight=-0.8, filter=torch.tensor([0.7, 0.0], dtype=torch.float64),
        temperature=torch.tensor([0.0, 2.0]), top_k=torch.tensor([5, 1000]), top_p=1.0, seeds=0, steps=None,
    )  # fmt: skip
    assert rows.filter_k.tolist() == [700, 0]
    assert rows.log_filter[0].item() == torch.tensor(-0.35667494393873245, dtype=torch.float32).item()
    assert rows.inv_temperature.tolist() == [0.0, 0.5]
    assert rows.top_k.tolist() == [5, 0]  # k >= V keeps everything: off


def test_backend_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cpu, "generate") == "torch"
    assert resolve_backend("auto", cuda, "generate") == "triton"
    assert resolve_backend("auto", cuda, "score") == "torch"
    assert resolve_backend("torch", cuda, "generate") == "torch"
    with pytest.raises(ValueError, match="generation mode only"):
        resolve_backend("triton", cuda, "score")
    with pytest.raises(ValueError, match="backend must be"):
        resolve_backend("cuda", cpu, "generate")  # type: ignore[arg-type]


def test_triton_on_cpu_tensors_without_the_interpreter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend("triton", torch.device("cpu"), "generate")


BAD_INPUTS = [
    (dict(target=torch.zeros(3)), "must be \\(B, V\\)"),
    (dict(target=torch.zeros(2, 10, dtype=torch.float64)), "float32, bfloat16 or float16"),
    (dict(assistant=torch.zeros(2, 11)), "!="),
    (dict(filter=1.0), "filter must be in"),
    (dict(filter=torch.tensor([0.1, float("nan")])), "filter must be in"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(weight=torch.tensor([1.0, 2.0, 3.0])), "weight must be a number or a \\(2,\\) tensor"),
    (dict(seeds=1.5), "seeds must be an integer"),
    (dict(top_k=torch.tensor([1.0, 2.0])), "top_k must hold integers"),
    (dict(assistant=SparseAssistant(torch.tensor([[0, 1]]).repeat(2, 1), torch.zeros(2, 2))), "filter > 0"),
    (dict(filter=0.5, assistant=SparseAssistant(torch.tensor([[0, 10]]).repeat(2, 1), torch.zeros(2, 2))), "in \\["),
    (dict(filter=0.5, assistant=SparseAssistant(torch.tensor([[3, 3]]).repeat(2, 1), torch.zeros(2, 2))), "unique"),
    (dict(filter=0.5, assistant=SparseAssistant(torch.tensor([0, 1]), torch.zeros(2, 3), "union")), "do not match"),
]


@pytest.mark.parametrize(("change", "message"), BAD_INPUTS)
def test_bad_inputs_raise_value_error_naming_them(change: dict, message: str) -> None:
    kwargs = dict(target=torch.zeros(2, 10), assistant=torch.zeros(2, 10), weight=-0.8, filter=0.0)
    kwargs.update(temperature=1.0, seeds=0)
    kwargs.update(change)
    target, assistant = kwargs.pop("target"), kwargs.pop("assistant")
    with pytest.raises(ValueError, match=message):
        combine_and_sample(target, assistant, backend="torch", **kwargs)
