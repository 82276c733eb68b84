"""The reference decoder (the oracle everything else is tested against) against plain HF models and hand math."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from uld_vllm.combine import combine
from uld_vllm.reference import ReferenceDecoder, SamplingConfig, sampling_probs

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BUNDLES = ["llama_bundle", "llama_full_bundle", "mistral_bundle", "qwen2_bundle"]
TEXTS = [
    "Who wrote the book?",
    "What",
    "Where was the author born and what city did his father and mother live in when he wrote the novel?",
    "The award",
    "Her name is",
    "In what year was the genre of their first novel",
    "Is",
    "Who is the author of the book of the year, and where",
    "The father of the author was a",
    "When",
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def prompts(llama_bundle: Path) -> list[list[int]]:
    """Token ids of TEXTS (<s> included): 10 prompts from 2 to ~25 tokens."""
    tokenizer = AutoTokenizer.from_pretrained(llama_bundle)
    ids = [tokenizer(text).input_ids for text in TEXTS]
    assert len({len(p) for p in ids}) >= 6  # mixed lengths, so the batch really is padded
    return ids


class _Decoders(dict):
    """Bundle fixture name -> its ReferenceDecoder, loaded on first use."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        super().__init__()
        self.request = request

    def __missing__(self, name: str) -> ReferenceDecoder:
        self[name] = ReferenceDecoder.from_bundle(self.request.getfixturevalue(name))
        return self[name]


@pytest.fixture(scope="module")
def decoders(request: pytest.FixtureRequest) -> _Decoders:
    return _Decoders(request)


def target_model(bundle: Path):
    """The target as plain transformers loads it from its own checkpoint (not from the bundle)."""
    return AutoModelForCausalLM.from_pretrained(bundle.parent / "target", dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------------------ assistant


@pytest.mark.parametrize("name", ["llama_bundle", "qwen2_bundle"])
def test_lora_assistant_equals_peft_merged_target_cut_to_k_layers(name: str, request, decoders) -> None:
    from peft import PeftModel

    bundle: Path = request.getfixturevalue(name)
    decoder = decoders[name]
    k = decoder.assistant.config.num_hidden_layers
    model = target_model(bundle)
    model.model.layers = model.model.layers[:k]
    model.config.num_hidden_layers = k
    model = PeftModel.from_pretrained(model, bundle.parent / "assistant").merge_and_unload()
    ids = torch.tensor([[1, 40, 41, 42, 100, 7, 300]])
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        got = decoder.assistant(input_ids=ids, use_cache=False).logits
        target = decoder.target(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert (got - target).abs().max() > 0.1  # the assistant is a different model, not the target again


def test_full_assistant_equals_its_checkpoint(llama_full_bundle: Path, decoders) -> None:
    decoder = decoders["llama_full_bundle"]
    model = AutoModelForCausalLM.from_pretrained(llama_full_bundle.parent / "assistant", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 40, 41, 42, 100, 7, 300]])
    with torch.no_grad():
        torch.testing.assert_close(decoder.assistant(input_ids=ids).logits, model(input_ids=ids).logits)


# ----------------------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("name", BUNDLES)
def test_batched_greedy_equals_one_prompt_at_a_time(name: str, prompts, decoders) -> None:
    decoder = decoders[name]
    batched = decoder.generate(prompts, MAX_TOKENS)
    alone = [decoder.generate([p], MAX_TOKENS)[0] for p in prompts]
    assert batched == alone
    assert all(len(out) == MAX_TOKENS for out in batched)
    assert len({tuple(out) for out in batched}) > len(prompts) // 2  # prompts lead to different continuations


@pytest.mark.parametrize("name", BUNDLES)
def test_weight_zero_equals_the_target_models_own_greedy_decoding(name: str, request, prompts) -> None:
    bundle: Path = request.getfixturevalue(name)
    decoder = ReferenceDecoder.from_bundle(bundle, weight=0.0)
    target = target_model(bundle)
    got = decoder.generate(prompts[:4], MAX_TOKENS, eos_token_id=2)
    for prompt, tokens in zip(prompts[:4], got, strict=True):
        ids = torch.tensor([prompt])
        out = target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=3,
        )
        assert tokens == out[0, len(prompt) :].tolist()


def test_negative_weight_changes_greedy_output(prompts, decoders) -> None:
    # Counterpart of the w = 0 test: with the bundle's weight the assistant really steers decoding.
    decoder = decoders["llama_full_bundle"]
    unlearned = decoder.generate(prompts, MAX_TOKENS)
    plain = ReferenceDecoder(decoder.target, decoder.assistant, weight=0.0, filter=0.0).generate(prompts, MAX_TOKENS)
    assert unlearned != plain


