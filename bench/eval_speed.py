"""TOFU evaluation speed: `uld-eval run` through the engine against its own HF reference backend, on the real model.

Each backend evaluates the same model on the same rows in a fresh process, at the same dtype; the wall time counts
everything a user waits for (engine start or HF load, scoring, generation). The engine's logs are checked against
the reference's before a speed-up is reported: answer losses within 1e-3, and how many greedy answers are identical.
Writes bench/results/eval-speed-TAG.{json,md}.

    python bench/eval_speed.py                                # the study's ULD bundle, forget01's four splits
    python bench/eval_speed.py --model target --retain-rows 400
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LOSS_KEYS = ("avg_gt_loss", "avg_paraphrased_loss")


def write_data(directory: Path, forget_split: str, retain_rows: int | None) -> Path:
    """TOFU's evaluation rows for one forget split, retain_perturbed cut to its first `retain_rows`."""
    from uld_vllm.eval.data import SPLIT_FILES
    from uld_vllm.tofu import eval_rows

    directory.mkdir(parents=True, exist_ok=True)
    for split, rows in eval_rows(forget_split).items():
        rows = rows[:retain_rows] if split == "retain" and retain_rows else rows
        (directory / SPLIT_FILES[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def run_backend(backend: str, model: str, data: Path, output: Path, dtype: str, max_new_tokens: int) -> dict:
    """One evaluation in a fresh process: its wall time and uld-eval's own timings."""
    command = [
        sys.executable, "-m", "uld_vllm.eval.cli", "run", "--model", model, "--data", str(data),
        "--output", str(output), "--backend", backend, "--dtype", dtype, "--max-new-tokens", str(max_new_tokens),
    ]  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"eval_speed: {backend} failed: {done.stderr.strip().splitlines()[-1:]}")
    run = json.loads((output / "run.json").read_text())
    return {"wall_seconds": round(wall, 1), "timings": run["timings"], "line": done.stdout.strip().splitlines()[-1]}


def agreement(engine: Path, reference: Path) -> dict:
    """Largest answer-loss difference and identical greedy answers, engine vs reference, over every log."""
    from uld_vllm.eval.metrics import load_eval_logs

    ours, theirs = load_eval_logs(engine), load_eval_logs(reference)
    worst, same, total = 0.0, 0, 0
    for name, log in ours.items():
        for key in LOSS_KEYS:
            for index, value in log.get(key, {}).items():
                worst = max(worst, abs(value - theirs[name][key][index]))
        for index, (_, text, _) in log["generated_text"].items():
            same += text == theirs[name]["generated_text"][index][1]
            total += 1
    return {"max_loss_difference": worst, "identical_generations": same, "generations": total}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="uld", help="a study model name (uld, target, ...) or a model directory")
    parser.add_argument("--forget-split", default="forget01")
    parser.add_argument("--retain-rows", type=int, default=100, help="first N retain_perturbed rows (0: all 400)")
    parser.add_argument("--dtype", default=None, help="both backends' dtype (default: by CPU flags)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--backends", default="vllm,reference")
    parser.add_argument("--tag", default="smollm2")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "eval-speed")
    args = parser.parse_args()

    from uld_vllm.engine import resolve_dtype
    from uld_vllm.machine import machine_info
    from uld_vllm.smollm2_tofu import assemble, model_authors

    dtype = resolve_dtype(args.dtype)
    study_names = (*model_authors(), "uld")
    model = str(assemble((args.model,))[args.model]) if args.model in study_names else args.model
    data = write_data(args.work / "data", args.forget_split, args.retain_rows)
    runs = {}
    for backend in args.backends.split(","):
        print(f"eval_speed: {backend} ...", file=sys.stderr)
        runs[backend] = run_backend(backend, model, data, args.work / backend, dtype, args.max_new_tokens)
        print(f"eval_speed: {backend}: {runs[backend]['wall_seconds']} s | {runs[backend]['line']}", file=sys.stderr)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {
        "command": "python bench/eval_speed.py " + " ".join(sys.argv[1:]),
        "commit": commit.stdout.strip(),
        "machine": machine_info(dtype),
        "model": args.model,
        "forget_split": args.forget_split,
        "retain_rows": args.retain_rows,
        "max_new_tokens": args.max_new_tokens,
        "runs": runs,
    }
    if {"vllm", "reference"} <= runs.keys():
        record["agreement"] = agreement(args.work / "vllm", args.work / "reference")
        record["speedup"] = {
            phase: round(runs["reference"]["timings"][key] / max(runs["vllm"]["timings"][key], 1e-9), 2)
            for phase, key in (("scoring", "score_seconds"), ("generation", "generate_seconds"))
        } | {"whole run": round(runs["reference"]["wall_seconds"] / runs["vllm"]["wall_seconds"], 2)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"eval-speed-{args.tag}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"eval-speed-{args.tag}.md").write_text(report(record))
    print(report(record))
    return 0


def report(record: dict) -> str:
    m, runs = record["machine"], record["runs"]
    lines = [
        f"# uld-eval speed: engine vs HF reference ({record['model']}, TOFU {record['forget_split']})",
        "",
        f"Command: `{record['command']}` at commit {record['commit']}.",
        f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags'])}; dtype {m['dtype']} (both backends).",
        f"Rows: TOFU's {record['forget_split']} evaluation files, retain_perturbed cut to its first "
        f"{record['retain_rows'] or 400}; greedy answers of up to {record['max_new_tokens']} tokens.",
        "",
        "| backend | whole run (s) | load (s) | scoring (s) | answer tokens scored | generation (s) | tokens generated |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, run in runs.items():
        t = run["timings"]
        lines.append(
            f"| {backend} | {run['wall_seconds']:.1f} | {t['load_seconds']:.1f} | {t['score_seconds']:.1f} | "
            f"{t['scored_tokens']} | {t['generate_seconds']:.1f} | {t['generated_tokens']} |"
        )
    if "speedup" in record:
        s, a = record["speedup"], record["agreement"]
        lines += [
            "",
            f"Engine speed-up over the reference: whole run {s['whole run']}x (goal 5x), scoring {s['scoring']}x, "
            f"generation {s['generation']}x.",
            f"Agreement: answer losses within {a['max_loss_difference']:.2g}; "
            f"{a['identical_generations']}/{a['generations']} greedy answers identical.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
