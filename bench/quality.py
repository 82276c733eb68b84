"""The quality study on mini-TOFU: ULD and five baselines under one protocol, selected on validation authors.

    python bench/quality.py                    (= make quality; every finished piece is cached under out/quality,
                                                so a stopped run resumes where it stopped)
    python bench/quality.py --until grid       stop after a phase: build, grid, test, noise (report always runs on
                                                what is there, and says what is missing)

The protocol (PROTOCOL below, recorded in the JSON):
- build: uld-minitofu's data and models (target, a retain model per test split, RETAIN_SEEDS forget10 retain models,
  one retain model without the validation authors).
- grid: every method, every learning rate of one grid, the same maximum epochs, batch and seed, so the same
  optimizer steps; a snapshot every epoch, each evaluated on the split's validation authors. ULD's decoding settings
  (w, r) are evaluated on each of its snapshots and count as part of its search.
- select, fixed before any run: among a method's (lr, epoch[, w, r]) whose validation Model Utility is at least
  UTILITY_FLOOR x the target's, the highest validation Forget Quality; when none passes, the highest Model Utility
  (flagged).
- test: the selected configuration trained with each of SEEDS on the test authors, evaluated at the selected epoch,
  its greedy answers judged for fluency by the split's retain model.
- noise: Forget Quality between every pair of the forget10 retain models (none saw any test author), per test split.
Unlearning trains on unlearn_forget.jsonl / unlearn_retain.jsonl, which hold no text the evaluation scores (checked
before every run). Writes bench/results/quality-minitofu.{json,md,png} and the selected runs' logs beside them.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from uld_vllm.engine import in_process_engine_core  # noqa: E402

in_process_engine_core()

from uld_train import minitofu  # noqa: E402
from uld_train.config import TrainConfig  # noqa: E402
from uld_train.data import check_unscored  # noqa: E402
from uld_train.loop import check_config, train, training_pairs  # noqa: E402
from uld_train.pretrain import MARKER, PretrainConfig, build, study_models  # noqa: E402
from uld_vllm import stamps  # noqa: E402
from uld_vllm.engine import DTYPES, quiet_vllm, resolve_dtype  # noqa: E402
from uld_vllm.eval.data import read_eval_data  # noqa: E402
from uld_vllm.eval.metrics import FORGET_LOG, RETAIN_LOG, aggregate, forget_quality, load_eval_logs  # noqa: E402
from uld_vllm.eval.run import EvalSettings, evaluate_checkpoints  # noqa: E402
from uld_vllm.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NAME = "quality-minitofu"
TEST_SPLITS = tuple(minitofu.TEST_SPLITS)
METHODS = ("uld", "ga", "ga_gd", "ga_kl", "npo", "npo_gd")
LABELS = {"uld": "ULD", "ga": "GA", "ga_gd": "GA+GD", "ga_kl": "GA+KL", "npo": "NPO", "npo_gd": "NPO+GD"}
# What differs between methods is what makes them the method: ULD trains a K-layer LoRA assistant (K = 2 of the
# target's 4: one 256-wide layer could not memorise a forget set, bench/results/README.md); the baselines train every
# parameter, as TOFU runs them. Everything else is PROTOCOL's, the same for all.
METHOD_ARGS = {"uld": {"layers": 2}} | {m: {} for m in METHODS if m != "uld"}
PROTOCOL = {
    "lr_grid": [1e-5, 1e-4, 3e-4, 1e-3],
    "max_epochs": 5,  # TOFU's unlearning length; a snapshot after every epoch
    "batch_size": 8,
    "grad_accum": 2,
    "seeds": [0, 1, 2],  # the grid trains with the first; the test repeats the selection with each
    "uld_decoding": [{"weight": w, "filter": r} for w in (-0.8, -1.0) for r in (0.1, 0.0)],
    "utility_floor": 0.95,
    "selection": "on the validation authors: the highest Forget Quality among snapshots whose Model Utility is at "
    "least 0.95 x the target's; if none, the highest Model Utility (flagged)",
    "validation": "forgetNN_val: as many other authors as the test split (authors 40-79); Forget Quality against one "
    "retain model trained without all 40 validation authors",
    "augmentation": "each question type's third phrasing and third answer template (mini-TOFU's held-out templates): "
    "no evaluation file holds them; the truth ratio's paraphrased and perturbed answers are evaluation-only",
    "unlearning retain set": "authors 80-179 (unlearn_retain.jsonl); the evaluated retain set is authors 370-399",
    "max_new_tokens": 32,
}
PHASES = ("build", "grid", "test", "noise")


def fmt_lr(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


class Study:
    """Where everything lives, and the cached steps: each returns what is on disk when it is already there."""

    def __init__(self, study: Path, work: Path, dtype: str, progress: bool, jobs: int = 1) -> None:
        self.study, self.work, self.dtype, self.progress = study, work, dtype, progress
        self.jobs = jobs  # models pretrained side by side

    def data(self, split: str) -> Path:
        return self.study / "data" / split

    def model(self, name: str) -> Path:
        return self.study / "models" / name

    def retain_model(self, split: str) -> Path:
        """The model that never saw the split's authors: Forget Quality's reference and the fluency judge."""
        if split.endswith(minitofu.VALIDATION):
            return self.model(f"retain_forget10{minitofu.VALIDATION}")
        return self.model(f"retain_{split}")

    def run_dir(self, split: str, method: str, lr: float, seed: int) -> Path:
        return self.work / "runs" / split / method / f"lr{fmt_lr(lr)}-seed{seed}"

    def train(self, split: str, method: str, lr: float, seed: int) -> tuple[list[Path], float]:
        """uld-train on the split's unlearning files (checked against its evaluation first): its models by epoch
        (a snapshot after each) and its training seconds."""
        out = self.run_dir(split, method, lr, seed) / "model"
        config = TrainConfig(
            target=self.model("target"),
            forget=self.data(split) / "unlearn_forget.jsonl",
            retain=self.data(split) / "unlearn_retain.jsonl",
            output=out,
            method=method,
            lr=lr,
            epochs=PROTOCOL["max_epochs"],
            batch_size=PROTOCOL["batch_size"],
            grad_accum=PROTOCOL["grad_accum"],
            seed=seed,
            snapshot_every=1,
            progress=self.progress,
            **METHOD_ARGS[method],
        )
        # The stamp records what decides the run (a changed protocol retrains) and the commit that trained it.
        record = {"config": {k: str(v) for k, v in asdict(replace(config, progress=False)).items()}}
        record["target"] = self.version(self.model("target"))
        stamp = out.with_name("run.json")
        done = stamps.matching(stamp, record, subset=True)
        if done is None:
            check_unscored(*training_pairs(config, check_config(config)), read_eval_data(self.data(split)))
            shutil.rmtree(out.parent / "logs", ignore_errors=True)  # evaluations of an earlier run of this place
            started = time.perf_counter()
            train(config)
            done = record | {"seconds": round(time.perf_counter() - started, 1), "commit": commit()}
            stamps.write(stamp, done)
        return config.epoch_models(), done["seconds"]

    def evaluate(
        self, models: list[Path], outputs: list[Path], split: str, judge: Path | None = None, **settings
    ) -> list[Path]:
        """uld-eval through one engine for the models whose logs are not there yet; returns every output."""
        todo = [(m, o) for m, o in zip(models, outputs, strict=True) if not (o / "run.json").exists()]
        if todo:
            eval_settings = EvalSettings(
                model=str(todo[0][0]),
                data=str(self.data(split)),
                dtype=self.dtype,
                max_new_tokens=PROTOCOL["max_new_tokens"],
                progress=self.progress,
                judge=None if judge is None else str(judge),
                **settings,
            )
            evaluate_checkpoints(eval_settings, [str(m) for m, _ in todo], [str(o) for _, o in todo])
            gc.collect()
        return outputs

    def reference_logs(self, split: str, name: str, model: Path, judged: bool = False) -> Path:
        """A fixed model's logs on a split (target, retain); judged by the split's retain model when asked."""
        out = self.work / "logs" / split / f"{name}-{self.version(model)}{'-judged' if judged else ''}"
        return self.evaluate([model], [out], split, self.retain_model(split) if judged else None)[0]

    def version(self, model: Path) -> str:
        """A study model's identity: its pretraining stamp's hash (a rebuilt model is evaluated again)."""
        return stamps.sha256(model / MARKER)[:12]


def decodings(method: str) -> list[dict]:
    return PROTOCOL["uld_decoding"] if method == "uld" else [{}]


def decoding_name(decoding: dict) -> str:
    return "-".join(f"{k[0]}{v:g}" for k, v in decoding.items()) or "model"


def metrics(logs: Path, retain_logs: Path) -> dict:
    """The M of the study's JSON (those of its fields that logs give)."""
    result = aggregate(load_eval_logs(logs), load_eval_logs(retain_logs))
    row = {k: result[k] for k in ("forget_quality", "model_utility", "rouge_forget", "rouge_retain")}
    row["ks_d"] = result["KS Test Forget"]
    for split in ("forget", "retain"):
        key = f"Gibberish {split.capitalize()}"
        row[f"gibberish_{split}"] = result.get(key)
    row["extraction_strength"] = result.get("extraction_strength")  # open-unlearning's, on the forget set
    row["exact_memorization"] = result.get("exact_memorization")
    row["facts_stated"] = result.get("facts_stated")  # the share of true facts the forget answers state
    return row