def test_greedy_tokens_are_the_argmax_of_next_token_logits(prompts, decoders) -> None:
    decoder = decoders["llama_bundle"]
    first = [out[0] for out in decoder.generate(prompts, 1)]
    assert first == decoder.next_token_logits(prompts).argmax(-1).tolist()


def test_next_token_logits_of_a_padded_batch_match_each_prompt_alone(prompts, decoders) -> None:
    decoder = decoders["qwen2_bundle"]
    batched = decoder.next_token_logits(prompts, mode="score")
    alone = torch.cat([decoder.next_token_logits([p], mode="score") for p in prompts])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-4)


def test_eos_stops_a_sequence_and_not_its_neighbours(prompts, decoders) -> None:
    decoder = decoders["llama_bundle"]
    free = decoder.generate(prompts[:3], MAX_TOKENS)
    eos = free[0][4]  # pretend the 5th token generated for prompt 0 is EOS
    stopped = decoder.generate(prompts[:3], MAX_TOKENS, eos_token_id=eos)
    for before, after in zip(free, stopped, strict=True):
        cut = before.index(eos) + 1 if eos in before else len(before)
        assert after == before[:cut]  # EOS included, nothing after it; unaffected rows run on
    assert len(stopped[0]) <= 5


def test_generation_stops_early_once_every_sequence_hit_eos(prompts, decoders) -> None:
    decoder = decoders["llama_bundle"]
    first = decoder.generate(prompts[:1], 3)[0]
    assert decoder.generate(prompts[:1], 50, eos_token_id=first[1]) == [first[:2]]


def test_empty_prompt_is_refused(decoders) -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        decoders["llama_bundle"].generate([[1, 5], []], 4)


# ------------------------------------------------------------------------------------------------------- sampling


def test_sampling_with_a_seed_is_reproducible_and_differs_across_seeds(prompts, decoders) -> None:
    decoder = decoders["llama_full_bundle"]

    def sample(seed: int) -> list[list[int]]:
        return decoder.generate(prompts[:4], MAX_TOKENS, SamplingConfig(temperature=1.0, seed=seed))

    assert sample(0) == sample(0)
    assert sample(0) != sample(1)
    assert sample(0) != decoder.generate(prompts[:4], MAX_TOKENS)  # really sampled, not greedy


def test_top_k_one_sampling_equals_greedy(prompts, decoders) -> None:
    decoder = decoders["mistral_bundle"]
    greedy = decoder.generate(prompts, MAX_TOKENS)
    assert decoder.generate(prompts, MAX_TOKENS, SamplingConfig(temperature=1.0, top_k=1, seed=3)) == greedy


def test_sampling_never_picks_a_token_the_filter_masked(prompts, decoders) -> None:
    decoder = decoders["llama_bundle"]  # filter 0.1
    plausible = decoder.next_token_logits(prompts) != -1e3  # (B, V)
    for seed in range(5):
        first = decoder.generate(prompts, 1, SamplingConfig(temperature=2.0, seed=seed))
        assert all(plausible[row, out[0]] for row, out in enumerate(first))


P = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
LOGITS = P.log()


def normalized(values: list[float]) -> torch.Tensor:
    t = torch.tensor([values])
    return t / t.sum()


@pytest.mark.parametrize(
    ("params", "want"),
    [
        (SamplingConfig(temperature=1.0), P),
        # temperature 2: p ** (1 / 2), renormalized
        (SamplingConfig(temperature=2.0), normalized([0.5**0.5, 0.2**0.5, 0.15**0.5, 0.1**0.5, 0.05**0.5])),
        # top-k 2: the two best tokens
        (SamplingConfig(temperature=1.0, top_k=2), normalized([0.5, 0.2, 0, 0, 0])),
        # top-k -1 and top-k >= V disable it
        (SamplingConfig(temperature=1.0, top_k=-1), P),
        (SamplingConfig(temperature=1.0, top_k=5), P),
        # top-p 0.8: smallest head with mass >= 0.8 is 0.5 + 0.2 + 0.15 = 0.85
        (SamplingConfig(temperature=1.0, top_p=0.8), normalized([0.5, 0.2, 0.15, 0, 0])),
        # top-p 0.45: the best token alone already has mass 0.5
        (SamplingConfig(temperature=1.0, top_p=0.45), normalized([1, 0, 0, 0, 0])),
        # min-p 0.35: keep p >= 0.35 * 0.5 = 0.175
        (SamplingConfig(temperature=1.0, min_p=0.35), normalized([0.5, 0.2, 0, 0, 0])),
        # top-k 3 then top-p 0.6 on the renormalized head (0.588, 0.235, 0.176): two tokens reach 0.6
        (SamplingConfig(temperature=1.0, top_k=3, top_p=0.6), normalized([0.5, 0.2, 0, 0, 0])),
        # min-p applies after temperature: at T=2 the best has 0.5**0.5/Z, the cut 0.6 * that keeps p**0.5 >= 0.424
        (
            SamplingConfig(temperature=2.0, min_p=0.6),
            normalized([0.5**0.5, 0.2**0.5, 0, 0, 0]),
        ),
    ],
)
def test_sampling_probs_match_hand_computation(params: SamplingConfig, want: torch.Tensor) -> None:
    torch.testing.assert_close(sampling_probs(LOGITS, params), want, rtol=1e-5, atol=1e-6)


