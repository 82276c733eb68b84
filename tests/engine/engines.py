"""Engine-test inputs: mixed-length token prompts and greedy decoding through a real engine."""

from __future__ import annotations

import random


def mixed_prompts(count: int, vocab: int, seed: int = 0, max_len: int = 40) -> list[list[int]]:
    """Token-id prompts of mixed lengths (1 .. max_len); half share a 24-token prefix so prefix caching has hits."""
    rng = random.Random(seed)
    shared = [1] + [rng.randrange(4, vocab) for _ in range(23)]
    prompts = []
    for i in range(count):
        tail = [
            rng.randrange(4, vocab)
            for _ in range(rng.randint(0 if i % 2 else 1, max_len - 24 if i % 2 else max_len - 1))
        ]
        prompts.append(shared + tail if i % 2 else [1] + tail)
    return prompts


def greedy(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]
