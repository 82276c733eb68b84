"""Answer scoring (uld_vllm.answer_scoring): each answer token's ULD log-prob equals the reference decoder's, with
logits computed only at answer rows, prompts read from the prefix cache, chunked prefill, and a cache hit that
reaches into an answer found and scored again."""

from __future__ import annotations

import math
import random

import pytest
import torch
from helpers import engine

from uld_vllm.answer_scoring import answer_logprobs, answer_params, score_answers, uncomputed
from uld_vllm.reference import ReferenceDecoder

pytestmark = pytest.mark.vllm

BLOCK = 32


def question_pairs(vocab: int, seed: int, questions: int = 6) -> list[tuple[list[int], list[int]]]:
    """Per question, a prompt of 35-70 tokens and three answers; the first two share a 40-token opening, so the
    second's cache hit can reach past its prompt."""
    rng = random.Random(seed)

    def tokens(low: int, high: int) -> list[int]:
        return [rng.randrange(4, vocab) for _ in range(rng.randint(low, high))]

    pairs = []
    for _ in range(questions):
        prompt, opening = [1] + tokens(35, 70), tokens(40, 40)
        pairs += [(prompt, opening + tokens(3, 12)), (prompt, opening + tokens(3, 12)), (prompt, tokens(3, 20))]
    return pairs


@pytest.fixture(scope="module")
def scored(bundle_factory):
    bundle = bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)
    kwargs = dict(block_size=BLOCK, enable_prefix_caching=True, max_num_batched_tokens=64, max_num_seqs=8)
    with engine(bundle, **kwargs) as llm:
        yield llm, ReferenceDecoder.from_bundle(bundle)


def test_answer_logprobs_equal_the_references_in_chunks_and_from_the_cache(scored):
    llm, reference = scored
    pairs = question_pairs(reference.target.config.vocab_size, seed=0)
    # Each question's third answer continues greedily from its prompt (the reference's own choices), so greedy flags
    # are not all False and a wrong rank would show.
    for i in range(2, len(pairs), 3):
        prompt, answer = pairs[i]
        pairs[i] = (prompt, reference.generate([prompt], len(answer))[0])
    got = score_answers(llm, pairs)
    want = reference.score_batch(pairs)
    for (values, greedy), (want_values, want_greedy) in zip(got, want, strict=True):
        torch.testing.assert_close(torch.tensor(values), want_values, atol=1e-4, rtol=0)
        assert greedy == want_greedy.tolist()
    assert any(all(greedy) for _, greedy in got) and not all(all(greedy) for _, greedy in got)


def test_prompt_rows_get_no_logits_and_a_cache_hit_into_an_answer_is_left_uncomputed(scored):
    llm, reference = scored
    pairs = question_pairs(reference.target.config.vocab_size, seed=1, questions=3)
    first, second = pairs[0::3], pairs[1::3]  # second: same prompt, same 40-token opening as first

    def run(batch):
        return llm.generate(
            [{"prompt_token_ids": p + a} for p, a in batch], [answer_params(len(p)) for p, a in batch], use_tqdm=False
        )

    for (prompt, _), output in zip(first, run(first), strict=True):
        assert all(
            math.isnan(entry[t].logprob) for t, entry in zip(prompt[1:], output.prompt_logprobs[1:], strict=False)
        )
        assert not uncomputed(answer_logprobs(output, len(prompt)))
    outputs = run(second)
    reached = [o.num_cached_tokens > len(p) for (p, _), o in zip(second, outputs, strict=True)]
    assert all(o.num_cached_tokens >= BLOCK for o in outputs)  # each prompt came from the cache
    assert any(reached), "no cache hit reached into an answer: the case below proves nothing"
    for (prompt, _), output, hit in zip(second, outputs, reached, strict=True):
        assert uncomputed(answer_logprobs(output, len(prompt))) == hit
