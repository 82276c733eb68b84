"""Per-request seeds on CPU survive chunked prefill (a vLLM CPU-runner crash that the uld plugin works around) and
give exactly the tokens of an unchunked run: the discarded samples' generator draws are undone, not just skipped."""

from __future__ import annotations

import pytest
from engines import mixed_prompts
from helpers import engine

pytestmark = pytest.mark.vllm


def seeded_outputs(llm, prompts: list[list[int]]) -> list[list[int]]:
    from vllm import SamplingParams

    params = [SamplingParams(temperature=1.0, max_tokens=8, seed=100 + i, ignore_eos=True) for i in range(len(prompts))]
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def test_seeded_sampling_with_chunked_prefill_equals_unchunked(bundle_factory):
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    prompts = [p for p in mixed_prompts(16, 400, seed=9, max_len=60) if len(p) > 40][:6]
    assert len(prompts) >= 3
    with engine(bundle) as llm:  # the default token budget prefills each of these prompts in one step
        whole = seeded_outputs(llm, prompts)
    with engine(bundle, enable_chunked_prefill=True, max_num_batched_tokens=16, max_num_seqs=4) as llm:
        chunked = seeded_outputs(llm, prompts)
    assert chunked == whole
