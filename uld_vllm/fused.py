"""ULD's sampling through the fused kernel (`uld_kernels.combine_and_sample`) inside the vLLM engine.

The hook. vLLM 0.32's V1 runner (`GPUModelRunner`, which the CPU runner subclasses) turns the model's logits into
tokens in one method, `_sample(logits, spec_decode_metadata)`, right after `compute_logits`. The plugin wraps it
(`uld_vllm.plugin.install_fused_sampling`): when the model is a ULD model with fused sampling on and the step
qualifies (`why_not_fused`), the wrapper samples from the raw target and assistant logits that `compute_logits` left
on the model (`RawLogits`) and returns vLLM's own `SamplerOutput`; otherwise vLLM's sampler runs on the combined
logits as before. A patch of the sampler class would have to guess which model's logits it sees; `_sample` knows
its runner, and so its model.

What qualifies: generation (not prompt log-probs, which keep the scoring-mode torch path), no speculative decoding,
and per request only temperature (0 = greedy), top-k, top-p and a seed: no penalties, no min-p, logit bias, minimum
tokens, bad words or allowed-token lists, no log-probs requested, no custom logits processors. Anything else takes
vLLM's sampler on the combined logits, which supports all of it.

Seeds: a request with a seed samples with (seed, its number of output tokens so far) as the kernel's counter, so a
seeded request draws the same tokens whatever its batch, chunking or preemption; unseeded requests draw a fresh
random seed per step. The draws differ from vLLM's sampler's (another RNG) but follow the same distribution.

Limits: `compute_logits` still materialises the combined logits (vLLM's runner needs a logits tensor before
`_sample`, and the fallback needs exactly those), so on CUDA the kernel saves the sampler's passes (temperature,
top-k/top-p sorting, softmax, the exponential race), not the combination's. Where it is on: `uld_fused_sampling`
("auto": CUDA only; "torch": also on CPU through the kernel's torch twin, which is how CPU tests prove the plumbing;
"off").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

FusedSetting = Literal["auto", "torch", "triton", "off"]
BUILTIN_PROCESSOR_STATE = {  # vLLM's built-in logits processors and the attribute that holds their requests
    "MinPLogitsProcessor": "min_p_count",
    "LogitBiasLogitsProcessor": "biases",
    "MinTokensLogitsProcessor": "min_toks",
}


@dataclass
class RawLogits:
    """What compute_logits saw last in generation mode: the kernel's inputs for this step's rows."""

    target: torch.Tensor  # (N, V)
    assistant: torch.Tensor  # (N, V); with the filter on, only the kept tokens' values matter
    weight: float
    filter: float


def fused_backend(setting: FusedSetting, device: torch.device) -> Literal["torch", "triton"] | None:
    """The kernel backend fused sampling uses on this device, or None when it is off."""
    if setting not in ("auto", "torch", "triton", "off"):
        raise ValueError(f"uld_fused_sampling must be auto, torch, triton or off, got {setting!r}")
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    return "torch" if setting == "torch" else "triton"


def why_not_fused(metadata, raw: RawLogits | None, rows: int) -> str | None:
    """Why this step must take vLLM's sampler (None: the fused path applies)."""
    if raw is None or raw.target.shape[0] != rows:
        return "no raw logits for these rows"
    if metadata.max_num_logprobs is not None or metadata.logprob_token_ids:
        return "log-probs requested"
    if not metadata.no_penalties:
        return "penalties"
    if metadata.allowed_token_ids_mask is not None or metadata.bad_words_token_ids:
        return "allowed or bad token lists"
    if metadata.spec_token_ids and any(metadata.spec_token_ids):
        return "speculative decoding"
    for processor in metadata.logitsprocs.all:
        state = BUILTIN_PROCESSOR_STATE.get(type(processor).__name__)
        if state is None:
            return f"logits processor {type(processor).__name__}"
        if getattr(processor, state):
            return f"{type(processor).__name__} in use"
    return None


def fused_sample(model, input_batch, backend: Literal["torch", "triton"]):
    """vLLM's SamplerOutput for this step from the fused kernel, or None when the step does not qualify."""
    from vllm.v1.outputs import SamplerOutput

    from uld_kernels import combine_and_sample

    raw: RawLogits | None = getattr(model, "raw_logits", None)
    model.raw_logits = None  # used once
    metadata = input_batch.sampling_metadata
    rows = input_batch.num_reqs
    if why_not_fused(metadata, raw, rows) is not None:
        return None
    device = raw.target.device
    temperature = (
        torch.zeros(rows, device=device) if metadata.temperature is None else metadata.temperature[:rows].float()
    )
    top_k = 0 if metadata.top_k is None else metadata.top_k[:rows]
    top_p = 1.0 if metadata.top_p is None else metadata.top_p[:rows]
    seeds = torch.randint(0, 2**31 - 1, (rows,), dtype=torch.int64)  # unseeded rows: fresh noise each step
    steps = torch.zeros(rows, dtype=torch.int64)
    produced = input_batch.num_tokens_no_spec[:rows] - input_batch.num_prompt_tokens[:rows]
    for index, generator in metadata.generators.items():
        if index < rows:
            seeds[index] = generator.initial_seed() % (2**31 - 1)
            steps[index] = int(produced[index])
    tokens = combine_and_sample(
        raw.target,
        raw.assistant,
        weight=raw.weight,
        filter=raw.filter,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seeds=seeds.to(device),
        steps=steps.to(device),
        backend=backend,
    )
    model.fused_steps = getattr(model, "fused_steps", 0) + 1
    return SamplerOutput(sampled_token_ids=tokens.to(torch.int32).unsqueeze(1), logprobs_tensors=None)
