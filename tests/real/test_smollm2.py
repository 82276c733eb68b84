"""The engine's proofs on a real pretrained LLM and TOFU's real text: the committed SmolLM2 study bundle (fine-tuned
target + the ULD assistant that forgets forget05), in float32, on the shared-weight LoRA path and the merged copy."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import engine
from scipy.stats import chisquare

from uld_vllm import smollm2_tofu, tofu
from uld_vllm.qa import answer_ids, prompt_ids
from uld_vllm.reference import ReferenceDecoder, SamplingConfig, sampling_probs

pytestmark = pytest.mark.vllm
PATHS = {"shared-lora": {}, "merged-fallback": {"hf_overrides": {"uld_share_weights": False}}}
MAX_TOKENS = 24
DRAWS = 3000


@pytest.fixture(scope="module")
def models() -> dict:
    return smollm2_tofu.assemble(("uld",))


@pytest.fixture(scope="module")
def reference(models) -> ReferenceDecoder:
    return ReferenceDecoder.from_bundle(models["uld"])


@pytest.fixture(scope="module")
def tokenizer(models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models["uld"])


@pytest.fixture(scope="module")
def qa(tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt, answer) token ids of TOFU's real QA in the chat template, drawn by a seeded rule: 12 of forget05's
    authors (the forgotten ones), 12 of the retain authors and 8 world facts."""
    rng = random.Random(0)
    rows = (
        rng.sample(tofu.rows("forget05_perturbed"), 12)
        + rng.sample(tofu.rows("retain_perturbed"), 12)
        + rng.sample(tofu.rows("world_facts_perturbed"), 8)
    )
    return [(prompt_ids(tokenizer, r["question"]), answer_ids(tokenizer, r["answer"])) for r in rows]


@pytest.fixture(scope="module", params=list(PATHS), ids=list(PATHS))
def uld(models, request):
    with engine(models["uld"], max_model_len=512, **PATHS[request.param]) as llm:
        yield llm


def test_greedy_tokens_equal_the_reference_on_tofu_questions(uld, reference, qa):
    from vllm import SamplingParams

    prompts = [p for p, _ in qa]
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True)
    got = [
        list(o.outputs[0].token_ids)
        for o in uld.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    ]
    want = reference.generate(prompts, MAX_TOKENS)
    mismatched = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not mismatched, (
        f"{len(mismatched)}/{len(prompts)} differ, first: {got[mismatched[0]]} vs {want[mismatched[0]]}"
    )


def test_answer_logprobs_equal_the_reference_scoring_mode(uld, reference, qa):
    from vllm import SamplingParams

    scored = [p + a for p, a in qa[:: len(qa) // 6]]
    outputs = uld.generate(
        [{"prompt_token_ids": s} for s in scored], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )
    for sequence, output in zip(scored, outputs, strict=True):
        got = torch.tensor(
            [entry[t].logprob for t, entry in zip(sequence[1:], output.prompt_logprobs[1:], strict=True)]
        )
        # 1e-4 absolute, plus 1e-4 relative: float32 error through 30 real layers grows with the log-prob's size (the
        # worst token measured: 3.5e-4 on a log-prob of -7.9, the same on both paths).
        torch.testing.assert_close(got, reference.prompt_logprobs(sequence), atol=1e-4, rtol=1e-4)


def chi_square_p(samples: np.ndarray, probs: torch.Tensor) -> float:
    """Pearson's test of samples against probs; tokens expected < 5 times are pooled into one bin."""
    expected = probs.double().numpy() * len(samples)
    observed = np.bincount(samples, minlength=len(expected)).astype(float)
    big = expected >= 5
    f_obs, f_exp = np.append(observed[big], observed[~big].sum()), np.append(expected[big], expected[~big].sum())
    keep = f_exp > 0
    return float(chisquare(f_obs[keep], f_exp[keep] * f_obs[keep].sum() / f_exp[keep].sum()).pvalue)


def test_sampled_first_answer_tokens_follow_the_uld_distribution(uld, reference, qa):
    """At temperature 1.5 the first answer token of a forget question spreads over many tokens; the draws must fit
    ULD's distribution and reject the target's own."""
    from vllm import SamplingParams

    prompt = qa[0][0]
    output = uld.generate(
        [{"prompt_token_ids": prompt}], SamplingParams(n=DRAWS, max_tokens=1, temperature=1.5, seed=7), use_tqdm=False
    )
    samples = np.array([c.token_ids[0] for c in output[0].outputs])
    config = SamplingConfig(temperature=1.5)
    assert chi_square_p(samples, sampling_probs(reference.next_token_logits([prompt]), config)[0]) > 1e-3
    target_logits = reference.target(torch.tensor([prompt])).logits[:, -1].detach()
    assert chi_square_p(samples, sampling_probs(target_logits, config)[0]) < 1e-6
