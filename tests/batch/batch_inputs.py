"""Batch fixtures: parquet inputs written per test, engines kept small (CPU in CI)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

# Passed as BatchConfig.engine_kwargs: eager mode and a small KV cache keep engine start-up short on CPU.
SMALL_ENGINE = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
WORDS = "who wrote the book where was author born city award genre father mother novel".split()


def write_prompts(path: Path, rows: int, seed: int = 0, **extra_columns) -> Path:
    rng = random.Random(seed)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(rows)]
    table = pa.table(
        {
            "id": [f"q{i}" for i in range(rows)],
            "prompt": prompts,
            "topic": [f"t{i % 3}" for i in range(rows)],
            **extra_columns,
        }
    )
    pq.write_table(table, path)
    return path