# --------------------------------------------------------------------------------------------------------- phases


def phase_build(study: Study) -> dict:
    """uld-minitofu build: the study's recipe as its manifest records it (the default recipe for a new study)."""
    manifest = study.study / "minitofu.json"
    recipe = PretrainConfig(**json.loads(manifest.read_text())["recipe"]) if manifest.exists() else None
    return build(study.study, recipe, progress=study.progress, jobs=study.jobs)


def grid_points(study: Study, split: str, method: str) -> list[dict]:
    """Every (lr, epoch, decoding) of a method on a validation split, trained and evaluated (cached)."""
    validation = split + minitofu.VALIDATION
    retain_logs = study.reference_logs(validation, "retain", study.retain_model(validation))
    points = []
    for lr in PROTOCOL["lr_grid"]:
        models, seconds = study.train(validation, method, lr, PROTOCOL["seeds"][0])
        for decoding in decodings(method):
            run = study.run_dir(validation, method, lr, PROTOCOL["seeds"][0])
            outputs = [run / "logs" / decoding_name(decoding) / f"epoch-{e}" for e in range(1, len(models) + 1)]
            study.evaluate(models, outputs, validation, **decoding)
            for epoch, logs in enumerate(outputs, start=1):
                point = {"lr": lr, "epoch": epoch, **decoding}
                point["train_seconds"] = seconds * epoch / len(models)
                points.append(point | metrics(logs, retain_logs))
    return points


