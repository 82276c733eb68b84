"""The uld-batch command: options in, one summary line (or one error line, exit 2) out."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from uld_vllm.batch.config import BatchConfig, BatchError
from uld_vllm.batch.job import run
from uld_vllm.engine import DTYPE_ENV, DTYPES, in_process_engine_core, quiet_vllm
from uld_vllm.errors import command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uld-batch", description="ULD generation over parquet prompts (vLLM engine).")
    p.add_argument("--input", required=True, help="parquet file, directory of parquet files, or glob")
    p.add_argument("--output", required=True, help="output parquet file (written atomically when the job is done)")
    p.add_argument("--model", default=None, help="ULD bundle directory (default: the embedded mini-TOFU bundle)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--id-column", default="id")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--weight", type=float, default=None, help="ULD weight override")
    p.add_argument("--filter", type=float, default=None, help="relative-top filter override")
    p.add_argument("--batch-size", type=int, default=512, help="rows per committed part")
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's own, at most 8192)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help=f"engine dtype (default: ${DTYPE_ENV}, else bfloat16 on CPUs with avx512_bf16/amx, float32 on other CPUs, "
        "the checkpoint's on CUDA)",
    )
    p.add_argument("--on-bad-row", choices=["fail", "skip", "record"], default="fail")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=JSON", help="extra vllm.LLM argument")
    p.add_argument("--ray", action="store_true", help="shard across Ray engine replicas")
    p.add_argument("--address", default=None, help="Ray cluster address")
    p.add_argument("--num-replicas", type=int, default=1)
    p.add_argument("--show", type=int, default=0, metavar="N", help="print the first N output rows when done")
    p.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    return p


def parse_engine_args(pairs: list[str]) -> dict[str, Any]:
    """--engine-arg KEY=VALUE pairs; VALUE is JSON when it parses as JSON, else a string."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BatchError(f"--engine-arg {pair!r} is not KEY=VALUE")
        try:
            parsed[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.replace("-", "_")] = value
    return parsed


@command("uld-batch")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_vllm(args.verbose)
    # VLLM_ENABLE_V1_MULTIPROCESSING=1 overlaps output processing with the model; --ray gives parallel engines.
    in_process_engine_core()
    options = {k: v for k, v in vars(args).items() if k not in ("engine_arg", "show", "verbose")}
    summary = run(BatchConfig(**options, engine_args=parse_engine_args(args.engine_arg)))
    if args.show > 0:
        show_rows(Path(args.output), args.show)
    print(summary.line())
    return 0


def show_rows(output: Path, count: int) -> None:
    rows = pq.ParquetFile(output).iter_batches(batch_size=count, columns=["id", "prompt", "generated_text"])
    for row in next(rows).to_pylist():
        print(f"[{row['id']}] {row['prompt']!r}\n    -> {row['generated_text']!r}")


if __name__ == "__main__":
    sys.exit(main())
