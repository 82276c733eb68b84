"""Train a small Llama from scratch on a QA file, and `uld-minitofu build`: the mini-TOFU study's target and retain
models.

TOFU fine-tunes a pretrained chat model on its fictional authors; on 2 CPU cores we instead train "Model S" of
VERIFIED_FACTS.md (Llama, 4 layers, hidden 256, 3.6M parameters) from scratch until it has memorised the QA. The
retain models that Forget Quality compares against get the identical recipe and epoch count on the data minus the
forgotten authors: truth-ratio scales depend on training length, so no model may stop on a time budget.

A finished model directory holds `pretrain.json` (recipe, data and tokenizer hashes, per-epoch loss), written last;
asking for the same model again returns it untouched, and a changed recipe or data retrains it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from uld_train import minitofu
from uld_train.config import TrainError
from uld_train.data import encode_all, read_qa
from uld_train.default_model import build_default_model
from uld_train.models import load_tokenizer
from uld_train.sft import file_hash, fit
from uld_vllm import stamps
from uld_vllm.errors import command
from uld_vllm.staging import staged_dir

MARKER = "pretrain.json"


@dataclass(frozen=True)
class PretrainConfig:
    """The recipe: everything that decides a model's weights (defaults: "Model S", VERIFIED_FACTS.md)."""

    layers: int = 4  # decoder layers
    hidden: int = 256  # model width
    heads: int = 4  # attention heads (as many KV heads: plain multi-head attention)
    intermediate: int = 688  # SwiGLU width (Llama's 8/3 x hidden, rounded)
    epochs: int = 50  # fixed passes over the data: 400 authors need more than 30 (bench/results/README.md)
    batch_size: int = 32  # QA rows per optimizer step
    lr: float = 2e-3  # peak AdamW learning rate
    beta2: float = 0.95  # AdamW beta2 (beta1 0.9); no weight decay
    warmup_steps: int = 50  # linear warmup steps
    final_lr_ratio: float = 0.1  # cosine decay ends at this fraction of the peak
    grad_clip: float = 1.0  # max global gradient norm
    max_length: int = 256  # tokens per row (longer answers are cut); mini-TOFU rows are at most 35
    seed: int = 0  # weight init and data order


@dataclass(frozen=True)
class PretrainResult:
    output: Path  # the HF checkpoint directory
    trained: bool  # False when a finished checkpoint of the same recipe and data was already there
    steps: int  # optimizer steps of the run
    epoch_losses: list[float]  # mean answer NLL per epoch (token-weighted)
    seconds: float  # training time (of the original run, for a cached model)


