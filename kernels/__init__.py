"""uld_kernels: ULD's combine + sample as one fused Triton kernel, with its torch twin as fallback and oracle.

The math of the combination lives in uld_vllm.combine (one copy); the torch path calls it, the kernel is tested
against it. See api.combine_and_sample for the contract, rng for the shared noise, combine_sample for the kernel.
"""

from uld_kernels.api import Backend, combine_and_sample, resolve_backend
from uld_kernels.inputs import RowParams, SparseAssistant, row_params

__all__ = ["Backend", "RowParams", "SparseAssistant", "combine_and_sample", "resolve_backend", "row_params"]
