"""The requests every system runs: decode prompts with their output lengths, and the texts scoring reads. On the real
model they are TOFU's questions and answers in its prompt format; on a random model, random token ids."""

from __future__ import annotations

import random


def decode_requests(count: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """(prompt ids, max_tokens): prompts of 16-256 tokens, outputs of 16-128 tokens, as users' jobs look."""
    rng = random.Random(seed)
    return [
        ([1] + [rng.randrange(4, vocab) for _ in range(rng.randint(15, 255))], rng.randint(16, 128))
        for _ in range(count)
    ]


def scoring_texts(count: int, vocab: int, seed: int) -> list[list[int]]:
    """Prompt + answer token ids of 64-192 tokens: what TOFU's teacher-forced metrics score."""
    rng = random.Random(seed)
    return [[1] + [rng.randrange(4, vocab) for _ in range(rng.randint(63, 191))] for _ in range(count)]


def tofu_pairs(tokenizer_dir: str, count: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(question prompt ids, answer ids) of `count` TOFU QA drawn from its 4,000 by `seed`."""
    from transformers import AutoTokenizer

    from uld_vllm.qa import answer_ids, prompt_ids
    from uld_vllm.tofu import rows

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chosen = random.Random(seed).sample(rows("full"), count)
    return [(prompt_ids(tokenizer, r["question"]), answer_ids(tokenizer, r["answer"])) for r in chosen]


def spec_requests(spec: dict) -> list[tuple[list[int], int]]:
    """The decode requests every worker runs (the first B of them at batch size B), and the report's limits count."""
    count = max(spec["batch_sizes"])
    if spec.get("tofu_text"):
        lengths = random.Random(1).choices(range(16, 129), k=count)
        return [(p, n) for (p, _), n in zip(tofu_pairs(spec["target"], count, seed=1), lengths, strict=True)]
    return decode_requests(count, spec["vocab"], seed=1)


def spec_scoring_texts(spec: dict) -> list[list[int]]:
    """The texts every system scores, every token after the first (through uld_vllm.answer_scoring)."""
    if spec.get("tofu_text"):
        return [p + a for p, a in tofu_pairs(spec["target"], spec["scoring_texts"], seed=2)]
    return scoring_texts(spec["scoring_texts"], spec["vocab"], seed=2)
