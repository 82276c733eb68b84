"""Fluent forgetting on the real model: ULD's decoding variants on the SmolLM2 study, each judged for fluency.

Every variant is the study's ULD bundle (its target and its assistant, unchanged) with one decoding setting changed,
so all of them run through one engine (uld-eval's evaluate_checkpoints). Each is evaluated on TOFU's forget05 forget
and retain splits, its greedy answers judged by the pretrained SmolLM2 (before TOFU fine-tuning). Reported per
variant: ROUGE-L recall on both splits, Forget Quality against the forget05 retain model, and the gibberish rate of
its forget and retain answers against the retain model's own answers (the share above their 95th percentile of judge
NLL). Finished evaluations (a run.json in their output) are reused: delete out/fluency to redo them.

Assistant variants (ASSISTANTS) train a new assistant on the study's data with one recipe change; each of its
snapshots is a variant decoded with the paper's settings, so a row shows how fluency moves as the assistant learns to
remember the forget set (its forget NLL, teacher-forced, from the training log).

    python bench/fluency_variants.py        # writes bench/results/fluency-smollm2.{json,md}
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SPLIT = "forget05"
# name -> changes to the bundle's "uld" section. The paper's semantics first; then the floor of kept tokens between
# DoLa's (1) and ULD's (int(r * V) = 4,915 of SmolLM2's 49,152 at r = 0.1), and a weaker weight.
VARIANTS: dict[str, dict] = {
    "paper": {},
    "min_keep-1": {"min_keep": 1},
    "min_keep-16": {"min_keep": 16},
    "min_keep-64": {"min_keep": 64},
    "min_keep-256": {"min_keep": 256},
    "min_keep-1024": {"min_keep": 1024},
    "weight-0.4": {"weight": -0.4},
}

# name -> changes to the study's assistant recipe (uld_train.tofu_study.ULD_RECIPE); a snapshot every SNAPSHOT_EVERY
# epochs. The study's assistant ended 20 epochs at a forget NLL of 5.2 nats (the target's: 0.05): it never
# remembered the forget set, which is what ULD's assistant is for.
ASSISTANTS: dict[str, dict] = {"epochs-40": {"epochs": 40}, "layers-15": {"layers": 15}}  # and half the depth
SNAPSHOT_EVERY = 10


def variant_bundle(base: Path, directory: Path, changes: dict) -> Path:
    """The base bundle with `changes` in its uld section: its files linked, its config.json rewritten."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in base.iterdir():
        link = directory / entry.name
        if entry.name != "config.json" and not link.is_symlink():
            link.symlink_to(entry.resolve())
    config = json.loads((base / "config.json").read_text())
    config["uld"] = config["uld"] | changes
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def trained_assistant(name: str, target: Path, work: Path, progress: bool) -> dict[str, tuple[Path, float]]:
    """ASSISTANTS[name] trained on the study's forget and retain data (reused when its stamp matches): each
    snapshot's variant name -> (its bundle, the assistant's mean forget NLL over that epoch's steps)."""
    from uld_train.config import TrainConfig, stamp_fields
    from uld_train.loop import LOG_NAME, train
    from uld_train.tofu_study import ULD_RECIPE, write_rows
    from uld_vllm import stamps, tofu
    from uld_vllm.machine import cpu_dtype, cpu_flags
    from uld_vllm.smollm2_tofu import FORGET_AUTHORS, model_authors

    data = work / "data"
    config = TrainConfig(
        target=target,
        forget=write_rows(data / f"{SPLIT}.jsonl", tofu.subset(FORGET_AUTHORS[SPLIT])),
        retain=write_rows(data / f"retain_{SPLIT}.jsonl", tofu.subset(model_authors()[f"retain_{SPLIT}"])),
        output=work / "assistants" / name,
        autocast=cpu_dtype(cpu_flags()),
        snapshot_every=SNAPSHOT_EVERY,
        progress=progress,
        **(ULD_RECIPE | ASSISTANTS[name]),
    )
    record = stamp_fields(config, text=True)
    stamp = config.output.with_name(f"{name}.json")
    if stamps.matching(stamp, record, subset=True) is None:
        train(config)
        stamps.write(stamp, record)
    steps = [json.loads(line) for line in (config.output / LOG_NAME).read_text().splitlines()]
    models = config.epoch_models()
    epochs = [SNAPSHOT_EVERY * k for k in range(1, len(models))] + [config.epochs]
    variants = {}
    for epoch, model in zip(epochs, models, strict=True):
        nll = [s["forget_nll"] for s in steps if epoch - 1 < s["epoch"] <= epoch]
        variants[f"{name}@{epoch}"] = (model, sum(nll) / len(nll))
    return variants


