"""`uld-demo`: the target's answer and the ULD answer side by side, so forgetting and retention show at a glance.

Runs uld-batch twice over the same prompts: once with weight 0 (ULD with w = 0 is exactly the target, tested token
for token against plain vLLM) and once with the bundle's weight. The default model and prompts ship with uld: a
mini-TOFU target and a ULD assistant trained to forget the forget10 authors (see `uld-minitofu default-model`).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq

from uld_vllm.batch import BatchConfig, run
from uld_vllm.batch.config import default_bundle
from uld_vllm.engine import DTYPE_ENV, DTYPES, quiet_vllm
from uld_vllm.errors import UldError

EXAMPLE_PROMPTS = Path(__file__).resolve().parent.parent / "examples" / "prompts.parquet"
GROUP_LABELS = {"forget": "forget author (should be forgotten)", "retain": "retain author (should be kept)"}


def answers(model: Path, prompts: Path, output: Path, weight: float | None, options: dict) -> list[dict]:
    """uld-batch over the prompts; rows in input order."""
    config = BatchConfig(input=str(prompts), output=str(output), model=str(model), weight=weight, **options)
    run(config)
    return pq.read_table(output).to_pylist()


def show(target: list[dict], uld: list[dict], width: int = 100) -> None:
    def wrap(label: str, text: str) -> str:
        return textwrap.fill(text.strip() or "(empty)", width, initial_indent=label, subsequent_indent=" " * len(label))

    for before, after in zip(target, uld, strict=True):
        group = before.get("set")
        print(f"[{GROUP_LABELS.get(group, group or 'prompt')}] {before.get('question') or before['prompt']}")
        print(wrap("    target: ", before["generated_text"]))
        print(wrap("    ULD:    ", after["generated_text"]))
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uld-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="ULD bundle (default: the embedded mini-TOFU bundle)")
    parser.add_argument("--input", default=str(EXAMPLE_PROMPTS), help="prompts parquet (default: examples/)")
    parser.add_argument("--output-dir", default="out/demo", help="where both runs' parquet outputs go")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--dtype", choices=DTYPES, default=None, help=f"default: ${DTYPE_ENV}, else by CPU flags")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    args = parser.parse_args(argv)
    quiet_vllm(args.verbose)
    # In-process engine cores: two engine starts in a few seconds each instead of a subprocess per engine.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        model = Path(args.model) if args.model else default_bundle()
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        options = {"max_tokens": args.max_tokens, "dtype": args.dtype, "engine_args": {"enforce_eager": True}}
        target = answers(model, Path(args.input), out / "target.parquet", 0.0, options)
        uld = answers(model, Path(args.input), out / "uld.parquet", None, options)
    except UldError as e:
        print(f"uld-demo: error: {e}", file=sys.stderr)
        return 2
    show(target, uld)
    print(f"uld-demo: {len(uld)} prompts, target (weight 0) and ULD ({model}); outputs in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
