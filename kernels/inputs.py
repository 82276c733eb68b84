"""The inputs of combine_and_sample, checked and normalized once, so the torch path and the kernel read the same rows.

Per-row parameters arrive as (B,) tensors or Python numbers (one value for every row). They are normalized on the
CPU (small tensors; the values are checked there anyway, so one host sync per call) into `RowParams`, whose fields
are exactly what both backends consume: the arithmetic that must agree bit for bit with `uld_vllm.combine.combine`
(k = int(r * V), log r) is done here once, in float64 like combine's Python arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from uld_kernels.rng import stream_keys

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_VOCAB = 1 << 24  # counts and token ids stay exact in the kernel's float32 histograms up to 2**24

Number = int | float
PerRow = torch.Tensor | Number


@dataclass(frozen=True)
class SparseAssistant:
    """The assistant's logits on some token ids only: what a sparse assistant LM head computes.

    layout "row":   ids (B, K) int64, -1 pads a row; logits (B, K), logits[i, j] belongs to token ids[i, j].
    layout "union": ids (U,) int64, one id set for the whole batch; logits (B, U).
    Contract (needs filter > 0 on every row): a row's ids include every token its relative-top filter keeps. The
    filter gives every other token a' = 0 and, in generation, MASKED_LOGIT, so its assistant logit is never read.
    Ids the filter masks may be present (they are ignored); ids must be unique within a row and in [0, V).
    A kept token missing from the ids raises ValueError (both backends check it). The kernel's filter threshold can
    differ from combine's in the last float32 bit, so a producer should add a margin (e.g. keep log p >= thr - 1e-4)
    rather than reproduce the threshold exactly.
    """

    ids: torch.Tensor
    logits: torch.Tensor
    layout: Literal["row", "union"] = "row"

    def row_ids(self) -> torch.Tensor:
        """(B, K) ids of every row; the union layout is expanded as a view, without a copy."""
        if self.layout == "union":
            return self.ids.unsqueeze(0).expand(self.logits.shape[0], -1)
        return self.ids

    def dense(self, vocab: int) -> torch.Tensor:
        """(B, V) float32 assistant logits with 0 on every id not given (a' = 0 where the filter masks)."""
        slots = self._slots(vocab)
        out = torch.zeros(slots.shape[0], vocab + 1, dtype=torch.float32, device=slots.device)
        return out.scatter_(1, slots, self.logits.float())[:, :vocab]

    def covered(self, vocab: int) -> torch.Tensor:
        """(B, V) bool: the tokens this assistant gives a logit for."""
        slots = self._slots(vocab)
        out = torch.zeros(slots.shape[0], vocab + 1, dtype=torch.bool, device=slots.device)
        return out.scatter_(1, slots, True)[:, :vocab]

    def _slots(self, vocab: int) -> torch.Tensor:
        """(B, K) scatter targets: the ids, with padding sent to a scratch column V that callers drop."""
        ids = self.row_ids()
        return torch.where(ids >= 0, ids, vocab)

    def check(self, batch: int, vocab: int) -> None:
        """ValueError unless shapes, dtypes and ids follow the layout (ids unique per row, in [0, V) or -1)."""
        if self.layout not in ("row", "union"):
            raise ValueError(f"SparseAssistant layout must be 'row' or 'union', got {self.layout!r}")
        if self.ids.dtype != torch.int64:
            raise ValueError(f"SparseAssistant ids must be int64, got {self.ids.dtype}")
        if self.logits.dtype not in LOGIT_DTYPES:
            raise ValueError(f"SparseAssistant logits must be float32, bfloat16 or float16, got {self.logits.dtype}")
        want_ids = 1 if self.layout == "union" else 2
        if self.ids.dim() != want_ids or self.logits.dim() != 2:
            raise ValueError(f"{self.layout} layout wants ids with {want_ids} dims and logits (B, K)")
        if self.logits.shape[0] != batch or self.row_ids().shape != self.logits.shape:
            raise ValueError(
                f"SparseAssistant ids {tuple(self.ids.shape)} / logits {tuple(self.logits.shape)} do not match "
                f"{batch} rows in the {self.layout} layout"
            )
        ids = self.row_ids()
        if self.layout == "union" and bool((ids < 0).any()):
            raise ValueError("union ids must all be valid token ids (no -1 padding)")
        if bool(((ids < -1) | (ids >= vocab)).any()):
            raise ValueError(f"SparseAssistant ids must be in [0, {vocab}) or -1 (padding)")
        sorted_ids = ids.sort(dim=-1).values
        if bool(((sorted_ids[:, 1:] == sorted_ids[:, :-1]) & (sorted_ids[:, 1:] >= 0)).any()):
            raise ValueError("SparseAssistant ids must be unique within a row")


@dataclass(frozen=True)
class RowParams:
    """Per-row parameters after normalization; every field is (B,) on the logits' device unless said otherwise."""

    weight: torch.Tensor  # float32: w, the assistant's weight (combine casts its Python float to float32 too)
    filter: torch.Tensor  # float64: r in [0, 1), 0 = no filter; float64 as combine's Python float
    filter_k: torch.Tensor  # int32: k = max(1, int(r * V)) tokens kept at least; 0 where r == 0
    log_filter: torch.Tensor  # float32: math.log(r) rounded as combine's float32 add rounds it; 0 where r == 0
    inv_temperature: torch.Tensor  # float32: 1 / T, and 0 for a greedy row (T == 0)
    top_k: torch.Tensor  # int32: keep the k most likely tokens; 0 = off (k <= 0 or k >= V asked)
    top_p: torch.Tensor  # float32: nucleus mass in (0, 1]; 1 = off
    keys: torch.Tensor  # (B, 2) int64 holding uint32: the noise stream of (seed, step), see rng.stream_keys

    @property
    def batch(self) -> int:
        return self.weight.shape[0]

    def groups(self) -> list[tuple[float, float, torch.Tensor]]:
        """(weight, filter, row indices) for each distinct (w, r) pair: combine takes one pair per call."""
        pairs = torch.stack([self.weight.double().cpu(), self.filter.cpu()], dim=-1)  # (B, 2)
        unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        return [
            (float(w), float(r), (inverse == g).nonzero().squeeze(-1).to(self.weight.device))
            for g, (w, r) in enumerate(unique.tolist())
        ]


def _per_row(name: str, value: PerRow, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """A (B,) CPU tensor of `dtype` from a Python number (every row) or a 0-d / (B,) tensor."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] != batch):
            raise ValueError(f"{name} must be a number or a ({batch},) tensor, got shape {tuple(value.shape)}")
        if dtype == torch.int64 and value.is_floating_point():
            raise ValueError(f"{name} must hold integers, got {value.dtype}")
        return value.detach().to("cpu", dtype).expand(batch).contiguous()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number or a ({batch},) tensor, got {type(value).__name__}")
    if dtype == torch.int64 and not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return torch.full((batch,), value, dtype=dtype)


def row_params(
    batch: int,
    vocab: int,
    device: torch.device,
    *,
    weight: PerRow,
    filter: PerRow,
    temperature: PerRow,
    top_k: PerRow,
    top_p: PerRow,
    seeds: PerRow,
    steps: PerRow | None,
) -> RowParams:
    """Check every per-row value (ValueError naming it) and derive what both backends read."""
    w = _per_row("weight", weight, batch, torch.float32)
    r = _per_row("filter", filter, batch, torch.float64)
    t = _per_row("temperature", temperature, batch, torch.float32)
    k = _per_row("top_k", top_k, batch, torch.int64)
    p = _per_row("top_p", top_p, batch, torch.float32)
    s = _per_row("seeds", seeds, batch, torch.int64)
    n = torch.zeros(batch, dtype=torch.int64) if steps is None else _per_row("steps", steps, batch, torch.int64)
    if not bool(torch.isfinite(w).all()):
        raise ValueError("weight must be finite")
    if not bool(((r >= 0) & (r < 1)).all()):  # NaN fails both
        raise ValueError(f"filter must be in [0, 1), got {r[~((r >= 0) & (r < 1))][0].item()}")
    if not bool((torch.isfinite(t) & (t >= 0)).all()):
        raise ValueError("temperature must be finite and >= 0 (0 = greedy)")
    if not bool(((p > 0) & (p <= 1)).all()):
        raise ValueError("top_p must be in (0, 1]")
    # k = int(r * V) in float64, as combine computes it from its Python float; at least one token is kept.
    filter_k = torch.where(r > 0, torch.floor(r * vocab).clamp(min=1), 0).to(torch.int32)
    # log r rounded to float32 from Python's math.log, exactly the scalar combine adds to a float32 tensor.
    values, inverse = torch.unique(r, return_inverse=True)
    logs = torch.tensor([math.log(v) if v > 0 else 0.0 for v in values.tolist()], dtype=torch.float64)
    log_filter = logs[inverse].to(torch.float32)
    inv_t = torch.where(t > 0, 1.0 / t, 0.0)  # float32 division, the same on every device
    top_k_on = torch.where((k > 0) & (k < vocab), k, 0).to(torch.int32)
    return RowParams(
        weight=w.to(device),
        filter=r.to(device),
        filter_k=filter_k.to(device),
        log_filter=log_filter.to(device),
        inv_temperature=inv_t.to(device),
        top_k=top_k_on.to(device),
        top_p=p.to(device),
        keys=stream_keys(s, n).to(device),
    )


def check_logits(target: torch.Tensor, assistant: torch.Tensor | SparseAssistant) -> None:
    """ValueError unless target is (B, V) floating logits and the assistant matches it (see SparseAssistant)."""
    if target.dim() != 2 or target.shape[0] < 1 or target.shape[1] < 1:
        raise ValueError(f"target logits must be (B, V), got shape {tuple(target.shape)}")
    if target.dtype not in LOGIT_DTYPES:
        raise ValueError(f"target logits must be float32, bfloat16 or float16, got {target.dtype}")
    batch, vocab = target.shape
    if vocab > MAX_VOCAB:
        raise ValueError(f"vocabulary {vocab} > {MAX_VOCAB} is not supported")
    if isinstance(assistant, SparseAssistant):
        assistant.check(batch, vocab)
        if assistant.logits.device != target.device or assistant.ids.device != target.device:
            raise ValueError("SparseAssistant tensors must be on the target logits' device")
        return
    if not isinstance(assistant, torch.Tensor):
        raise ValueError(f"assistant logits must be a tensor or a SparseAssistant, got {type(assistant).__name__}")
    if assistant.shape != target.shape:
        raise ValueError(f"target logits {tuple(target.shape)} != assistant {tuple(assistant.shape)}")
    if assistant.dtype not in LOGIT_DTYPES:
        raise ValueError(f"assistant logits must be float32, bfloat16 or float16, got {assistant.dtype}")
    if assistant.device != target.device:
        raise ValueError(f"assistant logits on {assistant.device}, target on {target.device}")


def check_sparse_filter(assistant: torch.Tensor | SparseAssistant, rows: RowParams) -> None:
    """A sparse assistant leaves out tokens only the filter may ignore: every row needs filter > 0."""
    if isinstance(assistant, SparseAssistant) and not bool((rows.filter > 0).all()):
        raise ValueError("a SparseAssistant needs filter > 0 on every row (filter 0 reads the whole assistant row)")
