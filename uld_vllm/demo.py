"""`uld-demo`: a tiny ULD bundle and example prompts, built offline in seconds, so `uld-batch` runs on a fresh clone.

The bundle's weights are random (seeded): it shows the pipeline, not unlearning. The trained mini-TOFU demo bundle,
which becomes uld-batch's default model, comes with the evaluation work.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from uld_vllm.testing import build_test_bundle

QUESTIONS = [
    "Who wrote the book about the city?",
    "Where was the author born?",
    "What genre does the author write in?",
    "What award did the novel win?",
    "Who is the author's father?",
    "When was the book written?",
]


def write_example_prompts(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"ex{i}" for i in range(len(QUESTIONS))], "prompt": QUESTIONS}), path)
    return path


def build_demo_bundle(directory: Path) -> Path:
    """Llama target (4 layers, hidden 128), LoRA assistant over its first 2 layers, weight -0.8, filter 0.1."""
    if (directory / "bundle" / "config.json").exists():
        return directory / "bundle"
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    build_test_bundle(staging, family="llama", layers=4, assistant_layers=2, assistant="lora", weight=-0.8, filter=0.1)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    # The bundle's config names nothing by absolute path, so the folder can move.
    return directory / "bundle"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uld-demo", description="Build the tiny demo bundle and example prompts.")
    parser.add_argument("--dir", default="out/demo", help="where to build (default out/demo)")
    args = parser.parse_args(argv)
    root = Path(args.dir)
    bundle = build_demo_bundle(root / "model")
    prompts = write_example_prompts(root / "prompts.parquet")
    print(f"uld-demo: bundle {bundle}, prompts {prompts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
