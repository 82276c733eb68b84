"""Per-row sampling parameters: the job's values, overridden by the input's optional sampling columns."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from uld_vllm.batch.config import SAMPLING_COLUMNS, BatchConfig, BatchError


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
    if config.n > 1 and values["temperature"] == 0.0:
        raise BatchError(f"row {row}: temperature 0 with --n {config.n} (greedy decoding would repeat one completion)")
    if values["top_k"] == 0:
        values["top_k"] = -1
    try:
        return SamplingParams(n=config.n, **values)
    except (ValueError, TypeError, VLLMError) as e:  # vLLM's own validation of one row's values
        raise BatchError(f"row {row}: {str(e).strip().splitlines()[0]}") from None


def check_overrides(config: BatchConfig, first_row: int, batch: pa.RecordBatch | pa.Table) -> dict[int, str]:
    """Rows whose sampling values vLLM (or uld-batch) refuses, with why: found in the input plan, before any engine."""
    if not any(k in batch.schema.names for k in SAMPLING_COLUMNS):
        return {}
    bad = {}
    for i in range(batch.num_rows):
        try:
            sampling_params_for(config, first_row + i, row_overrides(batch, i))
        except BatchError as e:
            bad[first_row + i] = str(e).partition(": ")[2]
    return bad
