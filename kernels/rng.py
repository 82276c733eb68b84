"""Counter-based sampling noise: a (seed, step, token id) triple always gives the same Gumbel value, on any backend.

Why not torch.Generator or tl.rand: the torch path and the Triton kernel must draw *the same* noise so that their
sampled tokens can be compared token for token, and torch has no Philox it exposes element-wise, while tl.rand's
bit layout is Triton's private business. So the noise is a small integer hash written twice, here in torch (int64
tensors holding uint32 values) and in `combine_sample._token_bits` in Triton (uint32), on integer operations that are
exact in both: xor, shifts, multiplication modulo 2**32.

    keys   = stream_keys(seed, step)                 # per row: a 64-bit key, a bijection of the seed for each step
    bits   = fmix32(fmix32(token ^ key0) ^ key1)     # per token: a keyed permutation of the 32-bit token ids
    u      = (bits >> 9 + 0.5) / 2**23               # exact in float32, strictly inside (0, 1)
    gumbel = -log(-log(u))

fmix32 is MurmurHash3's finalizer (a bijection of uint32 with full avalanche); two rounds keyed by 64 bits give
distinct bits for the tokens of one row and unrelated streams for different (seed, step) pairs. It is not a
cryptographic generator; the kernel tests check its uniformity and the sampled frequencies (chi-square).
Sampling with it is the Gumbel-max trick: argmax(logits / T + gumbel) is an exact draw from softmax(logits / T)
(vLLM's sampler does the same as an "exponential race", probs / Exp(1), with noise from torch generators).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
# Domain-separation constants (hex digits of pi, as in Blowfish/Philox key schedules).
SEED_SALT = 0x243F6A88
STEP_SALT = 0x85A308D3
MURMUR_C1 = 0x85EBCA6B
MURMUR_C2 = 0xC2B2AE35
UNIFORM_BITS = 23  # u = (top 23 bits + 0.5) / 2**23: 24 significant bits at most, so exact in float32


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32): split c in 16-bit halves so no product overflows int64."""
    low = x * (c & 0xFFFF)  # < 2**48
    high = ((x * (c >> 16)) & 0xFFFF) << 16  # only the low 16 bits of x * c_hi survive the shift mod 2**32
    return (low + high) & MASK32


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors holding uint32 values (a bijection of [0, 2**32))."""
    x = x ^ (x >> 16)
    x = _mul32(x, MURMUR_C1)
    x = x ^ (x >> 13)
    x = _mul32(x, MURMUR_C2)
    return x ^ (x >> 16)


def stream_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """(B, 2) int64 keys (uint32 values) of the noise streams of (seed, step) pairs, both int64 (B,).

    A two-lane Feistel-like schedule: each line is a bijection of one lane given the other, so for a fixed step
    distinct seeds never share a key, and every bit of seed and step reaches both key words.
    """
    if seeds.dtype != torch.int64 or steps.dtype != torch.int64:
        raise TypeError(f"seeds and steps must be int64, got {seeds.dtype} and {steps.dtype}")
    x0 = fmix32((seeds & MASK32) ^ SEED_SALT)
    x1 = fmix32(((seeds >> 32) & MASK32) ^ x0 ^ STEP_SALT)
    x0 = fmix32(x0 ^ (steps & MASK32) ^ x1)
    x1 = fmix32(x1 ^ ((steps >> 32) & MASK32) ^ x0)
    return torch.stack([x0, x1], dim=-1)


def token_bits(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """32 random bits (int64 holding uint32) per (row, token): keys (B, 2), token_ids (B, N) or (N,) -> (B, N)."""
    ids = token_ids.to(torch.int64) & MASK32
    return fmix32(fmix32(ids ^ keys[:, :1]) ^ keys[:, 1:])


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """float32 in (0, 1), exact: the top 23 bits plus one half, scaled by 2**-23."""
    return ((bits >> (32 - UNIFORM_BITS)).to(torch.float32) + 0.5) * 2.0**-UNIFORM_BITS


def gumbel_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise (B, N) float32 for the tokens of each row's (seed, step) stream."""
    return -torch.log(-torch.log(uniform(token_bits(keys, token_ids))))