def test_top_k_keeps_every_token_tied_with_the_kth() -> None:
    # vLLM's apply_top_k_top_p masks only tokens strictly below the k-th largest logit.
    probs = sampling_probs(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), SamplingConfig(temperature=1.0, top_k=2))
    torch.testing.assert_close(probs, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0]]))


def test_sampling_probs_treat_rows_independently() -> None:
    logits = torch.cat([LOGITS, LOGITS.flip(-1)])
    probs = sampling_probs(logits, SamplingConfig(temperature=1.0, top_k=2))
    torch.testing.assert_close(probs[1], normalized([0, 0, 0, 0.2, 0.5])[0])


# -------------------------------------------------------------------------------------------------------- scoring


def full_forward_logprobs(decoder: ReferenceDecoder, ids: list[int], mode: str) -> torch.Tensor:
    """log_softmax(combine(...)) at every position from one uncached forward pass of each model: (T, V)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        target = decoder.target(input_ids=x, use_cache=False).logits[0]
        assistant = decoder.assistant(input_ids=x, use_cache=False).logits[0]
    return torch.log_softmax(combine(target, assistant, decoder.weight, decoder.filter, mode), dim=-1)


@pytest.mark.parametrize("name", ["llama_bundle", "llama_full_bundle", "qwen2_bundle"])
def test_score_equals_log_softmax_of_scoring_mode_combine(name: str, prompts, decoders) -> None:
    decoder = decoders[name]
    prompt = prompts[0]
    continuation = torch.randint(4, decoder.target.config.vocab_size, (9,)).tolist()  # mostly implausible tokens
    got = decoder.score(prompt, continuation)
    logprobs = full_forward_logprobs(decoder, prompt + continuation, "score")
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(continuation) - 1)  # logits at t predict t + 1
    want = logprobs[positions, torch.tensor(continuation)]
    assert got.shape == (len(continuation),)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert got.min() > -100  # scoring never sees the -1e3 generation mask
    if decoder.filter > 0:
        masked = full_forward_logprobs(decoder, prompt + continuation, "generate")[
            positions, torch.tensor(continuation)
        ]
        assert masked.min() < -500  # ... which some of these tokens would get in generation mode


def test_prompt_logprobs_agree_with_score_of_the_prompts_tail(prompts, decoders) -> None:
    decoder = decoders["llama_bundle"]
    text = prompts[2]
    full = decoder.prompt_logprobs(text)
    assert full.shape == (len(text) - 1,)
    for split in (1, 4, len(text) - 1):
        torch.testing.assert_close(decoder.score(text[:split], text[split:]), full[split - 1 :], rtol=1e-4, atol=1e-4)


def test_score_of_the_greedy_continuation_is_its_best_log_prob(prompts, decoders) -> None:
    # Greedy picks the argmax of the generation logits; with the filter off the score of that token is the row max.
    decoder = decoders["llama_full_bundle"]
    prompt = prompts[5]
    tokens = decoder.generate([prompt], 6)[0]
    logprobs = full_forward_logprobs(decoder, prompt + tokens, "score")[len(prompt) - 1 : -1]
    torch.testing.assert_close(decoder.score(prompt, tokens), logprobs.max(-1).values, rtol=1e-4, atol=1e-4)


def test_score_refuses_empty_inputs(decoders) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        decoders["llama_bundle"].score([], [5])
    with pytest.raises(ValueError, match="non-empty"):
        decoders["llama_bundle"].score([1], [])
