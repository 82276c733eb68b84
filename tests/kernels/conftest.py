"""Fixtures of the uld_kernels tests: the Triton runner (CUDA in-process, else one interpreter worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kernel_cases import TritonRunner


@pytest.fixture(scope="session")
def triton_run() -> Iterator[TritonRunner]:
    """triton_run("uld_kernels.combine_and_sample", target, assistant, backend="triton", ...) -> CPU results."""
    runner = TritonRunner()
    yield runner
    runner.close()
