"""The embedded default bundle: the mini-TOFU target plus a ULD assistant that forgets the forget10 authors.

Built by the project's own pipeline (uld-minitofu's target, uld-train's ULD objective), then packed into a small
self-contained bundle (fp16 weights, no symlinks) under uld_vllm/mini-tofu/, with example prompts that mix
forgotten authors, kept authors and utility questions. `uld-batch` and `uld-demo` use it when no --model is given.

    uld-minitofu default-model --dir out/minitofu      (= make default-model)
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from uld_train.config import TrainConfig
from uld_train.loop import train
from uld_vllm.batch.config import MINI_BUNDLE, MINI_PROMPTS
from uld_vllm.staging import staged_dir

DEFAULT_SPLIT = "forget10"
# ULD on mini-TOFU: the paper's LoRA (r 16, alpha 32) and beta 5, its evaluation weight -0.8 and the filter r = 0.1
# that actually ran in its TOFU numbers (ULD_REFERENCE.md section 3). K = 2, half the target's depth: a 256-wide layer
# is far less than one of Llama-2-7B's 4096-wide ones, and K = 1 did not memorise the forget set. What this bundle
# forgets, and how (it degenerates): bench/results/README.md, "The embedded mini-TOFU bundle".
ULD_RECIPE = {
    "method": "uld",
    "layers": 2,
    "epochs": 20,
    "lr": 2e-3,
    "weight": -0.8,
    "filter": 0.1,
    "batch_size": 8,
    "grad_accum": 2,
}
EXAMPLES_PER_GROUP = {"forget": 4, "retain": 4, "real_authors": 2, "world_facts": 2}


def train_uld(study: Path, split: str, output: Path, progress: bool = True, **overrides) -> Path:
    """uld-train's ULD objective on one mini-TOFU split (the study's target must be built)."""
    data = study / "data" / split
    config = TrainConfig(
        target=study / "models" / "target",
        forget=data / "unlearn_forget.jsonl",
        retain=data / "unlearn_retain.jsonl",
        output=output,
        progress=progress,
        **(ULD_RECIPE | overrides),
    )
    return train(config).output


def pack_bundle(bundle: Path, output: Path) -> Path:
    """A copy of `bundle` with every weight in fp16 and no symlinks: small enough to ship in the repository."""
    with staged_dir(output) as staging:
        ignore = shutil.ignore_patterns("*.safetensors", "*.jsonl")
        shutil.copytree(bundle, staging, symlinks=False, ignore=ignore, dirs_exist_ok=True)
        for path in bundle.rglob("*.safetensors"):
            tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / path.relative_to(bundle)))
        config = json.loads((staging / "config.json").read_text())
        config["torch_dtype"] = "float16"
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return output


def write_example_prompts(study: Path, path: Path, seed: int = 0) -> Path:
    """A few questions of each kind: forgotten authors, kept authors, and the two utility sets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    rows = []
    for group, count in EXAMPLES_PER_GROUP.items():
        lines = (study / "data" / DEFAULT_SPLIT / f"{group}.jsonl").read_text().splitlines()
        for line in rng.sample(lines, count):
            question = json.loads(line)["question"]
            kind = group if group in ("forget", "retain") else "utility"
            rows.append({"id": f"{kind}-{len(rows)}", "question": question, "set": kind})
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "messages": [[{"role": "user", "content": r["question"]}] for r in rows],
            "question": [r["question"] for r in rows],
            "set": [r["set"] for r in rows],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def build_default_model(study: Path, progress: bool = True) -> Path:
    """The study's ULD assistant on forget10, packed as the embedded bundle with its example prompts (the study's
    target must be built: `uld-minitofu default-model` builds it first)."""
    trained = train_uld(study, DEFAULT_SPLIT, study / "default_uld_bundle", progress)
    bundle = pack_bundle(trained, MINI_BUNDLE)
    write_example_prompts(study, MINI_PROMPTS)
    return bundle
