"""The ULD logit combination: the one place its math lives (reference decoder, vLLM engine, kernel fallback, training).

Semantics: docs/ULD_REFERENCE.md section 3 (paper arXiv 2406.08607, section 3; DoLa's "relative top" filter).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import torch

from uld_vllm.timed_choice import PathClock, size_class

Mode = Literal["generate", "score"]

# Logit given to tokens the target finds implausible in generation mode (the reference's value): low enough never to
# be sampled, finite so log_softmax and top-p stay NaN-free.
MASKED_LOGIT = -1e3


def relative_top_mask(target_logits: torch.Tensor, filter: float, min_keep: int | None = None) -> torch.Tensor:
    """True where a token is implausible under the target: log p < min(max log p + log r, k-th best log p).

    k is the minimum number of tokens kept: ULD's k = int(r * V) by default (the paper's semantics), or `min_keep`
    (DoLa's own floor is 1; a value between the two is the fluency variant of the gibberish issue). DoLa's code
    indexes `sorted[..., k - 1]`, which for k = 0 silently reads the *smallest* log-prob (Python's index -1) and keeps
    every token; we keep at least one token instead (k >= 1), which is DoLa's stated intent (`min_tokens_to_keep=1`)
    and changes nothing once r * V >= 1.
    """
    logprobs = torch.log_softmax(target_logits.float(), dim=-1)  # (N, V)
    vocab = logprobs.shape[-1]
    k = max(1, int(filter * vocab)) if min_keep is None else min(min_keep, vocab)
    kth_best, best = kth_largest_and_max(logprobs, k)  # (N, 1) each
    threshold = torch.minimum(best + math.log(filter), kth_best)
    return logprobs < threshold


_SELECT_THREADS: dict[int, ThreadPoolExecutor] = {}  # by thread count: made once, reused every step
_SELECT_CLOCKS: dict[tuple[int, int, int], PathClock] = {}  # by (size_class of the rows, V, k)


def kth_largest_and_max(values: torch.Tensor, k: int, path: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of (N, V): the k-th largest value (duplicates counted, as topk) and the largest, (N, 1) each.

    Two exact methods:
    - torch.topk(sorted=False): one pass per row in torch's own threads, the k best left unordered;
    - numpy's introselect (np.partition) over row blocks in Python threads (it releases the GIL).
    Neither is the faster one on every machine (numpy's threads share the cores with torch's, still spinning after
    log_softmax; bench/results/README.md), so on CPU each call size takes whichever measured faster in place
    (`PathClock`; `path` forces one: 0 torch.topk, 1 numpy). The mask is paid on every ULD step with the filter on,
    whichever assistant head runs.
    """
    numpy_fits = values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and values.dim() == 2
    if not numpy_fits or values.shape[0] == 0:
        return _kth_by_topk(values, k)
    clock = None
    if path is None:
        clock = _SELECT_CLOCKS.setdefault((size_class(values.shape[0]), values.shape[1], k), PathClock())
        path = clock.next_path()
    started = time.perf_counter()
    kth, best = _kth_by_numpy(values, k) if path == 1 else _kth_by_topk(values, k)
    if clock is not None:
        clock.record(path, time.perf_counter() - started)
    return kth, best


def _kth_by_topk(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = torch.topk(values, k, dim=-1, sorted=False).values  # the k best per row, unordered
    return top.amin(dim=-1, keepdim=True), top.amax(dim=-1, keepdim=True)


def _kth_by_numpy(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, vocab = values.shape
    array = values.contiguous().numpy()
    kth, best = torch.empty(rows, 1, dtype=values.dtype), torch.empty(rows, 1, dtype=values.dtype)
    kth_out, best_out = kth.numpy(), best.numpy()

    def select(block: tuple[int, int]) -> None:
        start, end = block
        top = np.partition(array[start:end], vocab - k, axis=1)[:, vocab - k :]  # (n, k): the k best, k-th first
        kth_out[start:end, 0] = top[:, 0]
        best_out[start:end, 0] = top.max(axis=1)

    parts = min(torch.get_num_threads(), rows)
    blocks = [(i * rows // parts, (i + 1) * rows // parts) for i in range(parts)]
    if parts == 1:
        select(blocks[0])
    else:
        if parts not in _SELECT_THREADS:
            _SELECT_THREADS[parts] = ThreadPoolExecutor(parts, thread_name_prefix="uld-select")
        list(_SELECT_THREADS[parts].map(select, blocks))
    return kth, best


def combine(
    target_logits: torch.Tensor,
    assistant_logits: torch.Tensor,
    weight: float,
    filter: float,
    mode: Mode = "generate",
    implausible: torch.Tensor | None = None,
    columns: torch.Tensor | None = None,
    min_keep: int | None = None,
) -> torch.Tensor:
    """ULD logits l_target + w * l_assistant for rows of (N, V) logits; returns float32 (N, V).

    filter > 0: relative-top filter on the target; the assistant is ignored (a' = 0) on implausible tokens, and in
    generation mode those tokens get MASKED_LOGIT so they are never sampled. Scoring mode (teacher-forced log-probs
    for metrics) leaves them unmasked. filter == 0: both sides are log_softmax-ed first; the modes agree.

    `implausible` is `relative_top_mask(target_logits, filter)` when the caller computed it already (the engine's
    sparse assistant head needs it first); the assistant's logits then only matter where it is False. `columns`
    (filter > 0 only): the assistant's logits are given on these token ids alone, (N, U), and every token a row keeps
    is among them (the sparse head's union); the output is the dense one's, bit for bit, without an (N, V) assistant.
    `min_keep`: the filter's floor of kept tokens (`relative_top_mask`; None: the paper's int(r * V)).
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
    implausible = relative_top_mask(target, filter, min_keep) if implausible is None else implausible
    # target + w * a' with a' = 0 where implausible, in place on tensors float() copied (at (N, V) every pass counts).
    scoring = mode == "score"
    if scoring:  # generation overwrites the implausible tokens last, so a' = 0 is only written here
        assistant = assistant.masked_fill(implausible if columns is None else implausible[:, columns], 0.0)
    delta = assistant.mul_(weight) if assistant is not assistant_logits else assistant * weight
    if columns is None:
        out = target.add_(delta) if target is not target_logits else target + delta
    else:
        out = target if target is not target_logits else target.clone()
        out.index_add_(1, columns, delta)
    if not scoring:
        out.masked_fill_(implausible, MASKED_LOGIT)
    return out
