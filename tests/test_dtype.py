"""The default engine dtype is a small function of the CPU's flags, overridable by $ULD_DTYPE and --dtype.

Exercised with both flag sets these machines have (AVX2-only EPYC, AVX-512 with bf16/AMX), on whatever CPU runs it.
"""

from __future__ import annotations

import pytest
from helpers import refusal

from uld_vllm import engine, machine
from uld_vllm.batch import main
from uld_vllm.errors import UldError

AVX2_ONLY = frozenset("fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 sha_ni".split())
AVX512_BF16 = AVX2_ONLY | frozenset("avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16".split())
AMX = AVX2_ONLY | frozenset("avx512f amx_tile amx_bf16 amx_int8".split())


@pytest.mark.parametrize(
    "flags, want", [(AVX2_ONLY, "float32"), (AVX512_BF16, "bfloat16"), (AMX, "bfloat16"), (frozenset(), "float32")]
)
def test_cpu_dtype_is_bf16_only_with_bf16_instructions(flags, want):
    assert machine.cpu_dtype(flags) == want


@pytest.mark.parametrize("flags, want", [(AVX2_ONLY, "float32"), (AVX512_BF16, "bfloat16")])
def test_default_dtype_follows_the_flags_without_a_gpu(monkeypatch, flags, want):
    monkeypatch.delenv(engine.DTYPE_ENV, raising=False)
    monkeypatch.setattr(engine, "has_cuda", lambda: False)
    monkeypatch.setattr(engine, "cpu_flags", lambda: flags)
    assert engine.default_dtype() == want
    assert engine.default_llm_kwargs()["dtype"] == want


def test_default_dtype_on_cuda_is_the_checkpoints(monkeypatch):
    monkeypatch.delenv(engine.DTYPE_ENV, raising=False)
    monkeypatch.setattr(engine, "has_cuda", lambda: True)
    monkeypatch.setattr(engine, "cpu_flags", lambda: AVX2_ONLY)
    assert engine.default_dtype() == "auto"


@pytest.mark.parametrize("flags", [AVX2_ONLY, AVX512_BF16])
@pytest.mark.parametrize("forced", ["float32", "bfloat16", "float16"])
def test_environment_variable_overrides_the_flags(monkeypatch, flags, forced):
    monkeypatch.setenv(engine.DTYPE_ENV, forced)
    monkeypatch.setattr(engine, "cpu_flags", lambda: flags)
    assert engine.default_dtype() == forced


def test_a_bad_environment_value_is_one_line(monkeypatch):
    monkeypatch.setenv(engine.DTYPE_ENV, "fp8")
    with pytest.raises(UldError, match=r"\$ULD_DTYPE dtype 'fp8' is not one of auto, float32, bfloat16, float16"):
        engine.default_dtype()


def test_uld_batch_reports_a_bad_environment_dtype_in_one_line(monkeypatch, capsys, llama_bundle, tmp_path):
    monkeypatch.setenv(engine.DTYPE_ENV, "fp8")
    argv = ["--model", str(llama_bundle), "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "o")]
    assert refusal(capsys, main, *argv) == "$ULD_DTYPE dtype 'fp8' is not one of auto, float32, bfloat16, float16"


def test_machine_info_records_the_speed_flags_and_dtype():
    info = machine.machine_info("float32")
    assert info["dtype"] == "float32" and info["cores"] >= 1 and info["cpu"]
    assert set(info["flags"]) <= set(machine.SPEED_FLAGS)
    assert set(info["flags"]) == set(machine.SPEED_FLAGS) & machine.cpu_flags()


def test_machine_info_records_whether_torch_puts_tensors_on_huge_pages(monkeypatch):
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert machine.machine_info("float32")["huge_pages"].endswith("THP_MEM_ALLOC_ENABLE on")
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    assert machine.machine_info("float32")["huge_pages"].endswith("THP_MEM_ALLOC_ENABLE off")
