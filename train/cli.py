"""`uld-train`: train a ULD assistant (a bundle comes out) or an unlearning baseline (an HF checkpoint comes out)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from uld_train.config import DTYPES, TrainConfig
from uld_train.data import check_unscored
from uld_train.loop import check_config, train, training_pairs
from uld_train.methods import METHODS
from uld_vllm.errors import command

EPILOG = """examples:
  uld-train --target DIR --forget tofu:forget05 --retain tofu:retain95 --output bundle
  uld-train --target llama --forget forget10.json --retain retain90.json --output uld-bundle
  uld-train --method npo_gd --target llama --forget forget10.json --retain retain90.json --output npo-model
  uld-train ... --snapshot-every 1 --eval-data tofu:forget05   (every epoch's model scored through one engine)
Data: parquet or JSON lines with question/answer columns; paraphrased_question, paraphrased_answer and
perturbed_answer columns, when present, augment the data (see uld_train.data). tofu:NAME is TOFU's own file NAME,
shipped with uld: full, forget01|05|10, retain99|95|90, forget01|05|10_perturbed, retain_perturbed,
real_authors_perturbed, world_facts_perturbed (see uld_vllm.tofu); forgetNN_perturbed asks forgetNN's questions
and adds TOFU's paraphrases, which augment the forget set."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uld-train",
        description="Train a ULD assistant (LoRA on the target's first K layers) or an unlearning baseline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target", required=True, type=Path, help="target HF checkpoint directory (safetensors + tokenizer)"
    )
    p.add_argument("--forget", required=True, type=Path, help="forget set (.parquet, .json, .jsonl or tofu:NAME)")
    p.add_argument("--retain", type=Path, default=None, help="retain set, same formats (needed by all but ga and npo)")
    p.add_argument("--output", required=True, type=Path, help="bundle (uld) or HF checkpoint (baselines) to write")
    p.add_argument("--method", choices=list(METHODS), default="uld", help="objective (default: uld)")
    p.add_argument("--layers", type=int, default=None, help="uld: assistant depth K (default: max(1, depth // 4))")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (default 32)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    p.add_argument(
        "--lora",
        action="store_true",
        help="baselines: train LoRA adapters, merged when saving (default: all parameters)",
    )
    p.add_argument(
        "--retain-weight",
        type=float,
        default=None,
        help="weight of the retain term (default: 5.0 for uld, 1.0 for baselines)",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default: 1e-3 with LoRA, 1e-5 full-parameter)"
    )
    p.add_argument("--epochs", type=int, default=5, help="passes over the forget set (default 5)")
    p.add_argument(
        "--stop-epoch",
        type=int,
        default=None,
        metavar="E",
        help="stop after epoch E of the --epochs schedule: the model a whole run's epoch-E snapshot is (default: none)",
    )
    p.add_argument(
        "--batch-size", type=int, default=8, help="forget examples per micro-batch, with as many retain (default 8)"
    )
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimizer step (default 2)")
    p.add_argument("--max-length", type=int, default=512, help="max tokens per example (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed for LoRA init, dropout and data order (default 0)")
    p.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="weights' dtype (default float32)",
    )
    p.add_argument(
        "--autocast",
        choices=["float32", "bfloat16"],
        default=None,
        help="forward's compute dtype (default: bfloat16 on CUDA, float32 on CPU; bfloat16 pays on CPUs with avx512_bf16)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps before cosine decay (default 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 disables (default 1.0)")
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations in backward (less memory)"
    )
    p.add_argument(
        "--save-every", type=int, default=0, help="checkpoint every N steps into OUTPUT.train/ (default: never)"
    )
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="also write the model every N epochs to OUTPUT.snapshots/epoch-E (default: never)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUTPUT.train/")
    p.add_argument(
        "--no-augment", dest="augment", action="store_false", help="ignore paraphrase / perturbed-answer columns"
    )
    p.add_argument(
        "--weight", type=float, default=-0.8, help="uld: ULD weight w written into the bundle (default -0.8)"
    )
    p.add_argument(
        "--filter", type=float, default=0.0, help="uld: relative-top filter r written into the bundle (default 0)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    p.add_argument(
        "--eval-data",
        default=None,
        metavar="DIR|tofu:NAME",
        help="after training, TOFU-evaluate each snapshot and the output through one engine into OUTPUT.eval/<name>; "
        "refused when the run would train on an answer this data scores",
    )
    return p


@command("uld-train")
def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    eval_data = args.pop("eval_data")
    config = TrainConfig(**args)
    if eval_data is not None:
        from uld_vllm.engine import in_process_engine_core
        from uld_vllm.eval.data import read_eval_data

        in_process_engine_core()
        pairs = training_pairs(config, check_config(config))
        check_unscored(*pairs, read_eval_data(eval_data))  # bad data fails now, not after training
    result = train(config)
    terms = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items() if k not in ("step", "epoch", "elapsed_s"))
    what = f"ULD bundle (K={result.layers})" if result.layers is not None else "HF checkpoint"
    print(f"uld-train: wrote {what} to {result.output} after {result.steps} steps ({terms})")
    if eval_data is not None:
        evaluate_run(config, eval_data)
    return 0


def evaluate_run(config: TrainConfig, data: str) -> None:
    """The run's snapshots (by epoch) and its output through one engine (uld-eval's evaluate_checkpoints): a sweep
    pays one engine start per run, not one per checkpoint."""
    from uld_vllm.eval.cli import summary_line
    from uld_vllm.eval.run import EvalSettings, evaluate_checkpoints

    models = [str(p) for p in config.epoch_models()]
    root = config.output.with_name(config.output.name + ".eval")
    outputs = [str(root / Path(model).name) for model in models]
    settings = EvalSettings(model=models[0], data=data, progress=config.progress)
    for output, result in zip(outputs, evaluate_checkpoints(settings, models, outputs), strict=True):
        print(f"uld-train: evaluated {output}{summary_line(result, settings.splits)}")


if __name__ == "__main__":
    sys.exit(main())
