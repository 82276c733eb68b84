"""Fused ULD combine + sample in Triton: one program per row streams the vocabulary in BLOCK chunks, never sorts.

Why: the unfused chain (combine -> temperature -> top-k -> top-p -> sample, reference.py) reads and writes whole
(B, V) float32 rows a dozen times and sorts them twice; at decode time that is pure memory traffic. Here each pass
only *reads* the input logits (in their own dtype) and keeps per-row scalars; nothing (B, V) is ever written.

Two kernels, one program per row each:
  _row_stats_kernel   target max and log-sum-exp (one pass); with a filter, the k-th largest target log-prob
                      by radix select (8-bit digits: 4 counting passes, tl.histogram); the threshold
                      thr = min(max lp + log r, k-th lp); without a filter, the assistant's log-sum-exp instead.
  _sample_kernel      recomputes the combined logit of every token on the fly from (b, a, row stats):
                      pass 1: greedy argmax (first index on ties), the combined log-sum-exp (log-probs), the
                      live maximum and count; then, for sampled rows only: top-k threshold (radix select on the
                      temperature-scaled logits), top-p threshold (a mass-weighted radix select, 4-bit digits:
                      8 passes), and the Gumbel-max race with the counter-based noise of rng.py.
A radix select finds the exact k-th largest float: map floats to uint32 keys that sort like the floats, then fix
the key digit by digit, each pass counting (or weighing) the keys that share the digits fixed so far.

Sparse assistant heads: the sample kernel walks the given ids instead of the vocabulary (the tokens the filter
masks are all MASKED_LOGIT, so they enter the argmax and the log-sum-exp as one count and one first index, from
an extra target pass of _row_stats_kernel), and reports kept tokens missing from the ids.

The torch twin of everything is reference.py; the noise is rng.py's, bit for bit (`_token_bits`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from uld_kernels.inputs import LOGIT_DTYPES, RowParams, SparseAssistant
from uld_vllm.combine import MASKED_LOGIT

_MASKED = tl.constexpr(MASKED_LOGIT)  # combine's logit for filtered tokens in generation (-1e3)
STATS = 5  # per-row float32 stats written by _row_stats_kernel: target max, target log-sum-exp, same for the
# assistant (rows without a filter), filter threshold on target log-probs (-inf: no filter)
_STATS = tl.constexpr(STATS)  # the same, as the kernels read it
COUNT_DIGIT_BITS = 8  # counting radix selects: 256-bin tl.histogram, 4 passes over the row
MASS_DIGIT_BITS = 4  # mass-weighted select (top-p): a (BLOCK, 16) one-hot sum per chunk, 8 passes
BLOCK = 1024  # tokens per chunk
# Warps per program. ptxas for sm_90 (BLOCK 1024, bf16): the stats kernel needs 39 registers a thread, the sample
# kernel 190 at 8 warps (one 8-warp program per SM) but 109 at 16 (one 16-warp program per SM, no spills): 16 keeps
# twice the loads in flight. Untuned on hardware: bench/kernel.py is where to tune them.
STATS_WARPS = 8
SAMPLE_WARPS = 16


# ---------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _fmix32(x):
    """MurmurHash3's finalizer on uint32 (rng.fmix32's twin; uint32 multiplication wraps mod 2**32)."""
    x = x ^ (x >> 16)
    x = x * 0x85EBCA6B
    x = x ^ (x >> 13)
    x = x * 0xC2B2AE35
    return x ^ (x >> 16)


@triton.jit
def _token_bits(ids, key0, key1):
    """rng.token_bits: fmix32(fmix32(id ^ key0) ^ key1), uint32."""
    return _fmix32(_fmix32(ids.to(tl.uint32) ^ key0) ^ key1)


@triton.jit
def _gumbel(ids, key0, key1):
    """rng.gumbel_noise: w = min((bits + 0.5) * 2**-32, 1 - 2**-24), E = -log1p(-w) (Kahan), -log(E)."""
    w = tl.minimum((_token_bits(ids, key0, key1).to(tl.float32) + 0.5) * 2.3283064365386963e-10, 0.9999999403953552)
    y = 1.0 - w
    e = tl.where(y == 1.0, w, -tl.log(y) * w / tl.where(y == 1.0, 1.0, 1.0 - y))
    return -tl.log(e)


@triton.jit
def _sortable_key(x):
    """float32 -> uint32 whose unsigned order is the floats' order (negatives: flip all bits; else set the sign)."""
    bits = x.to(tl.uint32, bitcast=True)
    return tl.where((bits >> 31) != 0, ~bits, bits | 0x80000000)


