"""The requests every system runs: decode prompts with their output lengths, and the texts scoring reads."""

from __future__ import annotations

import random


def decode_requests(count: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens): prompts of 16-256 tokens, outputs of 16-128 tokens, as users' jobs look."""
    rng = random.Random(seed)
    return [
        ([1] + [rng.randrange(4, vocab) for _ in range(rng.randint(15, 255))], rng.randint(16, 128))
        for _ in range(count)
    ]


def spec_requests(spec: dict) -> list[tuple[list[int], int]]:
    """The decode requests every worker runs (the first B of them at batch size B), and the report's limits count."""
    return decode_requests(max(spec["batch_sizes"]), spec["vocab"], seed=1)


def scoring_texts(count: int, vocab: int, seed: int) -> list[list[int]]:
    """Prompt + answer token ids of 64-192 tokens: what TOFU's teacher-forced metrics score."""
    rng = random.Random(seed)
    return [[1] + [rng.randrange(4, vocab) for _ in range(rng.randint(63, 191))] for _ in range(count)]