def select(points: list[dict], target_utility: float) -> dict:
    """The protocol's rule, applied to a method's grid."""
    floor = PROTOCOL["utility_floor"] * target_utility
    passing = [p for p in points if p["model_utility"] >= floor]
    if passing:
        best = max(passing, key=lambda p: (p["forget_quality"], p["model_utility"]))
        return best | {"passed_utility_floor": True}
    return max(points, key=lambda p: (p["model_utility"], p["forget_quality"])) | {"passed_utility_floor": False}


def test_runs(study: Study, split: str, method: str, chosen: dict) -> list[dict]:
    """The selected configuration with every seed on the test authors, at the selected epoch, judged."""
    retain_logs = study.reference_logs(split, "retain", study.retain_model(split), judged=True)
    decoding = {k: chosen[k] for k in ("weight", "filter") if k in chosen}
    rows = []
    for seed in PROTOCOL["seeds"]:
        models, seconds = study.train(split, method, chosen["lr"], seed)
        model = models[chosen["epoch"] - 1]
        out = (
            study.run_dir(split, method, chosen["lr"], seed)
            / "logs"
            / f"{decoding_name(decoding)}-epoch-{chosen['epoch']}"
        )
        study.evaluate([model], [out], split, study.retain_model(split), **decoding)
        row = metrics(out, retain_logs) | {"seed": seed, "logs_dir": str(out)}
        rows.append(row | {"train_seconds": seconds * chosen["epoch"] / PROTOCOL["max_epochs"]})
    return rows


