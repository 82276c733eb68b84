"""vLLM's C++ RMSNorm for CPU engines.

vLLM 0.32 builds its C++ RMSNorm kernels for CPU (`torch.ops._C.rms_norm`, `fused_add_rms_norm`), but its
IR registers them for GPUs only, so a CPU engine runs the PyTorch form: a float32 copy of every activation, then
five elementwise passes. Registered here as an IR provider, they are what `default_llm_kwargs` puts first for eager
CPU engines (a compiled engine fuses the PyTorch form itself).

bench/results/README.md has the measurements.
"""

import torch
from torch import Tensor

PROVIDER = "uld_cpu_c"  # the IR provider name (vLLM's own "vllm_c" is reserved to GPUs)
NORM_OPS = ("rms_norm", "fused_add_rms_norm")


def register_rms_norm() -> bool:
    """Register the C++ kernels as `PROVIDER` for vLLM's two RMSNorm IR ops; False where this build has none (a GPU
    build registers its own). Idempotent."""
    from vllm import ir
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return False
    current_platform.import_kernels()  # loads torch.ops._C
    if not hasattr(torch.ops._C, "fused_add_rms_norm"):
        return False
    if PROVIDER in ir.ops.rms_norm.impls:
        return True

    def plain(x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None) -> bool:
        return variance_size is None and weight is not None and weight.dtype == x.dtype and x.is_contiguous()

    def with_residual(
        x: Tensor, x_residual: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None
    ) -> bool:
        return plain(x, weight, epsilon, variance_size) and x_residual.is_contiguous()

    @ir.ops.rms_norm.register_impl(PROVIDER, supports_args=plain)
    def rms_norm(x: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None) -> Tensor:
        out = torch.empty_like(x)
        torch.ops._C.rms_norm(out, x, weight, epsilon)
        return out

    @ir.ops.fused_add_rms_norm.register_impl(PROVIDER, supports_args=with_residual, inplace=True)
    def fused_add_rms_norm(
        x: Tensor, x_residual: Tensor, weight: Tensor | None, epsilon: float, variance_size: int | None = None
    ) -> tuple[Tensor, Tensor]:
        torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)
        return x, x_residual

    return True


def norm_priority() -> dict[str, list[str]]:
    """The engine argument `ir_op_priority` that puts the C++ kernels first (vLLM appends "native" as the fallback
    for arguments they do not take); empty where the plugin could not register them."""
    from vllm import ir
    from vllm.plugins import load_general_plugins

    load_general_plugins()  # the plugin registers them (uld_vllm.plugin), warning where it cannot
    return {op: [PROVIDER] for op in NORM_OPS} if PROVIDER in ir.ops.rms_norm.impls else {}