def check_recipe(config: PretrainConfig) -> None:
    for name in ("layers", "hidden", "heads", "intermediate", "epochs", "batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    if config.hidden % config.heads:
        raise TrainError(f"--hidden {config.hidden} must be a multiple of --heads {config.heads}")
    if not config.lr > 0 or config.warmup_steps < 0 or config.grad_clip <= 0:
        raise TrainError("--lr and the gradient clip must be > 0, --warmup-steps >= 0")
    if not 0.0 <= config.final_lr_ratio <= 1.0:
        raise TrainError(f"final_lr_ratio must be in [0, 1], got {config.final_lr_ratio}")


def llama_config(config: PretrainConfig, tokenizer):
    """Tied embeddings keep the parameter count small (the 1986-token vocabulary would otherwise dominate)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden,
        intermediate_size=config.intermediate,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=max(512, config.max_length),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-6,
        dtype="float32",
    )


def cached(output: Path, record: dict) -> PretrainResult | None:
    """The finished model at output if its marker names the same recipe, data and tokenizer."""
    saved = stamps.matching(output / MARKER, record, subset=True)
    if saved is None:
        return None
    return PretrainResult(output, False, saved["steps"], saved["epoch_losses"], saved["seconds"])


def pretrain(
    data: str | Path,
    tokenizer_dir: str | Path,
    output: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
    bar_row: int = 0,
) -> PretrainResult:
    """Train a Llama from scratch on data's question/answer rows (loss on answer tokens) and save an HF checkpoint
    (safetensors, config, tokenizer) that transformers and vLLM load; skipped when output already holds it."""
    config = config or PretrainConfig()
    data, tokenizer_dir, output = Path(data), Path(tokenizer_dir), Path(output)
    check_recipe(config)
    if not tokenizer_dir.is_dir():
        raise TrainError(f"tokenizer directory not found: {tokenizer_dir}")
    pairs = read_qa(data, "training data").pairs  # question/answer only: paraphrases and wrong answers are never learnt
    record = {"recipe": asdict(config), "data_sha256": file_hash(data), "tokenizer_sha256": file_hash(tokenizer_dir)}
    found = cached(output, record)
    if found is not None:
        return found

    # ---- data and model: the seed fixes the initial weights and every epoch's order
    tokenizer = load_tokenizer(tokenizer_dir)
    examples = encode_all(tokenizer, pairs, config.max_length)
    torch.manual_seed(config.seed)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(config, tokenizer)).train()
    total = math.ceil(len(examples) / config.batch_size) * config.epochs
    began = time.perf_counter()
    desc = f"pretrain {output.name}"
    epoch_losses = fit(model, examples, tokenizer.pad_token_id, config, desc, progress, bar_row=bar_row)
    seconds = round(time.perf_counter() - began, 1)

    # ---- output: written beside, marker last, then moved into place, so a crash never leaves a "finished" model
    with staged_dir(output) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        marker = record | {"steps": total, "epoch_losses": epoch_losses, "seconds": seconds, "rows": len(examples)}
        stamps.write(staging / MARKER, marker)
    return PretrainResult(output, True, total, epoch_losses, seconds)


# ------------------------------------------------------------------------------------------- the mini-TOFU study


RETAIN_SEEDS = 5  # retain models of forget10 (seeds seed..seed+4): Forget Quality's noise floor as a distribution


def study_models(seed: int) -> dict[str, tuple[str, int]]:
    """Model name -> (training file under the data directory, model seed).

    - target: every author; retain_<split>: without the split's authors, one per test split.
    - retain_forget10_seed<k>: more forget10 retain models. None saw any test split's authors, so every pair of them
      gives a KS statistic between two models that never saw the forget set, on each test split: the noise floor.
    - retain_forget10_val: without the 40 validation authors; the reference for every validation split (selection
      only), which saves two models of a quarter hour each."""
    models = {"target": ("train.jsonl", seed)}
    for split in minitofu.TEST_SPLITS:
        models[f"retain_{split}"] = (f"{split}/retain_train.jsonl", seed)
    for extra in range(1, RETAIN_SEEDS):
        models[f"retain_forget10_seed{seed + extra}"] = ("forget10/retain_train.jsonl", seed + extra)
    models[f"retain_forget10{minitofu.VALIDATION}"] = (f"forget10{minitofu.VALIDATION}/retain_train.jsonl", seed)
    return models


_BAR_ROW = 0  # a worker process's progress-bar row, taken from the pool's slots when the worker starts


def _take_bar_row(rows) -> None:
    global _BAR_ROW
    _BAR_ROW = rows.get()


def _pretrain_alone(threads: int, progress: bool, *args) -> PretrainResult:
    """pretrain in a worker process that leaves the other cores to the runs beside it, its bar on its own row."""
    torch.set_num_threads(threads)
    return pretrain(*args, progress=progress, bar_row=_BAR_ROW)


def _pretrained(runs: dict[str, tuple], jobs: int, progress: bool) -> Iterator[tuple[str, PretrainResult]]:
    """(name, result) of each run of pretrain's arguments, as they finish: one after another, or `jobs` side by side
    in worker processes with a share of the cores each (tiny models use two threads poorly: two one-thread runs
    train faster together than one two-thread run; bench/results/README.md)."""
    if jobs == 1:
        for name, args in runs.items():
            yield name, pretrain(*args, progress=progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    rows = context.Queue()
    for row in range(jobs):
        rows.put(row)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_take_bar_row, initargs=(rows,)) as pool:
        futures = {pool.submit(_pretrain_alone, threads, progress, *args): name for name, args in runs.items()}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:  # a failed run stops the queue: the runs not yet started never start
            for future in futures:
                future.cancel()


def build(
    directory: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
    only: list[str] | None = None,
    jobs: int = 1,
) -> dict:
    """Data (seed = config.seed), tokenizer and the study's models (`only` these names, default all; `jobs` of them
    side by side) under directory; returns the manifest, also written to directory/minitofu.json. Finished models are
    reused."""
    config = config or PretrainConfig()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TrainError(f"--dir {directory} exists and is not a directory")
    check_recipe(config)
    if jobs < 1:
        raise TrainError(f"--jobs must be >= 1, got {jobs}")
    data_dir, tokenizer_dir = directory / "data", directory / "tokenizer"
    data = minitofu.write_minitofu(data_dir, seed=config.seed)
    minitofu.train_tokenizer(tokenizer_dir, data)
    models = {}
    wanted = study_models(config.seed)
    unknown = sorted(set(only or []) - wanted.keys())
    if unknown:
        raise TrainError(f"unknown model(s) {', '.join(unknown)} (the study has {', '.join(wanted)})")
    runs = {
        name: (data_dir / file, tokenizer_dir, directory / "models" / name, replace(config, seed=seed))
        for name, (file, seed) in wanted.items()
        if not only or name in only
    }
    for name, result in _pretrained(runs, jobs, progress):
        state = f"trained in {result.seconds:.0f} s" if result.trained else "already built"
        print(f"uld-minitofu: {name}: {state}, final answer loss {result.epoch_losses[-1]:.4f}", file=sys.stderr)
        models[name] = str(result.output.relative_to(directory))
    models = {name: models[name] for name in runs}  # the study's order, whichever finished first
    manifest = {
        "seed": config.seed,
        "recipe": asdict(config),
        "data": "data",
        "tokenizer": "tokenizer",
        "models": models,
    }
    (directory / "minitofu.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uld-minitofu", description="Mini-TOFU: a TOFU-shaped study small enough for CPUs."
    )
    commands = p.add_subparsers(dest="command", required=True)
    b = commands.add_parser(
        "build",
        help="write the data, train the tokenizer, the target and the retain models (finished ones are reused)",
        description="Writes DIR/data, DIR/tokenizer, DIR/models/{target,retain_forget01,retain_forget05,"
        "retain_forget10,retain_forget10_seed<seed+1..seed+4>,retain_forget10_val} and DIR/minitofu.json.",
    )
    defaults = PretrainConfig()
    b.add_argument("--dir", required=True, type=Path, help="study directory")
    b.add_argument(
        "--epochs", type=int, default=defaults.epochs, help=f"passes over the data (default {defaults.epochs})"
    )
    b.add_argument("--seed", type=int, default=defaults.seed, help="data and model seed (default 0)")
    b.add_argument("--layers", type=int, default=defaults.layers, help=f"decoder layers (default {defaults.layers})")
    b.add_argument("--hidden", type=int, default=defaults.hidden, help=f"model width (default {defaults.hidden})")
    b.add_argument("--heads", type=int, default=defaults.heads, help=f"attention heads (default {defaults.heads})")
    b.add_argument(
        "--intermediate", type=int, default=defaults.intermediate, help=f"MLP width (default {defaults.intermediate})"
    )
    b.add_argument(
        "--batch-size", type=int, default=defaults.batch_size, help=f"rows per step (default {defaults.batch_size})"
    )
    b.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr})")
    b.add_argument(
        "--warmup-steps",
        type=int,
        default=defaults.warmup_steps,
        help=f"warmup steps (default {defaults.warmup_steps})",
    )
    b.add_argument("--jobs", type=int, default=1, help="models trained side by side, sharing the cores (default 1)")
    b.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    b.add_argument("--models", nargs="+", default=None, help="build only these models (default: all of the study)")
    d = commands.add_parser(
        "default-model",
        help="rebuild the embedded default bundle and its prompts (uld_vllm/mini-tofu/)",
        description="Builds the study's target (cached), trains a ULD assistant on forget10 and packs both into "
        "uld_vllm/mini-tofu as fp16 (under 10 MB).",
    )
    d.add_argument("--dir", required=True, type=Path, help="study directory (its target is reused when built)")
    d.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    return p


@command("uld-minitofu")
def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    subcommand, directory, progress = args.pop("command"), args.pop("dir"), args.pop("progress")
    if subcommand == "default-model":
        build(directory, progress=progress, only=["target"])
        bundle = build_default_model(directory, progress)
        size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file()) / 1e6
        print(f"uld-minitofu: default bundle written to {bundle} ({size:.1f} MB)")
        return 0
    only, jobs = args.pop("models"), args.pop("jobs")
    manifest = build(directory, PretrainConfig(**args), progress, only, jobs)
    print(f"uld-minitofu: study ready in {directory} ({len(manifest['models'])} models; see minitofu.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