def noise(study: Study, split: str) -> list[dict]:
    """Forget Quality between every pair of forget10 retain models on the split's forget set."""
    names = ["retain_forget10"] + [n for n in study_models(0) if n.startswith("retain_forget10_seed")]
    outs = [study.work / "logs" / split / f"noise-{name}-{study.version(study.model(name))}" for name in names]
    for name, out in zip(names, outs, strict=True):
        study.evaluate([study.model(name)], [out], split, splits=("forget",))
    logs = [load_eval_logs(out) for out in outs]
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(logs), 2):
        fq = forget_quality(a, b)
        pairs.append(
            {"models": [names[i], names[j]], "ks_d": fq["KS Test Forget"], "forget_quality": fq["Forget Quality"]}
        )
    return pairs


def run(study: Study, until: str) -> dict:
    """Every phase up to `until`, then the results dictionary of what exists."""
    stop = PHASES.index(until)
    result: dict = {"models": phase_build(study), "splits": {}}
    for split in TEST_SPLITS:
        entry: dict = {"methods": {}}
        validation = split + minitofu.VALIDATION
        target_val = metrics(
            study.reference_logs(validation, "target", study.model("target")),
            study.reference_logs(validation, "retain", study.retain_model(validation)),
        )
        entry["validation_target"] = target_val
        if stop >= PHASES.index("test"):
            retain = study.reference_logs(split, "retain", study.retain_model(split), judged=True)
            entry["target"] = metrics(study.reference_logs(split, "target", study.model("target"), judged=True), retain)
            entry["retain"] = metrics(retain, retain) | {"logs_dir": str(retain), "train_seconds": None}
            entry["target"]["train_seconds"] = None
        for method in METHODS:
            if stop < PHASES.index("grid"):
                break
            points = grid_points(study, split, method)
            chosen = select(points, target_val["model_utility"])
            entry["methods"][method] = {"grid": points, "selected": chosen}
            if stop >= PHASES.index("test"):
                entry["methods"][method]["seeds"] = test_runs(study, split, method, chosen)
        if stop >= PHASES.index("noise"):
            entry["noise"] = noise(study, split)
        result["splits"][split] = entry
        print(f"quality: {split} done up to {until}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------------------------------------- report


def median_range(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return median, ordered[0], ordered[-1]


def keep_logs(row: dict, destination: Path) -> dict:
    """Copy a row's TOFU logs next to the JSON (so anyone can recompute its numbers) and point `logs` at them."""
    source = Path(row.pop("logs_dir"))
    destination.mkdir(parents=True, exist_ok=True)
    for name in (FORGET_LOG, RETAIN_LOG, *(f for f in (p.name for p in source.glob("eval_*.json")))):
        if (source / name).exists():
            shutil.copy2(source / name, destination / name)
    return row | {"logs": str(destination.relative_to(RESULTS))}


def finish(result: dict) -> dict:
    """The JSON as tools read it: logs copied beside it, per-method medians for the tables."""
    logs_root = RESULTS / NAME
    shutil.rmtree(logs_root, ignore_errors=True)
    for split, entry in result["splits"].items():
        if "retain" in entry:
            entry["retain"] = keep_logs(entry["retain"], logs_root / split / "retain")
        for method, record in entry["methods"].items():
            record["grid"] = {
                "lr_grid": PROTOCOL["lr_grid"],
                "epochs": list(range(1, PROTOCOL["max_epochs"] + 1)),
                "decoding": decodings(method),
                "points": record["grid"],
            }
            if "seeds" in record:
                record["seeds"] = [
                    keep_logs(row, logs_root / split / f"{method}-seed{row['seed']}") for row in record["seeds"]
                ]
    return result


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return done.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if 0 < abs(value) < 1e-2 else f"{value:.3f}"


def seed_cell(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    median, low, high = median_range(values)
    return f"{fmt(median)} [{fmt(low)}, {fmt(high)}]"


def claims(result: dict) -> list[str]:
    """The paper's claims on this study's test numbers (medians over seeds), met or not."""
    lines = []
    for split, entry in result["splits"].items():
        methods = {m: r for m, r in entry["methods"].items() if "seeds" in r}
        if "uld" not in methods or "target" not in entry:
            continue
        med = {m: {k: median_range([s[k] for s in r["seeds"]])[0] for k in ("forget_quality", "model_utility")}
               for m, r in methods.items()}  # fmt: skip
        loss = entry["target"]["model_utility"] - med["uld"]["model_utility"]
        lines.append(f"- {split}: ULD loses {loss:+.4f} Model Utility against the target "
                     f"({'within' if loss <= 0.01 else 'more than'} the paper's ~0.01).")  # fmt: skip
        floor = [m for m, r in methods.items() if r["selected"]["passed_utility_floor"]]
        best = max(floor, key=lambda m: med[m]["forget_quality"]) if floor else None
        ranking = ", ".join(
            f"{LABELS[m]} {fmt(med[m]['forget_quality'])}"
            for m in sorted(floor, key=lambda m: -med[m]["forget_quality"])
        )
        lines.append(f"- {split}: at Model Utility >= {PROTOCOL['utility_floor']} x the target's, the best Forget "
                     f"Quality is {LABELS[best] if best else 'none'}'s ({ranking or 'no method passed'}).")  # fmt: skip
        uld_time = median_range([s["train_seconds"] for s in methods["uld"]["seeds"]])[0]
        for m in methods:
            if m != "uld":
                theirs = median_range([s["train_seconds"] for s in methods[m]["seeds"]])[0]
                lines.append(f"- {split}: training to the selected snapshot, ULD {uld_time:.0f} s vs {LABELS[m]} "
                             f"{theirs:.0f} s: {theirs / uld_time:.2f}x ({'>= 3x: met' if theirs >= 3 * uld_time else 'the paper claims >3x: not met'}).")  # fmt: skip
    return lines


TABLE_KEYS = ("forget_quality", "model_utility", "ks_d", "rouge_forget", "rouge_retain", "gibberish_forget",
              "gibberish_retain", "extraction_strength", "exact_memorization", "facts_stated", "train_seconds")  # fmt: skip


def markdown(result: dict) -> str:
    machine = result["machine"]
    lines = [
        "# ULD vs unlearning baselines on mini-TOFU, one protocol for all",
        "",
        f"Command: `{result['command']}` at commit {result['commit']}. Machine: {machine['cpu']}, {machine['cores']} "
        f"cores, flags {' '.join(machine['flags']) or '-'}, dtype {machine['dtype']}.",
        "",
        "Protocol: " + "; ".join(f"{k}: {v}" for k, v in result["protocol"].items() if k != "uld_decoding") + ".",
        f"ULD's decoding grid (evaluated on each snapshot, part of its search): {result['protocol']['uld_decoding']}.",
        "",
        "Test authors, selected configuration, median [min, max] over seeds "
        f"{PROTOCOL['seeds']}. Gibberish: share of greedy answers whose NLL under the split's retain model exceeds the "
        "95th percentile of the retain model's own answers.",
        "",
    ]
    for split, entry in result["splits"].items():
        lines += [f"## {split}", ""]
        if "target" not in entry:
            lines += ["(test phase not run yet)", ""]
        header = (
            "| method | selected (validation) | F.Q. | M.U. | KS D | R-L forget | R-L retain | gibberish forget | "
            "gibberish retain | ES forget | EM forget | facts stated forget | train s |"
        )
        lines += [header, "|---" * 13 + "|"]
        for name in ("target", "retain"):
            if name in entry:
                row = entry[name]
                cells = [fmt(row.get(k)) for k in TABLE_KEYS]
                lines.append(f"| {name} | - | " + " | ".join(cells) + " |")
        for method, record in entry["methods"].items():
            chosen = record["selected"]
            what = (
                f"lr {fmt_lr(chosen['lr'])}, epoch {chosen['epoch']}"
                + (f", w {chosen['weight']}, r {chosen['filter']}" if "weight" in chosen else "")
                + ("" if chosen["passed_utility_floor"] else " (no snapshot passed the utility floor)")
            )
            seeds = record.get("seeds", [])
            lines.append(f"| {LABELS[method]} | {what} | " + " | ".join(seed_cell(seeds, k) for k in TABLE_KEYS) + " |")
        if "noise" in entry:
            d = median_range([p["ks_d"] for p in entry["noise"]])
            p = median_range([p["forget_quality"] for p in entry["noise"]])
            lines += ["", f"Noise floor, {len(entry['noise'])} pairs of forget10 retain models (other seeds): KS D "
                      f"median {fmt(d[0])} [{fmt(d[1])}, {fmt(d[2])}], Forget Quality median {fmt(p[0])} [{fmt(p[1])}, {fmt(p[2])}]."]  # fmt: skip
        lines.append("")
    lines += ["## The paper's claims, on these numbers", ""] + (claims(result) or ["(no test results yet)"])
    return "\n".join(lines) + "\n"


def plots(result: dict) -> None:
    """Per split: the selected learning rate's validation trajectory, Model Utility vs Forget Quality (the paper's
    figure), and Forget Quality against training time."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(result["splits"])
    fig, axes = plt.subplots(2, len(splits), figsize=(5 * len(splits), 8), squeeze=False)
    for column, split in enumerate(splits):
        entry = result["splits"][split]
        for method, record in entry["methods"].items():
            chosen = record["selected"]
            path = [p for p in record["grid"]["points"] if p["lr"] == chosen["lr"]
                    and all(p.get(k) == chosen.get(k) for k in ("weight", "filter"))]  # fmt: skip
            fq = [math.log10(max(p["forget_quality"], 1e-30)) for p in path]
            axes[0][column].plot(fq, [p["model_utility"] for p in path], marker="o", label=LABELS[method])
            axes[1][column].plot([p["train_seconds"] for p in path], fq, marker="o", label=LABELS[method])
        target = entry["validation_target"]
        axes[0][column].scatter([math.log10(max(target["forget_quality"], 1e-30))], [target["model_utility"]],
                                marker="s", color="black", label="target")  # fmt: skip
        axes[0][column].set(xlabel="log10 Forget Quality (validation)", ylabel="Model Utility", title=split)
        axes[1][column].set(xlabel="training seconds", ylabel="log10 Forget Quality (validation)", title=split)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{NAME}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="out/minitofu", help="mini-TOFU study directory (uld-minitofu build)")
    parser.add_argument("--work", default="out/quality", help="trained models and eval logs (cached)")
    parser.add_argument("--until", choices=PHASES, default=PHASES[-1], help="last phase to run (default: all)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: $ULD_DTYPE, else by CPU flags")
    parser.add_argument("--jobs", type=int, default=2, help="models pretrained side by side (default 2, a core each)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    args = parser.parse_args(argv)
    quiet_vllm(args.verbose)
    dtype = resolve_dtype(args.dtype)
    study = Study(Path(args.study), Path(args.work), dtype, not args.no_progress, args.jobs)
    result = {"commit": commit(), "protocol": PROTOCOL} | run(study, args.until)
    result["machine"] = machine_info(dtype)
    result["command"] = " ".join(["python bench/quality.py", *(argv if argv is not None else sys.argv[1:])])
    result = finish(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{NAME}.md").write_text(markdown(result))
    plots(result)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