@triton.jit
def _key_to_float(key):
    bits = tl.where((key >> 31) != 0, key & 0x7FFFFFFF, ~key)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _digit_histogram(digit, weight, member, NBINS: tl.constexpr, WEIGHTED: tl.constexpr):
    """(NBINS,) float32: how many members (WEIGHTED: how much weight) have each digit value."""
    if WEIGHTED:
        onehot = (digit[:, None] == tl.arange(0, NBINS)[None, :]) & member[:, None]  # (BLOCK, NBINS)
        return tl.sum(tl.where(onehot, weight[:, None], 0.0), axis=0)
    else:
        return tl.histogram(digit.to(tl.int32), NBINS, mask=member).to(tl.float32)


@triton.jit
def _pick_digit(hist, need, NBINS: tl.constexpr):
    """Largest digit d with weight(digit >= d) >= need, and weight(digit > d): the k-th largest lies in bucket d."""
    at_or_above = tl.cumsum(hist, axis=0, reverse=True)  # non-increasing in the digit
    digit = tl.maximum(tl.sum((at_or_above >= need).to(tl.int32), axis=0) - 1, 0)  # 0 if rounding left need unmet
    above = tl.sum(tl.where(tl.arange(0, NBINS) == digit + 1, at_or_above, 0.0), axis=0)
    return digit, above


@triton.jit
def _lse_update(m_acc, s_acc, x):
    """One online log-sum-exp step per lane: rescale the lane's sum to its new max. Lanes that have seen only -inf
    take 0 as reference (no -inf - -inf), so their sum stays exactly 0."""
    m_new = tl.maximum(m_acc, x)
    ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, s_acc * tl.exp(m_acc - ref) + tl.exp(x - ref)


@triton.jit
def _lse_finish(m_acc, s_acc):
    """(max, sum(exp(x - max))) of the row from the per-lane online state."""
    m = tl.max(m_acc, axis=0)
    ref = tl.where(m == float("-inf"), 0.0, m)
    return m, tl.sum(s_acc * tl.exp(m_acc - ref), axis=0)


@triton.jit
def _logsumexp(row_ptr, stride, V, BLOCK: tl.constexpr):
    """Row max and log(sum(exp(x - max))) in one pass (torch.log_softmax takes two: max, then the sum)."""
    m_acc = tl.full((BLOCK,), float("-inf"), tl.float32)
    s_acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs * stride, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_acc, s_acc = _lse_update(m_acc, s_acc, x)
    m, total = _lse_finish(m_acc, s_acc)
    return m, tl.log(total)


