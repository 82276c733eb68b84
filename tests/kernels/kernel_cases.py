"""Shared by the uld_kernels tests: logits that look like an LM's, the chi-square test, and where Triton runs.

The Triton kernel runs on CUDA when there is one, else in Triton's CPU interpreter. The interpreter needs
TRITON_INTERPRET=1 before `triton` is first imported, and in a full `pytest tests` run vLLM imports triton long
before tests/kernels is collected; so on CPU the kernel runs in one spawned worker process, started with
TRITON_INTERPRET=1 in its environment (and one torch thread: the tests share 2 cores).
"""

from __future__ import annotations

import importlib
import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from scipy import stats

from uld_kernels import SparseAssistant
from uld_vllm.combine import MASKED_LOGIT, combine, relative_top_mask


# ---------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------
def lm_logits(rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
    """(target, assistant) (rows, V): normal(0, 2) with a peaked head on the target (like a trained LM), so the
    relative-top threshold, not only k, decides which tokens the filter keeps."""
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(rows, vocab, generator=gen) * 2.0
    head = torch.randint(0, vocab, (rows, 5), generator=gen)
    target.scatter_add_(1, head, torch.full(head.shape, 8.0))
    assistant = torch.randn(rows, vocab, generator=gen) * 2.0
    return target.to(dtype), assistant.to(dtype)


def flat_logits(rows: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, assistant) normal(0, 1): a flat distribution where top-k and top-p cut deep and draws vary."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=gen), torch.randn(rows, vocab, generator=gen)


def combined(target: torch.Tensor, assistant: torch.Tensor, weights: list[float], filters: list[float], mode: str):
    """combine() row by row with each row's own (w, r): the oracle's oracle, (B, V) float32."""
    return torch.cat(
        [combine(target[i : i + 1], assistant[i : i + 1], weights[i], filters[i], mode) for i in range(len(weights))]
    )


def truncated_probs(logits: torch.Tensor, filter: float, temperature: float, top_k: int, top_p: float):
    """(V,) float64 probabilities of one row's sampling distribution, from the definitions, token by token:
    masked tokens out, logits / T, keep i iff fewer than k tokens are strictly above it, then keep i iff the
    top-k mass strictly above it is < p."""
    scaled = (logits.double() / temperature).tolist()
    live = [not (filter > 0 and x == MASKED_LOGIT) for x in logits.tolist()]
    vocab = len(scaled)
    if 0 < top_k < vocab:
        live = [live[i] and sum(live[j] and scaled[j] > scaled[i] for j in range(vocab)) < top_k for i in range(vocab)]
    top = max(s for s, keep in zip(scaled, live, strict=True) if keep)
    weight = [math.exp(s - top) if keep else 0.0 for s, keep in zip(scaled, live, strict=True)]
    total = sum(weight)
    if top_p < 1:
        above = [sum(weight[j] for j in range(vocab) if scaled[j] > scaled[i]) / total for i in range(vocab)]
        weight = [w if above[i] < top_p else 0.0 for i, w in enumerate(weight)]
        total = sum(weight)
    return torch.tensor([w / total for w in weight], dtype=torch.float64)


def sparse_head(target, assistant, filters, layout: str, extra: int, seed: int):
    """The kept tokens of each row plus `extra` masked ones, shuffled, -1 padded (row) or merged (union)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(target.shape[0]):
        masked = relative_top_mask(target[i : i + 1], float(filters[i]))[0]
        kept = (~masked).nonzero().squeeze(-1)
        others = masked.nonzero().squeeze(-1)
        ids = torch.cat([kept, others[torch.randperm(others.numel(), generator=gen)[:extra]]])
        rows.append(ids[torch.randperm(ids.numel(), generator=gen)])
    if layout == "union":
        union = torch.cat(rows).unique()
        union = union[torch.randperm(union.numel(), generator=gen)]
        return SparseAssistant(union, assistant[:, union], "union")
    width = max(r.numel() for r in rows) + 3
    ids = torch.full((len(rows), width), -1, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r
    return SparseAssistant(ids, torch.where(ids >= 0, assistant.gather(1, ids.clamp(min=0)), 0.0), "row")


# ---------------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------------
def chi_square_pvalue(tokens: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson's chi-square p-value of sampled token ids against probabilities (V,).

    Tokens with zero probability that were drawn give p = 0. Cells with fewer than `min_expected` expected draws
    are pooled (in increasing order of probability) so the chi-square approximation holds.
    """
    n = tokens.numel()
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    if counts[probs == 0].sum() > 0:
        return 0.0
    order = torch.argsort(probs)
    cells_obs, cells_exp, obs, exp = [], [], 0.0, 0.0
    for i in order.tolist():
        if probs[i] == 0:
            continue
        obs, exp = obs + counts[i].item(), exp + n * probs[i].item()
        if exp >= min_expected:
            cells_obs.append(obs)
            cells_exp.append(exp)
            obs, exp = 0.0, 0.0
    if exp > 0:  # the last few: pool with the previous cell
        cells_obs[-1] += obs
        cells_exp[-1] += exp
    if len(cells_obs) < 2:
        return 1.0
    statistic = sum((o - e) ** 2 / e for o, e in zip(cells_obs, cells_exp, strict=True))
    return float(stats.chi2.sf(statistic, len(cells_obs) - 1))


# ---------------------------------------------------------------------------------------------------------------
# Where the Triton path runs
# ---------------------------------------------------------------------------------------------------------------
def _call(path: str, args: tuple, kwargs: dict) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)(*args, **kwargs)


