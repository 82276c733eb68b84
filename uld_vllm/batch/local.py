"""The single-process driver: one engine, the plan's chunks in input order, each committed as it is done."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from uld_vllm.batch.config import BatchConfig, llm_kwargs
from uld_vllm.batch.generate import GenerationStats, generate_chunk
from uld_vllm.batch.plan import InputPlan
from uld_vllm.batch.workdir import WorkDir

if TYPE_CHECKING:
    from uld_vllm.engine import CheckedModel


def generate_locally(config: BatchConfig, model: CheckedModel, plan: InputPlan, work: WorkDir) -> GenerationStats:
    from tqdm import tqdm

    from uld_vllm.engine import make_llm, shutdown_llm

    stats = GenerationStats()
    if not plan.chunks:
        return stats
    pending = sum(chunk.pending for chunk in plan.chunks)
    llm = make_llm(model, **llm_kwargs(config))
    ready = time.time()
    try:
        with tqdm(total=plan.rows, initial=plan.rows - pending, desc="uld-batch", unit="row", disable=None) as bar:
            for chunk in plan.chunks:
                part = generate_chunk(llm, config, plan.spec, chunk)
                work.commit(part)
                stats.add_part(part, ready)
                bar.update(chunk.pending)
                bar.set_postfix(stats.rates())
    finally:
        shutdown_llm(llm)
    return stats
