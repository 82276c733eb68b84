"""The vLLM engine computes exactly the reference decoder's ULD: greedy tokens and prompt log-probs, per family."""

from __future__ import annotations

import pytest
import torch
from engines import greedy, mixed_prompts
from helpers import engine, plain_engine

from uld_vllm.reference import ReferenceDecoder

# (bundle arguments, engine arguments): each case exercises a family, an assistant format, a K, a filter and one of
# the scheduler paths that could break two-model KV bookkeeping.
CASES = {
    "llama-lora-K2-filter0.1-prefix-caching-chunked-prefill": (
        dict(family="llama", assistant="lora", filter=0.1, assistant_layers=2),
        dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=64, max_num_seqs=16),
    ),
    "mistral-full-K4-filter0-no-prefix-caching-preemption": (
        dict(family="mistral", assistant="full", filter=0.0, assistant_layers=4),
        # 20 blocks of 16 tokens for 64 requests of up to 56 tokens: the scheduler must preempt and recompute.
        dict(
            enable_prefix_caching=False,
            block_size=16,
            num_gpu_blocks_override=20,
            kv_cache_memory_bytes=None,
            disable_log_stats=False,  # the preemption counter below
        ),
    ),
    "qwen2-tied-lora-K1-filter0.01": (
        dict(family="qwen2", assistant="lora", filter=0.01, assistant_layers=1, tie_word_embeddings=True),
        dict(),
    ),
}
MAX_TOKENS = 16


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def case(request, bundle_factory):
    bundle_kwargs, engine_kwargs = CASES[request.param]
    bundle = bundle_factory(**bundle_kwargs)
    engine_kwargs = {k: v for k, v in engine_kwargs.items()}
    with engine(bundle, **engine_kwargs) as llm:
        yield bundle, llm, ReferenceDecoder.from_bundle(bundle)


def test_greedy_matches_reference_on_64_mixed_length_prompts(case, request):
    bundle, llm, reference = case
    prompts = mixed_prompts(64, reference.target.config.vocab_size, seed=1)
    got = greedy(llm, prompts, MAX_TOKENS)
    want = reference.generate(prompts, MAX_TOKENS)
    mismatched = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
    assert not mismatched, f"{len(mismatched)}/64 prompts differ, first: {got[mismatched[0]]} vs {want[mismatched[0]]}"
    if "preemption" in request.node.callspec.id:
        preemptions = sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
        assert preemptions > 0, "the small KV cache was meant to force preemption"


def test_prompt_logprobs_are_scoring_mode_uld_logprobs(case):
    from vllm import SamplingParams

    bundle, llm, reference = case
    prompts = mixed_prompts(6, reference.target.config.vocab_size, seed=2)
    outputs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )
    for prompt, output in zip(prompts, outputs, strict=True):
        got = torch.tensor(
            [entry[token].logprob for token, entry in zip(prompt[1:], output.prompt_logprobs[1:], strict=True)]
        )
        want = reference.prompt_logprobs(prompt)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    if reference.filter > 0:
        # The filter must actually have bitten (random prompt tokens are implausible), or this proves nothing about
        # generation vs scoring mode: generation mode would have put about -1e3 on these tokens.
        assert (want < -5).any() and (got > -100).all()


def test_weight_zero_reproduces_plain_vllm_on_the_target(bundle_factory):
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    prompts = mixed_prompts(16, 400, seed=3)
    with engine(bundle, weight=0.0) as llm:
        uld = greedy(llm, prompts, MAX_TOKENS)
    with plain_engine(bundle.parent / "target") as llm:
        plain = greedy(llm, prompts, MAX_TOKENS)
    assert uld == plain


def _sharing(model) -> dict:
    target, assistant = model.target, model.assistant
    return {
        "embeddings": assistant.model.embed_tokens is target.model.embed_tokens,
        "norm": assistant.model.norm is target.model.norm,
        "lm_head": assistant.lm_head is target.lm_head,
        "assistant_layers": len(assistant.model.layers),
        "target_layers": len(target.model.layers),
    }


def test_assistant_shares_embeddings_norm_and_head_and_adds_only_its_layers(case):
    bundle, llm, reference = case
    (sharing,) = llm.apply_model(_sharing)
    assert sharing["embeddings"] and sharing["norm"] and sharing["lm_head"]
    assert sharing["assistant_layers"] == reference.assistant.config.num_hidden_layers
    assert sharing["target_layers"] == reference.target.config.num_hidden_layers
