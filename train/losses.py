"""Loss terms of ULD and its baselines: pure functions of logits, labels and masks, the one place their math lives.

Conventions (HF causal LMs): logits (B, T, V) at position t predict token t + 1, so every function drops the last
logit row and the first label; labels are -100 where no loss is taken (question tokens, padding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# NPO's inverse temperature: 0.1 in the NPO paper (Zhang et al. 2024), TOFU runs and open-unlearning.
NPO_BETA = 0.1


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the True entries only; padding never dilutes the average."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def _next_token_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T-1): True where position t predicts a real token t + 1 (right padding: the last real token predicts pad)."""
    return attention_mask[:, 1:].bool()


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy, mean over every labelled (answer) token of the batch: standard SFT loss."""
    shifted = logits[:, :-1].float()  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1)
    return F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def gradient_ascent(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """GA: minimise the negated NLL, i.e. push the forget answers' likelihood down without bound."""
    return -answer_nll(logits, labels)


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) sum of the log-probs of each example's labelled tokens: NPO's sequence likelihood."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return (picked * mask).sum(dim=-1)


def uniform_kl(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(U || p) per position = mean_v(-log p_v) - log V, averaged over positions that predict a real token.

    ULD's "ignorance" term on the retain set (ULD_REFERENCE.md section 2, reference `remember+uniform`). It is 0 for a
    flat next-token distribution. The reference averaged over padding positions too and used softmax().log();
    we mask padding and use log_softmax (same value, no -inf in low precision).
    """
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    per_position = -logprobs.mean(dim=-1) - math.log(logprobs.shape[-1])  # (B, T-1)
    return _masked_mean(per_position, _next_token_mask(attention_mask))


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p) per position, averaged over positions that predict a real token: GA+KL's retain anchor."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    reference = torch.log_softmax(reference_logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    per_position = (reference.exp() * (reference - logprobs)).sum(dim=-1)  # (B, T-1)
    return _masked_mean(per_position, _next_token_mask(attention_mask))


def npo(logprob: torch.Tensor, reference_logprob: torch.Tensor, beta: float = NPO_BETA) -> torch.Tensor:
    """NPO: mean over the batch of -2/beta * log sigmoid(-beta * (log p - log p_ref)) on sequence log-probs.

    DPO with the forget answer as the loser and no winner (Zhang et al. 2024, eq. 3): bounded below by 0 as log p
    falls, unlike GA, and 2/beta * log 2 when the model still equals the reference.
    """
    return (-2.0 / beta * F.logsigmoid(-beta * (logprob - reference_logprob))).mean()
