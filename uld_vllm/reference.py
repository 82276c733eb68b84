"""The oracle: ULD decoding in plain PyTorch + transformers. Slow, obviously correct, and what everything is tested against.

Two HF models, each with its own KV cache (the paper's code handed both models the same cache), left-padded
batches, greedy and sampled decoding, and teacher-forced scoring. The math is `uld_vllm.combine`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uld_vllm.assistant import assistant_config
from uld_vllm.bundle import Bundle, assistant_layer_tensors, read_bundle
from uld_vllm.combine import Mode, combine


@dataclass(frozen=True)
class SamplingConfig:
    """vLLM's SamplingParams semantics (temperature 0 = greedy; top_k 0 or -1 = off; top_p 1 = off; min_p 0 = off)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None


def sampling_probs(logits: torch.Tensor, params: SamplingConfig) -> torch.Tensor:
    """Next-token distribution (N, V) after temperature, min-p, top-k, top-p, in vLLM v1's sampler order."""
    logits = logits.float() / params.temperature
    if params.min_p > 0:
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * params.min_p
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    if params.top_k > 0 or params.top_p < 1.0:
        # Same construction as vLLM's apply_top_k_top_p: sort ascending, cut, scatter back.
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        vocab = logits.shape[-1]
        if 0 < params.top_k < vocab:
            kth = sorted_logits[:, vocab - params.top_k].unsqueeze(-1)
            sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
        if params.top_p < 1.0:
            cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - params.top_p
            drop[:, -1] = False
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(sorted_logits).scatter_(-1, order, sorted_logits)
    return torch.softmax(logits, dim=-1)


Caches = tuple[Any, Any]  # the target's and the assistant's transformers KV caches (None before the first step)
Rows = tuple[int | slice | torch.Tensor, ...]  # which (batch, position) logits a step combines
NO_CACHES: Caches = (None, None)
LAST: Rows = (slice(None), -1)  # each row's last position: the next token's logits


