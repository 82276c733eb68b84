"""The ULD logit combination: the one place its math lives (reference decoder, vLLM engine, kernel fallback, training).

Semantics: ../shared/ULD_REFERENCE.md section 3 (paper arXiv 2406.08607, section 3; DoLa's "relative top" filter).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Mode = Literal["generate", "score"]

# Logit given to tokens the target finds implausible in generation mode (the reference's value): low enough never to
# be sampled, finite so log_softmax and top-p stay NaN-free.
MASKED_LOGIT = -1e3


def relative_top_mask(target_logits: torch.Tensor, filter: float) -> torch.Tensor:
    """True where a token is implausible under the target: log p < min(max log p + log r, k-th best log p).

    k = int(r * V) is the minimum number of tokens kept. DoLa's code indexes `sorted[..., k - 1]`, which for k = 0
    silently reads the *smallest* log-prob (Python's index -1) and keeps every token; we keep at least one token
    instead (k >= 1), which is DoLa's stated intent (`min_tokens_to_keep=1`) and changes nothing once r * V >= 1.
    """
    logprobs = torch.log_softmax(target_logits.float(), dim=-1)  # (N, V)
    vocab = logprobs.shape[-1]
    k = max(1, int(filter * vocab))
    kth_best = torch.topk(logprobs, k, dim=-1).values[..., -1:]  # (N, 1)
    relative = logprobs.max(dim=-1, keepdim=True).values + math.log(filter)  # (N, 1)
    threshold = torch.minimum(relative, kth_best)
    return logprobs < threshold


def combine(
    target_logits: torch.Tensor,
    assistant_logits: torch.Tensor,
    weight: float,
    filter: float,
    mode: Mode = "generate",
    implausible: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """ULD logits l_target + w * l_assistant for rows of (N, V) logits; returns float32 (N, V).

    filter > 0: relative-top filter on the target; the assistant is ignored (a' = 0) on implausible tokens, and in
    generation mode those tokens get MASKED_LOGIT so they are never sampled. Scoring mode (teacher-forced log-probs
    for metrics) leaves them unmasked. filter == 0: both sides are log_softmax-ed first; the modes agree.

    `implausible` is `relative_top_mask(target_logits, filter)` when the caller computed it already (the engine's
    sparse assistant head needs it first); the assistant's logits then only matter where it is False. `columns`
    (filter > 0 only): the assistant's logits are given on these token ids alone, (N, U), and every token a row keeps
    is among them (the sparse head's union); the output is the dense one's, bit for bit, without an (N, V) assistant.
    """
    expected = target_logits.shape if columns is None else (target_logits.shape[0], columns.numel())
    if assistant_logits.shape != expected:
        raise ValueError(f"assistant logits {tuple(assistant_logits.shape)} != {tuple(expected)} (target, columns)")
    if columns is not None and filter == 0.0:
        raise ValueError("assistant logits on some columns need filter > 0 (log_softmax reads every column)")
    if not 0.0 <= filter < 1.0:
        raise ValueError(f"filter must be in [0, 1), got {filter}")
    if mode not in ("generate", "score"):
        raise ValueError(f"mode must be 'generate' or 'score', got {mode!r}")
    target = target_logits.float()
    assistant = assistant_logits.float()
    if filter == 0.0:
        target_logprobs = torch.log_softmax(target, dim=-1)
        out = target_logprobs + weight * torch.log_softmax(assistant, dim=-1)
        # A token the target rules out stays ruled out, also where the assistant rules it out too (-inf + inf = NaN).
        return out.masked_fill(target_logprobs == float("-inf"), float("-inf"))
    implausible = relative_top_mask(target, filter) if implausible is None else implausible
    # target + w * a' with a' = 0 where implausible; in place where the tensor is ours (at (N, V) every pass counts).
    if columns is None:
        out = target + assistant.masked_fill(implausible, 0.0).mul_(weight)
    else:
        out = target_logits.to(torch.float32, copy=True)
        out.index_add_(1, columns, assistant.masked_fill(implausible[:, columns], 0.0).mul_(weight))
    if mode == "generate":
        out.masked_fill_(implausible, MASKED_LOGIT)
    return out
