"""The bench model of a shape, built once and cached, and the spec every engine start reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.throughput_parts.realistic_head import keep_stats, realistic_head
from bench.throughput_parts.settings import FILTER, REAL_SHAPES, SHAPES, assistant_depth


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


def real_model(work: Path) -> tuple[Path, Path]:
    """The SmolLM2 study's target and ULD bundle (assembled from the committed adapters, cached), and head.json: its
    keep sets on TOFU's text, which the random shapes' fitted head stands in for."""
    from uld_vllm.smollm2_tofu import assemble

    models = assemble(("target", "uld"))
    if not (work / "head.json").exists():
        work.mkdir(parents=True, exist_ok=True)
        (work / "head.json").write_text(json.dumps(real_keep_stats(models["target"]), indent=2))
    return models["target"], models["uld"]


def real_keep_stats(target: Path, contexts: int = 256, seed: int = 3) -> dict:
    """Keep-set statistics of the target on TOFU QA, each at the middle of its answer (a context scoring reads)."""
    import torch
    from transformers import AutoModelForCausalLM

    from bench.throughput_parts.workloads import tofu_pairs

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
    logits = []
    with torch.no_grad():
        for prompt, answer in tofu_pairs(str(target), contexts, seed):
            ids = torch.tensor([prompt + answer])
            position = len(prompt) + len(answer) // 2  # mid-answer: a context the evaluation scores
            logits.append(model(input_ids=ids[:, :position]).logits[0, -1])
    return {
        "real": keep_stats(torch.stack(logits), FILTER),
        "filter": FILTER,
        "rows_per_union": 64,
        "contexts": f"{contexts} TOFU QA (seed {seed}) in the chat template, at the middle of the answer",
    }


def engine_spec(work_root: Path, shape_name: str, dtype: str | None, batch_sizes: list[int]) -> tuple[Path, dict]:
    """The bench model of a shape (built once under work_root) and what every engine start reads: (work folder,
    spec). dtype None: $ULD_DTYPE, else by CPU flags."""
    from uld_vllm.engine import resolve_dtype

    dtype = resolve_dtype(dtype)
    shape = SHAPES[shape_name]
    work = work_root / f"{shape_name}-h{shape['hidden']}-L{shape['layers']}-V{shape['vocab']}"
    if shape_name in REAL_SHAPES:
        target, bundle = real_model(work)
    else:
        target, bundle = work / "target", build_model(work, shape)
    return work, {
        "target": str(target),
        "bundle": str(bundle),
        "tofu_text": shape_name in REAL_SHAPES,
        "vocab": shape["vocab"],
        "dtype": "bfloat16" if dtype == "auto" else dtype,  # CUDA: the HF reference needs a concrete dtype too
        "batch_sizes": batch_sizes,
        "kv_cache_bytes": 3 << 29,  # 1.5 GiB: B=128 at up to 384 tokens needs 1 GiB (ULD's 10 layers)
        "huge_pages": os.environ["THP_MEM_ALLOC_ENABLE"] == "1",
    }