class ReferenceDecoder:
    """ULD over a target and an assistant HF model sharing one tokenizer vocabulary."""

    def __init__(self, target, assistant, weight: float, filter: float, min_keep: int | None = None) -> None:
        """weight, filter and min_keep as checked settings (from_bundle checks a bundle's and its overrides)."""
        self.target = target.eval()
        self.assistant = assistant.eval()
        self.weight = weight
        self.filter = filter
        self.min_keep = min_keep

    @classmethod
    def from_bundle(
        cls,
        bundle: str | Path | Bundle,
        weight: float | None = None,
        filter: float | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ReferenceDecoder:
        from transformers import AutoModelForCausalLM

        bundle = bundle if isinstance(bundle, Bundle) else read_bundle(bundle)
        if weight is not None or filter is not None:
            bundle = dataclasses.replace(bundle, settings=bundle.settings.overridden(weight, filter))
        # The bundle's top-level safetensors are the target's; transformers picks the class from model_type.
        target = AutoModelForCausalLM.from_pretrained(bundle.path, dtype=dtype)
        config = assistant_config(target.config, bundle.settings.assistant_layers)
        assistant = AutoModelForCausalLM.from_config(config, dtype=dtype)
        state = {k: v for k, v in target.state_dict().items() if ".layers." not in k}
        state.update(assistant_layer_tensors(bundle))
        assistant.load_state_dict({k: v for k, v in state.items() if k in assistant.state_dict()}, strict=True)
        if assistant.config.tie_word_embeddings:
            assistant.tie_weights()
        return cls(target, assistant, bundle.settings.weight, bundle.settings.filter, bundle.settings.min_keep)

    @classmethod
    def single(cls, model) -> ReferenceDecoder:
        """One plain HF model decoded by the same code (weight 0, no filter: its own log-softmax distribution)."""
        return cls(model, model, weight=0.0, filter=0.0)

    # ------------------------------------------------------------------------------------------------ forward

    def _logits(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> tuple[torch.Tensor, Any]:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits.float(), out.past_key_values

    def combine(self, target_logits: torch.Tensor, assistant_logits: torch.Tensor, mode: Mode) -> torch.Tensor:
        return combine(target_logits, assistant_logits, self.weight, self.filter, mode, min_keep=self.min_keep)

    def _step(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        caches: Caches,
        mode: Mode,
        rows: Rows,
    ) -> tuple[torch.Tensor, Caches]:
        """Both models' forward over (B, T) ids, each with its own cache, and ULD's logits (N, V) at `rows` (an index
        into (B, T)): the rows are picked before combining, so only the positions read are combined."""
        target_logits, target_cache = self._logits(self.target, ids, mask, positions, caches[0])
        assistant_logits, assistant_cache = self._logits(self.assistant, ids, mask, positions, caches[1])
        return self.combine(target_logits[rows], assistant_logits[rows], mode), (target_cache, assistant_cache)

    @torch.no_grad()
    def next_token_logits(self, prompts: list[list[int]], mode: Mode = "generate") -> torch.Tensor:
        """ULD logits (B, V) for the token after each prompt."""
        ids, mask = _left_pad(prompts, self._pad_id())
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, _ = self._step(ids, mask, positions, NO_CACHES, mode, LAST)
        return logits

    # --------------------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_tokens: int,
        sampling: SamplingConfig = SamplingConfig(),
        eos_token_id: int | None = None,
    ) -> list[list[int]]:
        """Token ids generated after each prompt (EOS included when hit), batched with left padding."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        generator = torch.Generator().manual_seed(sampling.seed) if sampling.seed is not None else None
        ids, mask = _left_pad(prompts, self._pad_id())
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        caches = NO_CACHES
        outputs: list[list[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool)
        for _ in range(max_tokens):
            logits, caches = self._step(ids, mask, positions, caches, "generate", LAST)  # (B, V)
            if sampling.temperature == 0.0:
                next_ids = logits.argmax(dim=-1)
            else:
                next_ids = torch.multinomial(sampling_probs(logits, sampling), 1, generator=generator).squeeze(-1)
            for row, token in enumerate(next_ids.tolist()):
                if not done[row]:
                    outputs[row].append(token)
                    done[row] = eos_token_id is not None and token == eos_token_id
            if done.all():
                break
            ids = next_ids.unsqueeze(-1)
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
        return outputs

    # ------------------------------------------------------------------------------------------------ scoring

    @torch.no_grad()
    def score(self, prompt: list[int], continuation: list[int]) -> torch.Tensor:
        """Teacher-forced ULD log-probs (scoring mode) of each continuation token given the prompt and earlier tokens."""
        if not prompt or not continuation:
            raise ValueError("score needs a non-empty prompt and continuation")
        ids = torch.tensor([prompt + continuation])
        mask = torch.ones_like(ids)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        start = len(prompt) - 1  # the logits at position t predict token t + 1
        logits, _ = self._step(ids, mask, positions, NO_CACHES, "score", (0, slice(start, start + len(continuation))))
        logprobs = torch.log_softmax(logits, dim=-1)
        return logprobs.gather(-1, torch.tensor(continuation).unsqueeze(-1)).squeeze(-1)

    @torch.no_grad()
    def score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`score` for many (prompt, continuation) pairs in one right-padded forward pass of each model; with each
        pair's log-probs, whether each token is the most likely one at its position (ties count as most likely)."""
        if any(not prompt or not continuation for prompt, continuation in pairs):
            raise ValueError("score needs a non-empty prompt and continuation")
        width = max(len(p) + len(c) for p, c in pairs)
        ids = torch.full((len(pairs), width), self._pad_id(), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, continuation) in enumerate(pairs):
            ids[row, : len(prompt) + len(continuation)] = torch.tensor(prompt + continuation)
            mask[row, : len(prompt) + len(continuation)] = 1
        positions = torch.arange(width).unsqueeze(0).expand_as(ids)
        rows = torch.cat([torch.full((len(c),), row) for row, (_, c) in enumerate(pairs)])
        cols = torch.cat([torch.arange(len(p) - 1, len(p) - 1 + len(c)) for p, c in pairs])
        logits, _ = self._step(ids, mask, positions, NO_CACHES, "score", (rows, cols))
        tokens = torch.tensor([t for _, c in pairs for t in c])
        all_logprobs = torch.log_softmax(logits, dim=-1)
        logprobs = all_logprobs.gather(-1, tokens.unsqueeze(-1))
        greedy = (all_logprobs > logprobs).sum(-1) == 0
        sizes = [len(c) for _, c in pairs]
        return list(zip(logprobs.squeeze(-1).split(sizes), greedy.split(sizes), strict=True))

    @torch.no_grad()
    def prompt_logprobs(self, prompt: list[int]) -> torch.Tensor:
        """ULD log-prob of every prompt token after the first, as vLLM's prompt_logprobs reports them."""
        return self.score(prompt[:1], prompt[1:])

    def _pad_id(self) -> int:
        pad = self.target.config.pad_token_id
        return 0 if pad is None else pad


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask
