"""uld-batch: prompts from parquet in, ULD generations to parquet out; resumable, loss-free, on one machine or Ray.

Flow (one module per step, each importing only the steps before it):
    config.py    what a job is (`BatchConfig`; its `job` record guards resume), `BatchError`, the engine arguments
    sampling.py  per-row `SamplingParams`: the job's values and the input's optional sampling columns, vLLM-validated
    plan.py      find the input files, check their schema, read every row once, render and tokenize every prompt
                 once, check ids and per-row values: an `InputPlan` of `Chunk`s, each ready to generate
    workdir.py   committed part files beside the output (atomic), what resume reads, the final merge
    generate.py  one chunk -> one part table (the one place output rows are made) and its `GenerationStats`
    local.py     the single-process driver: one engine, chunk after chunk
    ray_pool.py  the Ray driver: a pool of engine replicas, each sent its chunks' prepared rows
    job.py       `run()`: checks, plan, work dir, a driver, merge, summary
    cli.py       the uld-batch command

Every row of the output comes from `generate.generate_chunk`, whichever driver ran it: the Ray output equals the
single-process output row for row.
"""

from uld_vllm.batch.config import BatchConfig, BatchError
from uld_vllm.batch.job import BatchSummary, run

__all__ = ["BatchConfig", "BatchError", "BatchSummary", "run", "main"]


def main(argv: list[str] | None = None) -> int:
    from uld_vllm.batch.cli import main as cli_main

    return cli_main(argv)
