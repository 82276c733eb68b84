"""Sampling from the engine draws from the ULD distribution (unlike the paper's code, whose sampling path crashes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engines import mixed_prompts
from helpers import engine
from scipy.stats import chisquare

from uld_vllm.combine import relative_top_mask
from uld_vllm.reference import ReferenceDecoder, SamplingConfig, sampling_probs

pytestmark = pytest.mark.vllm

DRAWS = 3000


def _fused_steps(model) -> int:
    return getattr(model, "fused_steps", 0)


@pytest.fixture(scope="module", params=["vllm-sampler", "fused-kernel-torch-twin"])
def uld(bundle_factory, request):
    """The engine sampling with vLLM's sampler on the combined logits, and through the fused kernel's path
    (uld_vllm.fused; its torch twin on CPU, the Triton kernel on CUDA)."""
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    fused = "torch" if request.param.startswith("fused") else "off"
    with engine(bundle, hf_overrides={"uld_fused_sampling": fused}) as llm:
        yield llm, ReferenceDecoder.from_bundle(bundle)
        (steps,) = llm.apply_model(_fused_steps)
        assert (steps > 0) == (fused == "torch"), f"{steps} fused sampling steps with uld_fused_sampling={fused}"


def first_tokens(llm, prompt: list[int], **params) -> np.ndarray:
    from vllm import SamplingParams

    output = llm.generate(
        [{"prompt_token_ids": prompt}], SamplingParams(n=DRAWS, max_tokens=1, **params), use_tqdm=False
    )
    return np.array([c.token_ids[0] for c in output[0].outputs])


def chi_square_p(samples: np.ndarray, probs: torch.Tensor) -> float:
    """Pearson's test of samples against probs; tokens expected < 5 times are pooled into one bin."""
    expected = probs.double().numpy() * len(samples)
    observed = np.bincount(samples, minlength=len(expected)).astype(float)
    big = expected >= 5
    f_obs = np.append(observed[big], observed[~big].sum())
    f_exp = np.append(expected[big], expected[~big].sum())
    keep = f_exp > 0
    f_obs, f_exp = f_obs[keep], f_exp[keep]
    return float(chisquare(f_obs, f_exp * f_obs.sum() / f_exp.sum()).pvalue)


@pytest.mark.parametrize(
    "params",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=20, top_p=0.9, min_p=0.02)],
    ids=["temperature-1", "temperature-0.7-top-k-top-p-min-p"],
)
def test_sampled_first_tokens_follow_the_uld_distribution(uld, params):
    llm, reference = uld
    prompt = mixed_prompts(1, reference.target.config.vocab_size, seed=5)[0]
    # 3000 seeded children outgrow one prefill step: this also exercises the plugin's CPU seed rewind.
    samples = first_tokens(llm, prompt, seed=7, **params)
    config = SamplingConfig(
        temperature=params["temperature"],
        top_k=params.get("top_k", 0),
        top_p=params.get("top_p", 1.0),
        min_p=params.get("min_p", 0.0),
    )
    uld_probs = sampling_probs(reference.next_token_logits([prompt]), config)[0]
    assert chi_square_p(samples, uld_probs) > 1e-3
    # The test has power: the same draws reject the target model's own distribution.
    target_logits = reference.target(torch.tensor([prompt])).logits[:, -1].detach()
    assert chi_square_p(samples, sampling_probs(target_logits, config)[0]) < 1e-6
    # Tokens the relative-top filter removed are never sampled.
    implausible = relative_top_mask(target_logits, reference.filter)[0]
    assert not implausible[torch.from_numpy(samples)].any()


def test_per_request_seed_reproduces_regardless_of_batch(uld):
    from vllm import SamplingParams

    llm, reference = uld
    prompts = mixed_prompts(6, reference.target.config.vocab_size, seed=6)
    seeded = SamplingParams(temperature=1.0, max_tokens=12, seed=1234, ignore_eos=True)
    alone = llm.generate([{"prompt_token_ids": prompts[0]}], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    batch = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], [seeded] + [others] * (len(prompts) - 1), use_tqdm=False
    )
    assert list(batch[0].outputs[0].token_ids) == list(alone)
    other_seed = SamplingParams(temperature=1.0, max_tokens=12, seed=4321, ignore_eos=True)
    different = llm.generate([{"prompt_token_ids": prompts[0]}], other_seed, use_tqdm=False)[0].outputs[0].token_ids
    assert list(different) != list(alone)


def test_n_greater_than_one_returns_n_distinct_completions(uld):
    from vllm import SamplingParams

    llm, reference = uld
    prompt = mixed_prompts(1, reference.target.config.vocab_size, seed=8)[0]
    output = llm.generate(
        [{"prompt_token_ids": prompt}],
        SamplingParams(n=5, temperature=1.0, max_tokens=10, seed=3, ignore_eos=True),
        use_tqdm=False,
    )
    completions = [tuple(c.token_ids) for c in output[0].outputs]
    assert len(completions) == 5 and all(len(c) == 10 for c in completions)
    assert len(set(completions)) > 1