# ---------------------------------------------------------------------------------------------------------------
# Kernel 1: per-row statistics of the target (and of a dense assistant row without a filter)
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _row_stats_kernel(
    target_ptr,
    assistant_ptr,
    filter_k_ptr,
    log_filter_ptr,
    stats_ptr,
    kept_ptr,
    stride_tb,
    stride_tv,
    stride_ab,
    stride_av,
    V,
    DENSE_ASSISTANT: tl.constexpr,
    COUNT_KEPT: tl.constexpr,
    BLOCK: tl.constexpr,
    DIGIT_BITS: tl.constexpr,
):
    NBINS: tl.constexpr = 1 << DIGIT_BITS
    row = tl.program_id(0).to(tl.int64)
    target_row = target_ptr + row * stride_tb
    m_b, lz_b = _logsumexp(target_row, stride_tv, V, BLOCK)  # read V
    filter_k = tl.load(filter_k_ptr + row)
    thr = tl.full((), float("-inf"), tl.float32)
    m_a = tl.full((), 0.0, tl.float32)
    lz_a = tl.full((), 0.0, tl.float32)
    if filter_k > 0:
        # k-th largest target log-prob lp = (b - max) - lse, computed as torch.log_softmax does. Read 4V.
        need = filter_k.to(tl.float32)
        prefix = tl.full((), 0, tl.uint32)
        fixed = tl.full((), 0, tl.uint32)
        for p in tl.static_range(32 // DIGIT_BITS):
            shift = 32 - DIGIT_BITS * (p + 1)
            hist = tl.zeros((NBINS,), tl.float32)
            for start in range(0, V, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                in_row = offs < V
                b = tl.load(target_row + offs * stride_tv, mask=in_row, other=float("-inf")).to(tl.float32)
                key = _sortable_key((b - m_b) - lz_b)
                member = in_row & ((key & fixed) == prefix)
                hist += _digit_histogram((key >> shift) & (NBINS - 1), 1.0, member, NBINS, False)
            digit, above = _pick_digit(hist, need, NBINS)
            need = need - above
            prefix = prefix | (digit.to(tl.uint32) << shift)
            fixed = fixed | ((NBINS - 1) << shift)
        kth = _key_to_float(prefix)
        # combine: threshold = min(max lp + log r, k-th lp); max lp = 0 - lse exactly as log_softmax rounds it.
        thr = tl.minimum((0.0 - lz_b) + tl.load(log_filter_ptr + row), kth)
    else:
        if DENSE_ASSISTANT:
            m_a, lz_a = _logsumexp(assistant_ptr + row * stride_ab, stride_av, V, BLOCK)  # read V
    out = stats_ptr + row * _STATS
    tl.store(out + 0, m_b)
    tl.store(out + 1, lz_b)
    tl.store(out + 2, m_a)
    tl.store(out + 3, lz_a)
    tl.store(out + 4, thr)
    if COUNT_KEPT:
        # For a sparse assistant: how many tokens the filter keeps, and the first one it masks. Read V.
        n_kept = tl.full((), 0, tl.int32)
        first_masked = tl.full((), 0, tl.int32) + V
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            in_row = offs < V
            b = tl.load(target_row + offs * stride_tv, mask=in_row, other=float("-inf")).to(tl.float32)
            masked = ((b - m_b) - lz_b) < thr
            n_kept += tl.sum((in_row & ~masked).to(tl.int32), axis=0)
            first_masked = tl.minimum(first_masked, tl.min(tl.where(in_row & masked, offs, V), axis=0))
        tl.store(kept_ptr + row * 2, n_kept.to(tl.int64))
        tl.store(kept_ptr + row * 2 + 1, first_masked.to(tl.int64))


# ---------------------------------------------------------------------------------------------------------------
# Kernel 2: combine on the fly, then greedy or top-k / top-p / Gumbel-max sampling
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _combined_chunk(
    target_row,
    assistant_row,
    ids_row,
    j,
    N,
    V,
    stride_tv,
    stride_av,
    stride_iv,
    weight,
    has_filter,
    thr,
    m_b,
    lz_b,
    m_a,
    lz_a,
    SPARSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Token ids, combined logits, presence and liveness of the chunk j (BLOCK,) of a row's domain.

    Dense: the domain is the vocabulary, every token present. Sparse: the given ids; only kept ones are present
    (masked tokens are counted separately). Live = present and not masked by the filter, i.e. samplable.
    The arithmetic is combine's, operation for operation: filter: b + w * a, MASKED_LOGIT where lp < thr;
    no filter: lp_b + w * lp_a, -inf where lp_b is -inf.
    """
    in_domain = j < N
    if SPARSE:
        ids = tl.load(ids_row + j * stride_iv, mask=in_domain, other=-1)
        valid = in_domain & (ids >= 0) & (ids < V)
    else:
        ids = j.to(tl.int64)
        valid = in_domain
    b = tl.load(target_row + ids * stride_tv, mask=valid, other=float("-inf")).to(tl.float32)
    lp_b = (b - m_b) - lz_b
    if has_filter:
        masked = lp_b < thr
        # a' = 0 where masked: those assistant logits are never read (most of the row, with a tight filter)
        a = tl.load(assistant_row + j * stride_av, mask=valid & ~masked, other=0.0).to(tl.float32)
        c = tl.where(masked, _MASKED, b + weight * a)
    else:
        masked = tl.zeros((BLOCK,), tl.int1)
        a = tl.load(assistant_row + j * stride_av, mask=valid, other=0.0).to(tl.float32)
        c = tl.where(lp_b == float("-inf"), float("-inf"), lp_b + weight * ((a - m_a) - lz_a))
    live = valid & ~masked
    if SPARSE:
        present = live
    else:
        present = valid
    return ids, c, present, live


@triton.jit
def _select_scaled(
    target_row,
    assistant_row,
    ids_row,
    N,
    V,
    stride_tv,
    stride_av,
    stride_iv,
    weight,
    has_filter,
    thr,
    m_b,
    lz_b,
    m_a,
    lz_a,
    inv_t,
    m_s,
    need,
    floor,
    SPARSE: tl.constexpr,
    WEIGHTED: tl.constexpr,
    DIGIT_BITS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Largest scaled logit t among live tokens with s >= floor such that count (WEIGHTED: sum of exp(s - m_s))
    of those with s >= t reaches `need`: the top-k (count k) or top-p (mass p * Z) threshold. 32/DIGIT_BITS passes."""
    NBINS: tl.constexpr = 1 << DIGIT_BITS
    prefix = tl.full((), 0, tl.uint32)
    fixed = tl.full((), 0, tl.uint32)
    for p in tl.static_range(32 // DIGIT_BITS):
        shift = 32 - DIGIT_BITS * (p + 1)
        hist = tl.zeros((NBINS,), tl.float32)
        for start in range(0, N, BLOCK):
            j = start + tl.arange(0, BLOCK)
            ids, c, present, live = _combined_chunk(
                target_row, assistant_row, ids_row, j, N, V, stride_tv, stride_av, stride_iv,
                weight, has_filter, thr, m_b, lz_b, m_a, lz_a, SPARSE, BLOCK,
            )  # fmt: skip
            s = c * inv_t
            key = _sortable_key(s)
            member = live & (s >= floor) & ((key & fixed) == prefix)
            w = tl.exp(s - m_s) if WEIGHTED else s
            hist += _digit_histogram((key >> shift) & (NBINS - 1), w, member, NBINS, WEIGHTED)
        digit, above = _pick_digit(hist, need, NBINS)
        need = need - above
        prefix = prefix | (digit.to(tl.uint32) << shift)
        fixed = fixed | ((NBINS - 1) << shift)
    return _key_to_float(prefix)


@triton.jit
def _sample_kernel(
    target_ptr,
    assistant_ptr,
    ids_ptr,
    stats_ptr,
    kept_ptr,
    filter_k_ptr,
    weight_ptr,
    inv_t_ptr,
    top_k_ptr,
    top_p_ptr,
    keys_ptr,
    tokens_ptr,
    logprobs_ptr,
    missing_ptr,
    stride_tb,
    stride_tv,
    stride_ab,
    stride_av,
    stride_ib,
    stride_iv,
    N,
    V,
    SPARSE: tl.constexpr,
    RETURN_LOGPROBS: tl.constexpr,
    BLOCK: tl.constexpr,
    COUNT_BITS: tl.constexpr,
    MASS_BITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target_row = target_ptr + row * stride_tb
    assistant_row = assistant_ptr + row * stride_ab
    ids_row = ids_ptr + row * stride_ib
    m_b = tl.load(stats_ptr + row * _STATS + 0)
    lz_b = tl.load(stats_ptr + row * _STATS + 1)
    m_a = tl.load(stats_ptr + row * _STATS + 2)
    lz_a = tl.load(stats_ptr + row * _STATS + 3)
    thr = tl.load(stats_ptr + row * _STATS + 4)
    weight = tl.load(weight_ptr + row)
    has_filter = tl.load(filter_k_ptr + row) > 0
    inv_t = tl.load(inv_t_ptr + row)

    # Pass 1: greedy argmax (value, smallest id), live max and count, online log-sum-exp of every present token.
    best_c = tl.full((), float("-inf"), tl.float32)
    best_id = tl.full((), 0, tl.int64) + V
    live_max = tl.full((), float("-inf"), tl.float32)
    n_live = tl.full((), 0, tl.int32)
    m_acc = tl.full((BLOCK,), float("-inf"), tl.float32)
    s_acc = tl.zeros((BLOCK,), tl.float32)
    for start in range(0, N, BLOCK):
        j = start + tl.arange(0, BLOCK)
        ids, c, present, live = _combined_chunk(
            target_row, assistant_row, ids_row, j, N, V, stride_tv, stride_av, stride_iv,
            weight, has_filter, thr, m_b, lz_b, m_a, lz_a, SPARSE, BLOCK,
        )  # fmt: skip
        cp = tl.where(present, c, float("-inf"))
        chunk_max = tl.max(cp, axis=0)
        chunk_id = tl.min(tl.where(present & (cp == chunk_max), ids, V), axis=0)
        better = (chunk_max > best_c) | ((chunk_max == best_c) & (chunk_id < best_id))
        best_c = tl.where(better, chunk_max, best_c)
        best_id = tl.where(better, chunk_id, best_id)
        live_max = tl.maximum(live_max, tl.max(tl.where(live, c, float("-inf")), axis=0))
        n_live += tl.sum(live.to(tl.int32), axis=0)
        if RETURN_LOGPROBS:
            m_acc, s_acc = _lse_update(m_acc, s_acc, cp)
    m_c, s_c = _lse_finish(m_acc, s_acc)
    if SPARSE:
        # The masked tokens outside the walk: n_masked copies of MASKED_LOGIT, the first at first_masked.
        n_kept = tl.load(kept_ptr + row * 2)
        first_masked = tl.load(kept_ptr + row * 2 + 1)
        n_masked = V - n_kept
        tl.store(missing_ptr + row, (n_kept - n_live).to(tl.int32))
        masked_wins = (n_masked > 0) & ((best_c < _MASKED) | ((best_c == _MASKED) & (first_masked < best_id)))
        best_c = tl.where(masked_wins, _MASKED, best_c)
        best_id = tl.where(masked_wins, first_masked, best_id)
        m_all = tl.maximum(m_c, _MASKED)
        s_all = s_c * tl.exp(m_c - m_all) + n_masked.to(tl.float32) * tl.exp(-m_all + _MASKED)
        s_c = tl.where(n_masked > 0, s_all, s_c)
        m_c = tl.where(n_masked > 0, m_all, m_c)

    token = best_id
    c_token = best_c
    if inv_t > 0:
        m_s = live_max * inv_t  # c -> c * inv_t is monotone, so this is the max scaled live logit
        floor = tl.full((), float("-inf"), tl.float32)
        top_k = tl.load(top_k_ptr + row)
        if (top_k > 0) & (top_k < n_live):  # 4 counting passes over the row
            floor = _select_scaled(
                target_row, assistant_row, ids_row, N, V, stride_tv, stride_av, stride_iv,
                weight, has_filter, thr, m_b, lz_b, m_a, lz_a, inv_t, m_s,
                top_k.to(tl.float32), floor, SPARSE, False, COUNT_BITS, BLOCK,
            )  # fmt: skip
        top_p = tl.load(top_p_ptr + row)
        if top_p < 1.0:
            # Mass of the top-k survivors (the top-p target is p of it), then the mass-weighted select: 1 + 8 passes.
            z = tl.full((), 0.0, tl.float32)
            for start in range(0, N, BLOCK):
                j = start + tl.arange(0, BLOCK)
                ids, c, present, live = _combined_chunk(
                    target_row, assistant_row, ids_row, j, N, V, stride_tv, stride_av, stride_iv,
                    weight, has_filter, thr, m_b, lz_b, m_a, lz_a, SPARSE, BLOCK,
                )  # fmt: skip
                s = c * inv_t
                z += tl.sum(tl.where(live & (s >= floor), tl.exp(s - m_s), 0.0), axis=0)
            floor = _select_scaled(
                target_row, assistant_row, ids_row, N, V, stride_tv, stride_av, stride_iv,
                weight, has_filter, thr, m_b, lz_b, m_a, lz_a, inv_t, m_s,
                top_p * z, floor, SPARSE, True, MASS_BITS, BLOCK,
            )  # fmt: skip
        # Gumbel-max race among the survivors: argmax(s + gumbel), smallest id on ties.
        key0 = tl.load(keys_ptr + row * 2).to(tl.uint32)
        key1 = tl.load(keys_ptr + row * 2 + 1).to(tl.uint32)
        win_r = tl.full((), float("-inf"), tl.float32)
        win_id = tl.full((), 0, tl.int64) + V
        win_c = tl.full((), float("-inf"), tl.float32)
        for start in range(0, N, BLOCK):
            j = start + tl.arange(0, BLOCK)
            ids, c, present, live = _combined_chunk(
                target_row, assistant_row, ids_row, j, N, V, stride_tv, stride_av, stride_iv,
                weight, has_filter, thr, m_b, lz_b, m_a, lz_a, SPARSE, BLOCK,
            )  # fmt: skip
            s = c * inv_t
            race = tl.where(live & (s >= floor), s + _gumbel(ids, key0, key1), float("-inf"))
            chunk_max = tl.max(tl.where(present, race, float("-inf")), axis=0)
            hit = present & (race == chunk_max)
            chunk_id = tl.min(tl.where(hit, ids, V), axis=0)
            chunk_c = tl.max(tl.where(hit & (ids == chunk_id), c, float("-inf")), axis=0)
            better = (chunk_max > win_r) | ((chunk_max == win_r) & (chunk_id < win_id))
            win_r = tl.where(better, chunk_max, win_r)
            win_id = tl.where(better, chunk_id, win_id)
            win_c = tl.where(better, chunk_c, win_c)
        token = win_id
        c_token = win_c
    tl.store(tokens_ptr + row, token)
    if RETURN_LOGPROBS:
        tl.store(logprobs_ptr + row, (c_token - m_c) - tl.log(s_c))


# ---------------------------------------------------------------------------------------------------------------
# Wrapper
# ---------------------------------------------------------------------------------------------------------------
def _block(n: int, block: int) -> int:
    return max(16, min(block, triton.next_power_of_2(n)))


def combine_and_sample_triton(
    target: torch.Tensor,
    assistant: torch.Tensor | SparseAssistant,
    rows: RowParams,
    return_logprobs: bool,
    *,
    block: int = BLOCK,
    stats_warps: int = STATS_WARPS,
    sample_warps: int = SAMPLE_WARPS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generation-mode combine + sample of (B, V) target logits with a dense (B, V) or sparse assistant.

    Inputs are checked by uld_kernels.inputs; the asserts here guard the kernel's own assumptions. Returns token
    ids (B,) int64 and, if asked, float32 (B,) log_softmax(combined logits) of them. Grid: one program per row.
    """
    assert target.dim() == 2 and target.dtype in LOGIT_DTYPES
    batch, vocab = target.shape
    assert rows.batch == batch and rows.weight.device == target.device
    sparse = isinstance(assistant, SparseAssistant)
    if sparse:
        ids = assistant.row_ids()  # (B, K); the union layout is a stride-0 view
        values = assistant.logits
        domain = values.shape[1]
    else:
        assert assistant.shape == target.shape and assistant.dtype in LOGIT_DTYPES
        ids = torch.empty(1, 1, dtype=torch.int64, device=target.device)  # unused: the domain is the vocabulary
        values = assistant
        domain = vocab
    device = target.device
    stats = torch.empty(batch, STATS, dtype=torch.float32, device=device)
    kept = torch.zeros(batch, 2, dtype=torch.int64, device=device)  # sparse: tokens the filter keeps, 1st masked
    tokens = torch.empty(batch, dtype=torch.int64, device=device)
    logprobs = torch.empty(batch, dtype=torch.float32, device=device)
    missing = torch.zeros(batch, dtype=torch.int32, device=device)
    grid = (batch,)
    _row_stats_kernel[grid](
        target, values, rows.filter_k, rows.log_filter, stats, kept,
        target.stride(0), target.stride(1), values.stride(0), values.stride(1),
        vocab,
        DENSE_ASSISTANT=not sparse, COUNT_KEPT=sparse, BLOCK=_block(vocab, block), DIGIT_BITS=COUNT_DIGIT_BITS,
        num_warps=stats_warps, enable_fp_fusion=False,
    )  # fmt: skip
    _sample_kernel[grid](
        target, values, ids, stats, kept, rows.filter_k,
        rows.weight, rows.inv_temperature, rows.top_k, rows.top_p, rows.keys,
        tokens, logprobs, missing,
        target.stride(0), target.stride(1), values.stride(0), values.stride(1), ids.stride(0), ids.stride(1),
        domain, vocab,
        SPARSE=sparse, RETURN_LOGPROBS=return_logprobs, BLOCK=_block(domain, block),
        COUNT_BITS=COUNT_DIGIT_BITS, MASS_BITS=MASS_DIGIT_BITS,
        num_warps=sample_warps, enable_fp_fusion=False,  # b + w * a rounded twice, as torch computes it
    )  # fmt: skip
    if sparse and bool((missing != 0).any()):
        row = int((missing != 0).nonzero()[0])
        raise ValueError(
            f"SparseAssistant misses {int(missing[row])} token(s) the filter keeps in row {row}: "
            "its ids must cover every kept token"
        )
    return tokens, (logprobs if return_logprobs else None)


@triton.jit
def _noise_kernel(keys_ptr, ids_ptr, bits_ptr, gumbel_ptr, N, BLOCK: tl.constexpr):
    """The sample kernel's noise for given ids, written out (B, N): how tests hold it against rng.py."""
    row = tl.program_id(0).to(tl.int64)
    key0 = tl.load(keys_ptr + row * 2).to(tl.uint32)
    key1 = tl.load(keys_ptr + row * 2 + 1).to(tl.uint32)
    for start in range(0, N, BLOCK):
        j = start + tl.arange(0, BLOCK)
        ids = tl.load(ids_ptr + j, mask=j < N, other=0)
        tl.store(bits_ptr + row * N + j, _token_bits(ids, key0, key1).to(tl.int64), mask=j < N)
        tl.store(gumbel_ptr + row * N + j, _gumbel(ids, key0, key1), mask=j < N)


def noise_triton(keys: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(bits int64, gumbel float32), each (B, N), from the kernel's noise code: keys (B, 2) int64, token_ids (N,)."""
    assert keys.dim() == 2 and keys.shape[1] == 2 and keys.dtype == torch.int64 and token_ids.dim() == 1
    keys, token_ids = keys.contiguous(), token_ids.to(torch.int64).contiguous()
    bits = torch.empty(keys.shape[0], token_ids.shape[0], dtype=torch.int64, device=keys.device)
    gumbel = torch.empty(bits.shape, dtype=torch.float32, device=keys.device)
    _noise_kernel[(keys.shape[0],)](
        keys, token_ids, bits, gumbel, token_ids.shape[0], BLOCK=1024, enable_fp_fusion=False
    )
    return bits, gumbel
