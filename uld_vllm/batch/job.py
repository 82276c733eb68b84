"""run(): one uld-batch job from options to the output file; the Python API the CLI calls."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from uld_vllm.batch.config import BatchConfig, BatchError, check_options, context_length, default_bundle
from uld_vllm.batch.generate import GenerationStats
from uld_vllm.batch.plan import plan_input, resolve_inputs
from uld_vllm.batch.workdir import WorkDir


@dataclass
class BatchSummary:
    rows: int  # input rows
    written: int  # rows in the output
    generated: int  # rows generated in this run (the rest were resumed or bad)
    bad: int  # rows that failed the input checks (skipped or recorded)
    prompt_tokens: int
    output_tokens: int
    seconds: float  # the whole job: checks, engine start, generation, merge
    generation_seconds: float = 0.0  # from the first engine ready to the last part: what tok/s is measured over

    def line(self) -> str:
        rate = self.output_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        resumed = self.rows - self.generated - self.bad
        return (
            f"uld-batch: {self.written}/{self.rows} rows written ({self.generated} generated now, {resumed} resumed, "
            f"{self.bad} bad), {self.output_tokens} output tokens, {self.seconds:.1f} s in all, "
            f"{rate:.1f} tok/s generating"
        )


def check_output(output: Path) -> None:
    if output.exists() and output.is_dir():
        raise BatchError(f"output {output} is a directory; give a .parquet file path")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise BatchError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise BatchError(f"output directory is not writable: {parent}")


def load_tokenizer(bundle: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundle)


def run(config: BatchConfig | None = None, **options: Any) -> BatchSummary:
    """Python API mirroring the CLI: run(input=..., output=..., model=..., ...) or run(BatchConfig(...)).

    Every check that can fail runs before an engine starts: options, output, model (check_model), context, input.
    """
    from uld_vllm.engine import check_model, resolve_dtype

    config = config or BatchConfig(**options)
    started = time.monotonic()
    output = Path(config.output)
    check_output(output)
    check_options(config)
    config = replace(config, dtype=resolve_dtype(config.dtype))  # the resume record holds the dtype that runs
    model = check_model(config.model or default_bundle(), config.weight, config.filter)
    config = replace(config, max_model_len=context_length(model.config, config))
    files = resolve_inputs(config.input)
    work = WorkDir(output, config.job([f.path for f in files]))
    plan = plan_input(config, load_tokenizer(model.path), files, done=work.done_rows())
    work.begin()
    if config.ray:
        from uld_vllm.batch.ray_pool import generate_with_ray

        stats: GenerationStats = generate_with_ray(config, model, plan, work)
    else:
        from uld_vllm.batch.local import generate_locally

        stats = generate_locally(config, model, plan, work)
    written = work.merge_into(output)
    work.remove()
    bad = len(plan.bad)
    expected = plan.rows - (bad if config.on_bad_row == "skip" else 0)
    if written != expected:
        raise BatchError(f"internal error: wrote {written} rows, expected {expected}; parts kept for inspection")
    return BatchSummary(
        plan.rows,
        written,
        stats.rows,
        bad,
        stats.prompt_tokens,
        stats.output_tokens,
        time.monotonic() - started,
        stats.seconds,
    )
