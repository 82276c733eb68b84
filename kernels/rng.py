"""Counter-based sampling noise: a (seed, step, token id) triple always gives the same Gumbel value, on any backend.

Why not torch.Generator or tl.rand: the torch path and the Triton kernel must draw *the same* noise so that their
sampled tokens can be compared token for token, and torch has no Philox it exposes element-wise, while tl.rand's
bit layout is Triton's private business. So the noise is a small integer hash written twice, here in torch (int64
tensors holding uint32 values) and in `combine_sample._token_bits` in Triton (uint32), on integer operations that are
exact in both: xor, shifts, multiplication modulo 2**32.

    keys   = stream_keys(seed, step)                 # per row: a 64-bit key, a bijection of the seed for each step
    bits   = fmix32(fmix32(token ^ key0) ^ key1)     # per token: a keyed permutation of the 32-bit token ids
    w      = min((float32(bits) + 0.5) * 2**-32, 1 - 2**-24)   # uniform in (0, 1), fine-grained near 0
    E      = -log1p(-w)                              # Exp(1); Kahan's log1p from log, the same ops on both sides
    gumbel = -log(E)

Why w near 0 matters: the race is won by the tokens with the smallest E (largest Gumbel). With the usual
u = 24-bit fixed point and E = -log(u), E is quantized in steps of 2**-24 where it matters: at V = 262144 the winner's
E is ~1/V, only ~64 steps, and the top two tokens share a step ~1% of the time (a tie: the lower id wins). Taking E
from w = 1 - u with float32's relative precision near 0 makes those steps 2**-32 (and ties ~V * 2**-32).

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
    x0 = fmix32(x0 ^ x1)  # so the step's high word reaches key0 too
    return torch.stack([x0, x1], dim=-1)


def token_bits(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """32 random bits (int64 holding uint32) per (row, token): keys (B, 2), token_ids (B, N) or (N,) -> (B, N)."""
    ids = token_ids.to(torch.int64) & MASK32
    return fmix32(fmix32(ids ^ keys[:, :1]) ^ keys[:, 1:])


def unit_interval(bits: torch.Tensor) -> torch.Tensor:
    """float32 uniform in (0, 1): 32 random bits as a float (round to nearest), never 0 (the + 0.5) nor 1 (the min)."""
    return torch.clamp_max((bits.to(torch.float32) + 0.5) * 2.0**-32, 1.0 - 2.0**-24)


def exponential(w: torch.Tensor) -> torch.Tensor:
    """Exp(1) variates -log1p(-w) of uniforms w, accurate for small w, by Kahan's log1p(x) = log(1 + x) * x / ((1 +
    x) - 1) (Triton has no log1p; both backends compute exactly these float32 operations, in this order)."""
    y = 1.0 - w
    return torch.where(y == 1.0, w, -torch.log(y) * w / torch.where(y == 1.0, 1.0, 1.0 - y))


def gumbel_noise(keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise (B, N) float32 for the tokens of each row's (seed, step) stream."""
    return -torch.log(exponential(unit_interval(token_bits(keys, token_ids))))
