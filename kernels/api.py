"""combine_and_sample: ULD's combined logits, sampled in one call, by the fused Triton kernel or by plain torch.

    tokens = combine_and_sample(target_logits, assistant_logits, weight=-0.8, filter=0.1, temperature=temps,
                                top_k=0, top_p=1.0, seeds=seeds, steps=steps)

Backends: "triton" (uld_kernels.combine_sample: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1 for tests),
"torch" (uld_kernels.reference: the fallback and the oracle), "auto" = Triton for CUDA tensors in generation mode
when triton imports, torch otherwise. Both draw the same counter-based noise (uld_kernels.rng), so for the same
inputs they return the same tokens, up to float32 rounding on near ties (see the module docstrings).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from uld_kernels.inputs import PerRow, SparseAssistant, check_logits, check_sparse_filter, row_params
from uld_kernels.reference import combine_and_sample_native
from uld_vllm.combine import Mode

Backend = Literal["auto", "triton", "torch"]


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read when kernels are defined)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: Backend, device: torch.device, mode: Mode) -> Literal["triton", "torch"]:
    """The backend that will run: ValueError if "triton" is asked where it cannot run."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "torch":
        return "torch"
    has_triton = importlib.util.find_spec("triton") is not None
    runnable = has_triton and (device.type == "cuda" or triton_interpreting())
    if backend == "auto":
        return "triton" if runnable and mode == "generate" and device.type == "cuda" else "torch"
    if mode != "generate":
        raise ValueError("the Triton kernel serves generation mode only; scoring runs on the torch backend")
    if not runnable:
        raise ValueError(f"the Triton backend needs CUDA tensors (or TRITON_INTERPRET=1), got {device.type} tensors")
    return "triton"


def combine_and_sample(
    target_logits: torch.Tensor,
    assistant_logits: torch.Tensor | SparseAssistant,
    *,
    weight: PerRow,
    filter: PerRow,
    temperature: PerRow,
    top_k: PerRow = 0,
    top_p: PerRow = 1.0,
    seeds: PerRow,
    steps: PerRow | None = None,
    mode: Mode = "generate",
    return_logprobs: bool = False,
    backend: Backend = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sample one token per row from ULD's combined logits (uld_vllm.combine.combine semantics).

    target_logits: (B, V) float32 / bfloat16 / float16. assistant_logits: (B, V), any of those dtypes, or a
    SparseAssistant (ids + logits of the tokens the filter keeps; needs filter > 0).
    Per-row parameters: a (B,) tensor or one Python number for every row.
      weight       w, the assistant's weight (negative to unlearn)
      filter       relative-top filter r in [0, 1); 0 = off (log_softmax difference)
      temperature  >= 0; 0 = greedy: exactly argmax of combine's output, first index on ties
      top_k        keep the k most likely tokens (ties at the k-th kept); <= 0 or >= V = off
      top_p        keep the most likely tokens whose mass reaches p (on the top-k survivors); 1 = off
      seeds/steps  integers; (seed, step) names the noise stream, so the same pair always draws the same token.
                   Pass the decode position as the step: steps=None is step 0 for every call, the same noise.
    mode: "generate" (filtered tokens at -1e3 and never sampled) or "score" (combine's scoring mode; torch only).
    Returns token ids (B,) int64; with return_logprobs also their float32 log-probs under
    log_softmax(combined logits): before temperature and truncation, like vLLM's default raw log-probs.
    """
    check_logits(target_logits, assistant_logits)
    batch, vocab = target_logits.shape
    rows = row_params(
        batch,
        vocab,
        target_logits.device,
        weight=weight,
        filter=filter,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seeds=seeds,
        steps=steps,
    )
    check_sparse_filter(assistant_logits, rows)
    if resolve_backend(backend, target_logits.device, mode) == "triton":
        from uld_kernels.combine_sample import combine_and_sample_triton  # triton imports only when it runs

        tokens, logprobs = combine_and_sample_triton(target_logits, assistant_logits, rows, return_logprobs)
    else:
        tokens, logprobs = combine_and_sample_native(target_logits, assistant_logits, rows, mode, return_logprobs)
    return (tokens, logprobs) if return_logprobs else tokens
