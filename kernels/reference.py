"""combine_and_sample in plain torch: the CPU fallback, the scoring-mode path and the oracle the kernel is tested by.

The combination is `uld_vllm.combine.combine` itself (one copy of the math), called once per distinct (weight,
filter) pair. Sampling follows vLLM's sampler order on the combined logits:
    greedy rows (T == 0): argmax of the combined logits (first index on ties, as torch.argmax)
    other rows: logits / T -> top-k -> top-p (on the top-k survivors) -> Gumbel-max with rng.gumbel_noise
Generation mode with a filter never samples a masked token, at any temperature: MASKED_LOGIT (-1e3) underflows in
softmax only up to T ~ 7, so those tokens are removed explicitly. Returned log-probs are log_softmax of the combined
logits (before temperature and truncation: vLLM's default "raw_logprobs" of what the model returned).
Every step reads or writes whole (B, V) rows: the memory-traffic comments count those passes, the kernel's baseline.
"""

from __future__ import annotations

import torch

from uld_kernels.inputs import RowParams, SparseAssistant
from uld_kernels.rng import gumbel_noise
from uld_vllm.combine import MASKED_LOGIT, Mode, combine, relative_top_mask


def combined_logits(
    target: torch.Tensor, assistant: torch.Tensor | SparseAssistant, rows: RowParams, mode: Mode
) -> torch.Tensor:
    """(B, V) float32 `combine` output, row groups sharing (weight, filter) at a time; sparse heads made dense."""
    vocab = target.shape[1]
    if isinstance(assistant, SparseAssistant):
        dense = assistant.dense(vocab)  # write BV: a' = 0 off the given ids, which the filter must mask
        covered = assistant.covered(vocab)
    else:
        dense, covered = assistant, None
    out = torch.empty(target.shape, dtype=torch.float32, device=target.device)
    for weight, filter, index in rows.groups():
        implausible = None
        if covered is not None:  # sparse: filter > 0 on every row (checked by the caller)
            implausible = relative_top_mask(target[index], filter)  # read BV (and a top-k); combine reuses it
            missing = ~implausible & ~covered[index]
            if bool(missing.any()):
                row = int(index[missing.any(dim=-1)][0])
                raise ValueError(
                    f"SparseAssistant misses {int(missing.sum())} token(s) the filter keeps (first in row {row}): "
                    "its ids must cover every kept token"
                )
        out[index] = combine(target[index], dense[index], weight, filter, mode, implausible)  # read 2BV, passes
    return out


def truncate_top_k(scaled: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the tokens at or above each row's k-th largest value (ties kept, like vLLM); top_k 0 = off."""
    on = top_k > 0
    if not bool(on.any()):
        return scaled
    ordered = scaled.sort(dim=-1, descending=True).values  # read BV, write BV (a full sort: the kernel's saving)
    kth = ordered.gather(-1, (top_k.clamp(min=1).long() - 1).unsqueeze(-1))  # (S, 1)
    return scaled.masked_fill(on.unsqueeze(-1) & (scaled < kth), float("-inf"))


def truncate_top_p(scaled: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p, ties at its edge kept; 1 = off.

    Token i stays iff the mass of tokens strictly more likely than i is < top_p: vLLM's rule (ascending cumsum
    <= 1 - p is removed), stated so that ties do not depend on the sort's order.
    """
    on = top_p < 1
    if not bool(on.any()):
        return scaled
    ordered = scaled.sort(dim=-1, descending=True).values  # read BV, write BV
    mass = torch.softmax(ordered, dim=-1).cumsum(dim=-1)  # read/write BV twice
    first = (mass < top_p.unsqueeze(-1)).sum(dim=-1).clamp(max=scaled.shape[-1] - 1)  # first index reaching p
    threshold = ordered.gather(-1, first.unsqueeze(-1))  # (S, 1)
    return scaled.masked_fill(on.unsqueeze(-1) & (scaled < threshold), float("-inf"))


def combine_and_sample_native(
    target: torch.Tensor,
    assistant: torch.Tensor | SparseAssistant,
    rows: RowParams,
    mode: Mode,
    return_logprobs: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids (B,) int64 and, if asked, their float32 log-probs (B,) under log_softmax(combined logits)."""
    logits = combined_logits(target, assistant, rows, mode)  # (B, V) float32
    tokens = logits.argmax(dim=-1)  # read BV: the greedy rows' answer
    sampled = (rows.inv_temperature > 0).nonzero().squeeze(-1)
    if sampled.numel():
        scaled = logits[sampled] * rows.inv_temperature[sampled].unsqueeze(-1)  # read BV, write BV
        if mode == "generate":
            masked = (logits[sampled] == MASKED_LOGIT) & (rows.filter[sampled] > 0).unsqueeze(-1)
            scaled = scaled.masked_fill(masked, float("-inf"))
        scaled = truncate_top_k(scaled, rows.top_k[sampled])
        scaled = truncate_top_p(scaled, rows.top_p[sampled])
        token_ids = torch.arange(target.shape[1], device=target.device)
        noise = gumbel_noise(rows.keys[sampled], token_ids)  # write BV (about 20 integer passes on the CPU)
        tokens[sampled] = (scaled + noise).argmax(dim=-1)  # read 2BV
    if not return_logprobs:
        return tokens, None
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # read BV, write BV
    return tokens, logprobs
