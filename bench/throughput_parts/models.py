"""The bench model of a shape, built once and cached, and the spec every engine start reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.throughput_parts.realistic_head import realistic_head
from bench.throughput_parts.settings import FILTER, SHAPES, assistant_depth


def build_model(work: Path, shape: dict, seed: int = 0) -> Path:
    """A random Llama with a realistic head, as a ULD bundle (LoRA assistant over K = L/4 layers); cached."""
    from uld_vllm.random_models import build_random_bundle

    bundle = work / "bundle"
    if (work / "head.json").exists():
        return bundle
    build_random_bundle(
        work,
        layers=shape["layers"],
        assistant_layers=assistant_depth(shape["layers"]),
        hidden=shape["hidden"],
        filter=FILTER,
        seed=seed,
        target_kwargs={
            "vocab_size": shape["vocab"],
            "heads": shape["heads"],
            "kv_heads": shape["kv_heads"],
            "intermediate": shape["intermediate"],
        },
    )
    report = realistic_head(work, shape, seed)
    (work / "head.json").write_text(json.dumps(report, indent=2))
    return bundle


def engine_spec(work_root: Path, shape_name: str, dtype: str | None, batch_sizes: list[int]) -> tuple[Path, dict]:
    """The bench model of a shape (built once under work_root) and what every engine start reads: (work folder,
    spec). dtype None: $ULD_DTYPE, else by CPU flags."""
    from uld_vllm.engine import resolve_dtype

    dtype = resolve_dtype(dtype)
    shape = SHAPES[shape_name]
    work = work_root / f"{shape_name}-h{shape['hidden']}-L{shape['layers']}-V{shape['vocab']}"
    return work, {
        "target": str(work / "target"),
        "bundle": str(build_model(work, shape)),
        "vocab": shape["vocab"],
        "dtype": "bfloat16" if dtype == "auto" else dtype,  # CUDA: the HF reference needs a concrete dtype too
        "batch_sizes": batch_sizes,
        "kv_cache_bytes": 3 << 29,  # 1.5 GiB: B=128 at up to 384 tokens needs 1 GiB (ULD's 10 layers)
        "huge_pages": os.environ["THP_MEM_ALLOC_ENABLE"] == "1",
    }
