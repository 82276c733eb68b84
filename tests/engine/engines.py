"""Engine helpers: real in-process vLLM engines on tiny bundles (CPU in CI), started and stopped explicitly."""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# In-process engine core: tests see exceptions directly and start faster; must be set before vllm is imported.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

# Small, explicit KV cache: CPU vLLM otherwise claims a fraction of host memory per engine.
ENGINE_KWARGS = dict(dtype="float32", max_model_len=256, enforce_eager=True, seed=0, kv_cache_memory_bytes=64 << 20)


@contextmanager
def engine(bundle: Path | str, **kwargs) -> Iterator:
    from uld_vllm.engine import make_llm, shutdown_llm

    llm = make_llm(bundle, **(ENGINE_KWARGS | kwargs))
    try:
        yield llm
    finally:
        shutdown_llm(llm)
        gc.collect()


@contextmanager
def plain_engine(model_dir: Path | str, **kwargs) -> Iterator:
    from vllm import LLM

    from uld_vllm.engine import shutdown_llm

    llm = LLM(model=str(model_dir), **(ENGINE_KWARGS | kwargs))
    try:
        yield llm
    finally:
        shutdown_llm(llm)
        gc.collect()


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
