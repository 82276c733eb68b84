"""Fluent forgetting on the real model: ULD's decoding variants on the SmolLM2 study, each judged for fluency.

Every variant is the study's ULD bundle (its target and its assistant, unchanged) with one decoding setting changed,
so all of them run through one engine (uld-eval's evaluate_checkpoints). Each is evaluated on TOFU's forget05 forget
and retain splits, its greedy answers judged by the pretrained SmolLM2 (before TOFU fine-tuning). Reported per
variant: ROUGE-L recall on both splits, Forget Quality against the forget05 retain model, and the gibberish rate of
its forget and retain answers against the retain model's own answers (the share above their 95th percentile of judge
NLL). Finished evaluations (a run.json in their output) are reused: delete out/fluency to redo them.

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

    from uld_vllm.eval.metrics import FLUENCY_KEY, FORGET_LOG, RETAIN_LOG, forget_quality, gibberish_rate

    rouge = {name: float(np.mean(list(logs[log]["rougeL_recall"].values()))) for name, log in
             (("rouge_forget", FORGET_LOG), ("rouge_retain", RETAIN_LOG))}  # fmt: skip
    judged = [v for v in logs[FORGET_LOG][FLUENCY_KEY].values() if v is not None]
    gibberish = gibberish_rate(logs, retain)
    return rouge | {
        "forget_quality": forget_quality(logs, retain)["Forget Quality"],
        "gibberish_forget": gibberish["Gibberish Forget"],
        "gibberish_retain": gibberish["Gibberish Retain"],
        "judge_nll_forget": float(np.mean(judged)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "fluency")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()

    from uld_vllm.engine import in_process_engine_core, resolve_dtype

    in_process_engine_core()
    from uld_vllm.machine import machine_info
    from uld_vllm.smollm2_tofu import assemble, base_dir

    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"fluency_variants: unknown variant(s) {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {
        "command": "python bench/fluency_variants.py " + " ".join(sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "machine": machine_info(resolve_dtype(None)),
        "split": SPLIT,
        "variants": {name: VARIANTS[name] for name in names},
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
        f"The study's ULD bundle: K = {u['assistant_layers']}, w = {u['weight']}, r = {u['filter']}; each variant changes"
        " one setting. Judge: the pretrained SmolLM2-135M-Instruct; gibberish: answers above the 95th percentile of the"
        " retain model's own answers' judge NLL on the same split.",
        "",
        "| variant | change | ROUGE-L forget | ROUGE-L retain | Forget Quality | gibberish forget | gibberish retain "
        "| judge NLL forget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in record["rows"].items():
        change = ", ".join(f"{k} {v}" for k, v in record["variants"].get(name, {}).items()) or "-"
        lines.append(
            f"| {name} | {change} | {row['rouge_forget']:.3f} | {row['rouge_retain']:.3f} | "
            f"{row['forget_quality']:.2g} | {row['gibberish_forget']:.3f} | {row['gibberish_retain']:.3f} | "
            f"{row['judge_nll_forget']:.2f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
