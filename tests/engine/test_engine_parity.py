"""The vLLM engine computes exactly the reference decoder's ULD: greedy tokens and prompt log-probs, per family."""

from __future__ import annotations

import pytest
import torch
from engines import greedy, mixed_prompts
from helpers import engine, plain_engine

from uld_vllm.reference import ReferenceDecoder

pytestmark = pytest.mark.vllm

# (bundle arguments, engine arguments): each case exercises a family, an assistant format, a K, a filter and one of
# the scheduler paths that could break two-model KV bookkeeping.
CASES = {
    "llama-lora-K2-filter0.1-prefix-caching-chunked-prefill": (
        dict(family="llama", assistant="lora", filter=0.1, assistant_layers=2),
        dict(enable_prefix_caching=True, enable_chunked_prefill=True, max_num_batched_tokens=64, max_num_seqs=16),
    ),
    # The copied-and-merged assistant (the fallback for full checkpoints, tensor parallelism, quantized targets) on a
    # LoRA bundle that the shared-weight path serves by default.
    "llama-lora-K2-filter0.1-merged-fallback": (
        dict(family="llama", assistant="lora", filter=0.1, assistant_layers=2),
        dict(hf_overrides={"uld_share_weights": False}),
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
    # The fluency variant's floor of kept tokens (uld_vllm.combine.relative_top_mask), with the sparse head's union.
    "llama-lora-K2-filter0.1-min_keep8": (
        dict(family="llama", assistant="lora", filter=0.1, assistant_layers=2, min_keep=8),
        dict(),
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


def test_the_engine_normalizes_with_vllm_c_kernels_on_cpu(case):
    """The greedy and log-prob parity above then holds for them (uld_vllm.cpu_kernels)."""
    from uld_vllm.cpu_kernels import PROVIDER

    _, llm, _ = case
    priority = llm.llm_engine.vllm_config.kernel_config.ir_op_priority
    assert priority.rms_norm[0] == priority.fused_add_rms_norm[0] == PROVIDER


def test_weight_zero_reproduces_plain_vllm_on_the_target(bundle_factory):
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    prompts = mixed_prompts(16, 400, seed=3)
    with engine(bundle, weight=0.0) as llm:
        uld = greedy(llm, prompts, MAX_TOKENS)
    with plain_engine(bundle.parent / "target") as llm:
        plain = greedy(llm, prompts, MAX_TOKENS)
    assert uld == plain


def _layout(model) -> dict:
    """How the engine holds the assistant: shared weights (LoRA wrappers on the target's first K layers, own attention
    layers, no parameters of its own) or a merged copy of K layers sharing embeddings, norm and head."""
    from uld_vllm.shared import SplitAttention, StackedLoRALinear

    own = {id(p) for p in model.parameters()} - {id(p) for p in model.target.parameters()}
    layout = {"shared": model.shared, "own_parameters": len(own), "target_layers": len(model.target.model.layers)}
    if model.shared:
        modules = list(model.target.modules())
        layout["lora_linears"] = sum(isinstance(m, StackedLoRALinear) for m in modules)
        layout["split_attention"] = sum(isinstance(m, SplitAttention) for m in modules)
    else:
        assistant, target = model.assistant, model.target
        layout["shares"] = (
            assistant.model.embed_tokens is target.model.embed_tokens
            and assistant.model.norm is target.model.norm
            and assistant.lm_head is target.lm_head
        )
        layout["assistant_layers"] = len(assistant.model.layers)
    return layout


def test_the_assistant_adds_only_its_layers_and_shares_the_rest(case, request):
    bundle, llm, reference = case
    (layout,) = llm.apply_model(_layout)
    layers = reference.assistant.config.num_hidden_layers
    lora = "lora" in request.node.callspec.id and "merged" not in request.node.callspec.id
    assert layout["shared"] == lora
    if lora:  # no copied weights: only 4 LoRA-wrapped linears (qkv, o, gate_up, down) and 1 split attention per layer
        assert layout["own_parameters"] == 0
        assert (layout["lora_linears"], layout["split_attention"]) == (4 * layers, layers)
    else:
        assert layout["shares"] and layout["assistant_layers"] == layers


def _head_stats(model) -> dict:
    return model.head.stats.as_dict() if model.head is not None else {"calls": 0}


def test_the_sparse_head_gives_the_dense_heads_tokens_and_logprobs(bundle_factory):
    """Filter 0.1 on a 512-token vocabulary keeps >= 51 tokens per row. With the rule at one row and half the
    vocabulary, small batches take the union head, and the 64-prompt batch's union passes half the vocabulary: the
    dense head. The timed rule (the CPU default, here from one row) runs both paths on each call size before it
    chooses. All must equal the dense engine."""
    from vllm import SamplingParams

    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    prompts = mixed_prompts(64, 400, seed=4)
    scored = [{"prompt_token_ids": p} for p in prompts[:6]]
    rules = {
        "untimed": {"min_rows": 1, "max_union_fraction": 0.5},
        "timed": {"min_rows": 1, "max_union_fraction": 0.5, "timed": True},
        "dense": False,
    }
    results = {}
    for name, rule in rules.items():
        with engine(bundle, hf_overrides={"uld_sparse_head": rule}) as llm:
            tokens = greedy(llm, prompts, MAX_TOKENS) + greedy(llm, prompts[:1], MAX_TOKENS)
            outputs = llm.generate(scored, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
            logprobs = [
                [
                    entry[token].logprob
                    for token, entry in zip(s["prompt_token_ids"][1:], o.prompt_logprobs[1:], strict=True)
                ]
                for s, o in zip(scored, outputs, strict=True)
            ]
            (stats,) = llm.apply_model(_head_stats)
        results[name] = (tokens, torch.tensor([v for row in logprobs for v in row]), stats)
    dense_tokens, dense_logprobs, dense_stats = results["dense"]
    assert dense_stats["calls"] == 0
    for name in ("untimed", "timed"):
        tokens, logprobs, stats = results[name]
        assert stats["sparse_calls"] > 0, f"{name}: the union head never ran"
        assert stats["calls"] > stats["sparse_calls"] + stats["fallback_calls"], f"{name}: the stacked head never ran"
        assert tokens == dense_tokens
        torch.testing.assert_close(logprobs, dense_logprobs, atol=1e-5, rtol=0)
    assert results["untimed"][2]["fallback_calls"] > 0, "the dense fallback never ran"