def _fast_interpreter() -> None:
    """Worker start-up: make Triton's interpreter skip re-patching triton.language on every device-function call.

    Triton's interpreter (3.x) calls _patch_lang (inspect.getmembers over triton.language, ~0.5 ms) on *each* call
    of a @triton.jit helper, tl.sum and tl.max included, and never undoes it; the launch itself already patched
    triton.language. Patching once per module is the same state, about 2.4x faster. Skipped if Triton's internals
    differ (the tests are then only slower).
    """
    torch.set_num_threads(1)
    from triton.runtime import interpreter

    needed = ("InterpretedFunction", "_patch_lang", "InterpreterError")
    if not all(hasattr(interpreter, name) for name in needed) or not hasattr(
        interpreter.InterpretedFunction, "rewrite"
    ):
        return
    patched: set[int] = set()

    def call(self, *args, **kwargs):
        if id(self.fn.__globals__) not in patched:
            interpreter._patch_lang(self.fn)
            patched.add(id(self.fn.__globals__))
        try:
            return self.rewrite()(*args, **kwargs)
        except Exception as e:
            raise interpreter.InterpreterError(repr(e)) from e

    interpreter.InterpretedFunction.__call__ = call


class TritonRunner:
    """Calls uld_kernels functions on the Triton path: in-process on CUDA, else in the interpreter worker.

    Tensors go in and come back on the CPU; `device` says where the kernel actually ran.
    """

    def __init__(self) -> None:
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._pool: ProcessPoolExecutor | None = None
        if self.device == "cpu":
            saved = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "OMP_NUM_THREADS")}
            os.environ.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")  # inherited by the worker only
            try:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_fast_interpreter
                )
                self._pool.submit(int).result()  # start the worker now, while the environment says so
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    def __call__(self, path: str, *args: Any, **kwargs: Any) -> Any:
        """Run `path` (e.g. "uld_kernels.combine_and_sample") with backend="triton" where it takes one."""
        if self._pool is not None:
            return self._pool.submit(_call, path, args, kwargs).result()
        return _to(_call(path, _to(args, self.device), _to(kwargs, self.device)), "cpu")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _to(value: Any, device: str) -> Any:
    """Move the tensors in (nested tuples, lists, dicts, SparseAssistant) to `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, SparseAssistant):
        return SparseAssistant(value.ids.to(device), value.logits.to(device), value.layout)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value
