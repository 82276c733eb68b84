"""Per-row sampling parameters: the job's values, overridden by the input's optional sampling columns."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from uld_vllm.batch.config import SAMPLING_COLUMNS, BatchConfig, BatchError, check_n_sampling


def row_overrides(batch: pa.RecordBatch | pa.Table, index: int) -> dict[str, Any]:
    """Per-row sampling values from the input's optional SAMPLING_COLUMNS (None: the job's value)."""
    return {k: batch.column(k)[index].as_py() for k in SAMPLING_COLUMNS if k in batch.schema.names}


def sampling_params_for(config: BatchConfig, row: int, overrides: dict[str, Any]):
    """vLLM's SamplingParams for global row `row`; a value vLLM refuses is a BatchError naming the row.
    Seeded jobs sample row i with seed + i, so results depend on neither batching, nor resume, nor replicas."""
    from vllm import SamplingParams
    from vllm.exceptions import VLLMError

    values = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "min_p": config.min_p,
        "max_tokens": config.max_tokens,
        "seed": None if config.seed is None else config.seed + row,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["top_k"] == 0:
        values["top_k"] = -1
    try:
        check_n_sampling(config.n, values["temperature"])
        return SamplingParams(n=config.n, **values)
    except (BatchError, ValueError, TypeError, VLLMError) as e:  # ours, or vLLM's own validation of the row's values
        raise BatchError(f"row {row}: {str(e).strip().splitlines()[0]}") from None


def override_params(
    config: BatchConfig, first_row: int, batch: pa.RecordBatch | pa.Table
) -> tuple[list | None, dict[int, str]]:
    """Where the input has sampling columns: each row's SamplingParams (None for a refused row) and the refused rows
    with why, found in the input plan, before any engine; (None, {}) without sampling columns."""
    if not any(k in batch.schema.names for k in SAMPLING_COLUMNS):
        return None, {}
    params: list = []
    bad = {}
    for i in range(batch.num_rows):
        try:
            params.append(sampling_params_for(config, first_row + i, row_overrides(batch, i)))
        except BatchError as e:
            params.append(None)
            bad[first_row + i] = str(e).partition(": ")[2]
    return params, bad
