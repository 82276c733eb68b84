"""vLLM's C++ RMSNorm, registered for CPU engines: the same values as vLLM's PyTorch form, and the form engines run."""

from __future__ import annotations

import pytest
import torch

from uld_vllm import cpu_kernels


@pytest.fixture(scope="module")
def ops():
    from vllm import ir

    if not cpu_kernels.register_rms_norm():
        pytest.skip("this vLLM build has no CPU RMSNorm kernel")
    return ir.ops


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_the_c_kernels_equal_vllm_native_rms_norm_in_float32(ops, rows):
    torch.manual_seed(rows)
    x, residual, weight = torch.randn(rows, 96), torch.randn(rows, 96), torch.randn(96)
    cases = ((ops.rms_norm, lambda: (x.clone(), weight, 1e-6)),
             (ops.fused_add_rms_norm, lambda: (x.clone(), residual.clone(), weight, 1e-6)))  # fmt: skip
    for op, args in cases:
        want = op.impls["native"].impl_fn(*args())
        got = op.impls[cpu_kernels.PROVIDER].impl_fn(*args())  # fresh copies: the fused op works in place
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_arguments_the_kernels_do_not_take_fall_back_to_native(ops):
    impl = ops.rms_norm.impls[cpu_kernels.PROVIDER]
    x = torch.randn(4, 8)
    assert impl.supports_args(x, torch.ones(8), 1e-6)
    assert not impl.supports_args(x, None, 1e-6)  # no weight
    assert not impl.supports_args(x, torch.ones(8, dtype=torch.float64), 1e-6)  # another dtype
    assert not impl.supports_args(x.t(), torch.ones(4), 1e-6)  # strided
    assert not impl.supports_args(x, torch.ones(8), 1e-6, 4)  # variance over part of the row


def test_eager_cpu_engines_ask_for_the_c_kernels_first_and_compiled_ones_do_not(ops):
    from uld_vllm.engine import default_llm_kwargs

    priority = default_llm_kwargs({"enforce_eager": True})["ir_op_priority"]
    assert priority == {"rms_norm": [cpu_kernels.PROVIDER], "fused_add_rms_norm": [cpu_kernels.PROVIDER]}
    assert "ir_op_priority" not in default_llm_kwargs({"enforce_eager": False})
    assert "ir_op_priority" not in default_llm_kwargs()  # vLLM compiles by default