def split_logs(directory: Path) -> dict:
    from uld_vllm.eval.metrics import FORGET_LOG, RETAIN_LOG

    return {name: json.loads((directory / name).read_text()) for name in (FORGET_LOG, RETAIN_LOG)}


def evaluate(models: list[Path], outputs: list[Path], judge: Path, progress: bool) -> None:
    """The models whose logs are missing, through one engine (all variants are one target's bundles)."""
    from uld_train.tofu_study import EVAL_NEW_TOKENS
    from uld_vllm.eval.run import EvalSettings, evaluate_checkpoints

    todo = [(m, o) for m, o in zip(models, outputs, strict=True) if not (o / "run.json").is_file()]
    if not todo:
        return
    settings = EvalSettings(
        model=str(todo[0][0]),
        data=f"tofu:{SPLIT}",
        splits=("forget", "retain"),
        max_new_tokens=EVAL_NEW_TOKENS,
        judge=str(judge),
        progress=progress,
    )
    evaluate_checkpoints(settings, [str(m) for m, _ in todo], [str(o) for _, o in todo])


def figures(logs: dict, retain: dict) -> dict:
    import numpy as np

    from uld_vllm.eval.metrics import FLUENCY_KEY, FORGET_LOG, RETAIN_LOG, forget_quality, gibberish_rate, repetitive

    rouge = {name: float(np.mean(list(logs[log]["rougeL_recall"].values()))) for name, log in
             (("rouge_forget", FORGET_LOG), ("rouge_retain", RETAIN_LOG))}  # fmt: skip
    judged = [v for v in logs[FORGET_LOG][FLUENCY_KEY].values() if v is not None]
    gibberish = gibberish_rate(logs, retain)
    return rouge | {
        "forget_quality": forget_quality(logs, retain)["Forget Quality"],
        "gibberish_forget": gibberish["Gibberish Forget"],
        "gibberish_retain": gibberish["Gibberish Retain"],
        "judge_nll_forget": float(np.mean(judged)),
        # uld-eval's repetition flag, from the answers (logs made before it existed lack the key)
        "loops_forget": float(np.mean([repetitive(g[1]) for g in logs[FORGET_LOG]["generated_text"].values()])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "fluency")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="decoding variants (default: all)")
    parser.add_argument("--assistants", default=",".join(ASSISTANTS), help="assistant variants (default: all)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    args = parser.parse_args()

    from uld_vllm.engine import in_process_engine_core, quiet_vllm, resolve_dtype

    in_process_engine_core()
    quiet_vllm(args.verbose)
    from uld_vllm.machine import machine_info
    from uld_vllm.smollm2_tofu import ADAPTERS, assemble, base_dir

    names, assistants = args.variants.split(","), [a for a in args.assistants.split(",") if a]
    unknown = sorted(set(names) - set(VARIANTS)) + sorted(set(assistants) - set(ASSISTANTS))
    if unknown:
        known = ", ".join([*VARIANTS, *ASSISTANTS])
        raise SystemExit(f"fluency_variants: unknown variant(s) {', '.join(unknown)} (known: {known})")
    models = assemble((f"retain_{SPLIT}", "uld"))
    bundles = [variant_bundle(models["uld"], args.work / "bundles" / name, VARIANTS[name]) for name in names]
    retain_out = args.work / "eval" / f"retain_{SPLIT}"
    evaluate([models[f"retain_{SPLIT}"]], [retain_out], base_dir(), args.progress)
    outputs = [args.work / "eval" / name for name in names]
    evaluate(bundles, outputs, base_dir(), args.progress)

    retain = split_logs(retain_out)
    rows = {"retain model": figures(retain, retain)} | {
        name: figures(split_logs(output), retain) for name, output in zip(names, outputs, strict=True)
    }
    committed_nll = json.loads((ADAPTERS / "assistant" / "uld-train.json").read_text())["final"]["forget_nll"]
    for name in names:  # decoding variants: the study's assistant
        rows[name]["assistant_forget_nll"] = committed_nll
    for name in assistants:
        snapshots = trained_assistant(name, models["target"], args.work, args.progress)
        outputs = [args.work / "eval" / snapshot for snapshot in snapshots]
        evaluate([bundle for bundle, _ in snapshots.values()], outputs, base_dir(), args.progress)
        for (snapshot, (_, nll)), output in zip(snapshots.items(), outputs, strict=True):
            rows[snapshot] = figures(split_logs(output), retain) | {"assistant_forget_nll": nll}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {
        "command": "python bench/fluency_variants.py " + " ".join(sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "machine": machine_info(resolve_dtype(None)),
        "split": SPLIT,
        "variants": {name: VARIANTS[name] for name in names},
        "assistants": {name: ASSISTANTS[name] | {"snapshot_every": SNAPSHOT_EVERY} for name in assistants},
        "bundle_uld": json.loads((models["uld"] / "config.json").read_text())["uld"],
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fluency-smollm2.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / "fluency-smollm2.md").write_text(report(record))
    print(report(record))
    return 0


def report(record: dict) -> str:
    m, u = record["machine"], record["bundle_uld"]
    lines = [
        "# Fluent forgetting: ULD's decoding variants on the SmolLM2 study (TOFU forget05)",
        "",
        f"Command: `{record['command']}` at commit {record['commit']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; dtype {m['dtype']}.",
        f"The study's ULD bundle: K = {u['assistant_layers']}, w = {u['weight']}, r = {u['filter']}; each decoding "
        "variant changes one setting. An assistant variant (name@E) is a newly trained assistant's epoch-E snapshot "
        "with the study's decoding; its forget NLL is the training log's mean over that epoch (teacher-forced, nats per "
        "answer token; the target's is about 0.05). Judge: the pretrained SmolLM2-135M-Instruct; gibberish: answers "
        "above the 95th percentile of the retain model's own answers' judge NLL on the same split; loops: answers in "
        "which a run of 3 words occurs 3 times (uld-eval's `repetitive`).",
        "",
        "| variant | change | assistant forget NLL | ROUGE-L forget | ROUGE-L retain | Forget Quality | gibberish forget "
        "| gibberish retain | judge NLL forget | loops forget |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in record["rows"].items():
        trained, _, epoch = name.partition("@")
        if trained in record.get("assistants", {}):
            recipe = ", ".join(f"{k} {v}" for k, v in record["assistants"][trained].items())
            change = f"assistant trained with {recipe}; epoch {epoch}"
        else:
            change = ", ".join(f"{k} {v}" for k, v in record["variants"].get(name, {}).items()) or "-"
        nll = row.get("assistant_forget_nll")
        lines.append(
            f"| {name} | {change} | {'-' if nll is None else f'{nll:.2f}'} | {row['rouge_forget']:.3f} | "
            f"{row['rouge_retain']:.3f} | {row['forget_quality']:.2g} | {row['gibberish_forget']:.3f} | "
            f"{row['gibberish_retain']:.3f} | {row['judge_nll_forget']:.2f} | {row['loops_forget']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
