"""bench/throughput.py's command line: its flags, and the worker processes' hidden ones."""

from __future__ import annotations

import argparse
import json

from bench.throughput_parts.run import run
from bench.throughput_parts.settings import SHAPES, SYSTEMS
from bench.throughput_parts.workers import run_worker


def build_parser(description: str) -> argparse.ArgumentParser:
    from uld_vllm.engine import DTYPES

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--shape",
        choices=[s for s in SHAPES if s != "quick"],
        default="smollm2",
        help="smollm2: the real model on TOFU's text (default); bench, large: random models with a fitted head",
    )
    parser.add_argument("--batch-sizes", default="1,8,32,64,128")
    parser.add_argument("--reference-batch-sizes", default="1,8,64", help="the HF reference is slow: a subset")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scoring-texts", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2, help="best of N per measurement")
    for kind in ("warm", "cold"):
        parser.add_argument(
            f"--{kind}-start-rounds",
            type=int,
            default=None,
            help=f"interleaved {kind} start rounds after each system's first one (default: --repeats; 0: none)",
        )
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: $ULD_DTYPE, else by CPU flags")
    parser.add_argument("--work", default="out/bench-models")
    parser.add_argument("--quick", action="store_true", help="tiny shape and sizes: checks the script, not speed")
    parser.add_argument("--tag", help="results as throughput[-shape]-TAG.*: a partial run beside the full one")
    parser.add_argument("--resume", action="store_true", help="reuse the phases an earlier run of this spec finished")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    """A whole run, or (--worker) one worker process: its JSON result on stdout's last line."""
    args = build_parser(description).parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, json.loads(args.spec))))
        return 0
    run(args, argv)
    return 0
