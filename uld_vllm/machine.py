"""What machine a number was measured on: CPU model and the flags that decide speed (and the default dtype).

Every benchmark and quality result records `machine_info()`: CPUs differ between these machines (AVX2-only EPYCs,
AVX-512 with bf16), and only ratios measured side by side on one of them compare.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # the ones worth recording


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name):
            return line.partition(":")[2].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    return frozenset((_cpuinfo_field("flags") or "").split())


def cpu_name() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_dtype(flags: frozenset[str] | set[str]) -> str:
    """bfloat16 where the CPU has bf16 matmul instructions (AVX512-BF16 or AMX), else float32.

    Without them bf16 is emulated: decoding ran 6x slower than fp32 on the AVX2-only EPYCs here.
    """
    return "bfloat16" if FAST_BF16_FLAGS & set(flags) else "float32"


def huge_pages() -> str:
    """Whether torch's large CPU tensors sit on transparent huge pages: the kernel's THP mode, and torch's own switch
    (THP_MEM_ALLOC_ENABLE=1 makes it madvise them, which the 'madvise' mode needs). A run condition that changes
    how fast weights are read, so results record it."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        mode = text[text.index("[") + 1 : text.index("]")]
    except (OSError, ValueError):
        mode = "unknown"
    torch_side = "on" if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1" else "off"
    return f"kernel mode {mode}, torch THP_MEM_ALLOC_ENABLE {torch_side}"


def machine_info(dtype: str) -> dict[str, Any]:
    """CPU model, core count, speed-relevant flags, huge pages and the dtype used: recorded beside every figure."""
    import torch

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "flags": [f for f in SPEED_FLAGS if f in flags],
        "dtype": dtype,
        "huge_pages": huge_pages(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
