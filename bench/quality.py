"""The quality study: ULD and five baselines under one protocol, selected on validation authors, on two datasets.

    python bench/quality.py                    mini-TOFU (= make quality)
    python bench/quality.py --dataset tofu     TOFU's own text on SmolLM2-135M-Instruct (= make quality-tofu)
    python bench/quality.py --until grid       stop after a phase: build, grid, test, noise (the report always runs
                                                on what is there, and says what is missing)
Every finished piece is cached under --work (a stopped run resumes where it stopped).

The protocol (each dataset's `protocol`, recorded in the JSON):
- build: the dataset's files and models (target, a retain model per test split, retain models of other seeds, a
  retain model without the validation authors).
- grid: every method, every learning rate of one grid, the same maximum epochs, batch and seed, so the same
  optimizer steps; a snapshot every epoch, each evaluated on the split's validation authors. ULD's decoding settings
  (w, r) are evaluated on each of its snapshots and count as part of its search.
- select, fixed before any run: among a method's (lr, epoch[, w, r]) whose validation Model Utility is at least
  utility_floor x the target's, the highest validation Forget Quality; when none passes, the highest Model Utility
  (flagged).
- test: the selected configuration trained with each seed on the test authors, evaluated at the selected epoch,
  its greedy answers judged for fluency.
- noise: Forget Quality between every pair of the retain models of different seeds (none saw a test author).
Unlearning trains on the split's unlearn_forget.jsonl / unlearn_retain.jsonl, which hold no text the evaluation
scores (checked before every run). Writes bench/results/quality-<dataset>.{json,md,png} and the selected runs' logs.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from uld_vllm.engine import in_process_engine_core  # noqa: E402

in_process_engine_core()

from bench.quality_parts import report  # noqa: E402
from bench.quality_parts.dataset import VALIDATION, Dataset  # noqa: E402
from uld_train.config import TrainConfig, stamp_fields  # noqa: E402
from uld_train.data import check_unscored  # noqa: E402
from uld_train.loop import check_config, train, training_pairs  # noqa: E402
from uld_vllm import stamps  # noqa: E402
from uld_vllm.engine import DTYPES, quiet_vllm, resolve_dtype  # noqa: E402
from uld_vllm.eval.data import read_eval_data  # noqa: E402
from uld_vllm.eval.metrics import aggregate, forget_quality, load_eval_logs  # noqa: E402
from uld_vllm.eval.run import EvalSettings, evaluate_checkpoints  # noqa: E402
from uld_vllm.machine import machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METHODS = ("uld", "ga", "ga_gd", "ga_kl", "npo", "npo_gd")
PHASES = ("build", "grid", "test", "noise")
# --dataset -> its default (--study, --work): mini-TOFU's study is uld-minitofu build's directory
DEFAULT_DIRS = {"minitofu": ("out/minitofu", "out/quality"), "tofu": ("out/tofu-study", "out/quality-tofu")}


def datasets() -> dict[str, type[Dataset]]:
    """--dataset's choices (imported on demand: TOFU's needs the fetched SmolLM2 only when chosen)."""
    from bench.quality_parts.minitofu import MiniTofu
    from bench.quality_parts.tofu import Tofu

    return {"minitofu": MiniTofu, "tofu": Tofu}


class Study:
    """The protocol's cached steps on one dataset: each returns what is on disk when it is already there."""

    def __init__(self, dataset: Dataset, work: Path, dtype: str, progress: bool) -> None:
        self.dataset, self.work, self.dtype, self.progress = dataset, work, dtype, progress
        self.protocol = dataset.protocol

    def run_dir(self, split: str, method: str, lr: float, seed: int) -> Path:
        return self.work / "runs" / split / method / f"lr{report.fmt_lr(lr)}-seed{seed}"

    def train(
        self, split: str, method: str, lr: float, seed: int, needed: bool = True, stop_epoch: int | None = None
    ) -> tuple[list[Path], dict]:
        """uld-train on the split's unlearning files (checked against its evaluation first): its models by epoch
        and its record (seconds of the optimizer loop, optimizer steps, commit). A grid run keeps a snapshot after
        every epoch; a test run (`stop_epoch`) stops the same schedule there and writes only that model, so its
        seconds are the method's own. A finished run is trained again only where its models are `needed` and were
        deleted (datasets that do not keep them)."""
        forget, retain = self.dataset.unlearn_files(split)
        out = self.run_dir(split, method, lr, seed) / "model"
        config = TrainConfig(
            target=self.dataset.model("target"),
            forget=forget,
            retain=retain,
            output=out,
            method=method,
            lr=lr,
            epochs=self.protocol["max_epochs"],
            stop_epoch=stop_epoch,
            batch_size=self.protocol["batch_size"],
            grad_accum=self.protocol["grad_accum"],
            seed=seed,
            snapshot_every=1 if stop_epoch is None else 0,
            progress=self.progress,
            **self.dataset.train_args,
            **self.dataset.method_args.get(method, {}),
        )
        # The stamp records what decides the run, the data's contents included (a changed protocol or file
        # retrains), and the commit that trained it.
        record = {"config": stamp_fields(config, text=True)}
        record["target"] = self.dataset.version(self.dataset.model("target"))
        record["data_sha256"] = {"forget": stamps.sha256(forget), "retain": stamps.sha256(retain)}
        stamp = out.with_name("run.json")
        done = stamps.matching(stamp, record, subset=True)
        models = config.epoch_models()
        whole = len(models) == ((config.stop_epoch or config.epochs) if config.snapshot_every else 1)
        if done is None or (needed and not (whole and all(m.exists() for m in models))):
            check_unscored(*training_pairs(config, check_config(config)), read_eval_data(self.dataset.data(split)))
            if done is None:
                shutil.rmtree(out.parent / "logs", ignore_errors=True)  # evaluations of an earlier run of this place
            started = time.perf_counter()
            result = train(config)
            done = record | {
                "seconds": round(result.final["elapsed_s"], 1),  # the optimizer loop's, as the train log clocks it
                "wall_seconds": round(time.perf_counter() - started, 1),  # with loading and writing models
                "steps": result.steps,
                "commit": commit(),
            }
            stamps.write(stamp, done)
            models = config.epoch_models()
        return models, done

    def drop_models(self, models: list[Path]) -> None:
        """Delete a run's models once every evaluation of them is written, where the dataset does not keep them."""
        if not self.dataset.keep_models:
            for model in models:
                shutil.rmtree(model, ignore_errors=True)

    def eval_settings(self, split: str, judged: bool = False, **settings) -> EvalSettings:
        """uld-eval's settings for a split's logs (the model is set per evaluation)."""
        return EvalSettings(
            model="",
            data=str(self.dataset.data(split)),
            dtype=self.dtype,
            max_new_tokens=self.protocol["max_new_tokens"],
            progress=self.progress,
            judge=str(self.dataset.judge(split)) if judged else None,
            **settings,
        )

    def done(self, output: Path, split: str, judged: bool = False, **settings) -> bool:
        """Whether `output` holds logs evaluated as this study evaluates them now (uld-eval writes run.json last,
        with its settings): logs of other settings (dtype, answer length, data, decoding) are made again."""
        try:
            made = json.loads((output / "run.json").read_text())["settings"]
        except (OSError, ValueError, KeyError):
            return False
        wanted = json.loads(json.dumps(asdict(self.eval_settings(split, judged, **settings))))
        return all(made.get(key) == wanted[key] for key in DECIDING_SETTINGS)

    def missing(self, outputs: list[Path], split: str, judged: bool = False, **settings) -> bool:
        return not all(self.done(output, split, judged, **settings) for output in outputs)

    def evaluate(
        self, models: list[Path], outputs: list[Path], split: str, judged: bool = False, **settings
    ) -> list[Path]:
        """uld-eval through one engine for the models whose logs are not there yet (answers judged for fluency when
        asked); returns every output."""
        todo = [(m, o) for m, o in zip(models, outputs, strict=True) if not self.done(o, split, judged, **settings)]
        if todo:
            eval_settings = replace(self.eval_settings(split, judged, **settings), model=str(todo[0][0]))
            evaluate_checkpoints(eval_settings, [str(m) for m, _ in todo], [str(o) for _, o in todo])
            gc.collect()
        return outputs

    def reference_logs(self, split: str, name: str, model: Path, judged: bool = False) -> Path:
        """A built model's logs on a split (target, retain), judged for fluency when asked."""
        version = self.dataset.version(model)
        out = self.work / "logs" / split / f"{name}-{version}{'-judged' if judged else ''}"
        return self.evaluate([model], [out], split, judged)[0]


# EvalSettings fields that decide an evaluation's logs (the rest: where, how fast, how shown)
DECIDING_SETTINGS = ("data", "backend", "dtype", "weight", "filter", "splits", "max_new_tokens", "judge")


def decodings(protocol: dict, method: str) -> list[dict]:
    return protocol["uld_decoding"] if method == "uld" else [{}]


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
    row["facts_stated"] = result.get("facts_stated")  # mini-TOFU: the share of true facts the forget answers state
    row["repetitive_forget"] = result.get("repetitive")  # the share of forget answers that loop
    row["empty_forget"] = result.get("empty_forget")  # ... that are empty (no judge NLL: the gibberish rate skips them)
    return row


# --------------------------------------------------------------------------------------------------------- phases


def grid_points(study: Study, split: str, method: str) -> list[dict]:
    """Every (lr, epoch, decoding) of a method on a validation split, trained and evaluated (cached)."""
    protocol, seed = study.protocol, study.protocol["seeds"][0]
    validation = split + VALIDATION
    retain_logs = study.reference_logs(validation, "retain", study.dataset.retain_model(validation))
    epochs = range(1, protocol["max_epochs"] + 1)
    points = []
    for lr in protocol["lr_grid"]:
        run = study.run_dir(validation, method, lr, seed)
        outputs = {decoding_name(d): [run / "logs" / decoding_name(d) / f"epoch-{e}" for e in epochs]
                   for d in decodings(protocol, method)}  # fmt: skip
        needed = any(study.missing(outputs[decoding_name(d)], validation, **d) for d in decodings(protocol, method))
        models, trained = study.train(validation, method, lr, seed, needed)
        for decoding in decodings(protocol, method):
            logs = outputs[decoding_name(decoding)]
            if study.missing(logs, validation, **decoding):  # asked again: a run trained anew has no logs left
                study.evaluate(models, logs, validation, **decoding)
            for epoch, out in zip(epochs, logs, strict=True):
                share = epoch / len(epochs)
                point = {"lr": lr, "epoch": epoch, **decoding, "train_seconds": trained["seconds"] * share,
                         "steps": round(trained["steps"] * share), "commit": trained["commit"]}  # fmt: skip
                points.append(point | metrics(out, retain_logs))
        study.drop_models(models)
    return points


def select(points: list[dict], target_utility: float, utility_floor: float) -> dict:
    """The protocol's rule, applied to a method's grid."""
    floor = utility_floor * target_utility
    passing = [p for p in points if p["model_utility"] >= floor]
    if passing:
        best = max(passing, key=lambda p: (p["forget_quality"], p["model_utility"]))
        return best | {"passed_utility_floor": True}
    return max(points, key=lambda p: (p["model_utility"], p["forget_quality"])) | {"passed_utility_floor": False}


def step_budget(methods: dict, max_epochs: int) -> int | None:
    """The optimizer steps of a whole grid run, checked equal for every method and learning rate (the protocol's
    equal budget, as the runs took it); None before the grid."""
    steps = {p["steps"] for record in methods.values() for p in record["grid"]["points"] if p["epoch"] == max_epochs}
    if len(steps) > 1:
        raise RuntimeError(f"grid runs took different optimizer steps: {sorted(steps)} (the budget must be equal)")
    return steps.pop() if steps else None


def test_runs(study: Study, split: str, method: str, chosen: dict) -> list[dict]:
    """The selected configuration with every seed on the test authors, trained up to the selected epoch of the
    grid's schedule (the grid's snapshot there, by construction), judged."""
    retain_logs = study.reference_logs(split, "retain", study.dataset.retain_model(split), judged=True)
    decoding = {k: chosen[k] for k in ("weight", "filter") if k in chosen}
    rows = []
    for seed in study.protocol["seeds"]:
        run = study.run_dir(split, method, chosen["lr"], seed)
        out = run / "logs" / f"{decoding_name(decoding)}-epoch-{chosen['epoch']}"
        needed = study.missing([out], split, judged=True, **decoding)
        models, trained = study.train(split, method, chosen["lr"], seed, needed, chosen["epoch"])
        if study.missing([out], split, judged=True, **decoding):  # asked again: a run trained anew has no logs left
            study.evaluate(models[-1:], [out], split, judged=True, **decoding)
        study.drop_models(models)
        row = metrics(out, retain_logs) | {"seed": seed, "logs_dir": str(out)}
        rows.append(row | {k: trained[k] for k in ("steps", "commit")} | {"train_seconds": trained["seconds"]})
    return rows


def noise(study: Study, split: str) -> list[dict]:
    """Forget Quality between every pair of the retain models of different seeds on the split's forget set."""
    names = study.dataset.noise_models()
    models = [study.dataset.model(name) for name in names]
    outs = [study.work / "logs" / split / f"noise-{name}-{study.dataset.version(model)}"
            for name, model in zip(names, models, strict=True)]  # fmt: skip
    for model, out in zip(models, outs, strict=True):
        study.evaluate([model], [out], split, splits=("forget",))
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
    stop, dataset, protocol = PHASES.index(until), study.dataset, study.protocol
    result: dict = {"models": dataset.build(), "splits": {}}
    for split in dataset.test_splits:
        entry: dict = {"methods": {}}
        validation = split + VALIDATION
        target_val = metrics(
            study.reference_logs(validation, "target", dataset.model("target")),
            study.reference_logs(validation, "retain", dataset.retain_model(validation)),
        )
        entry["validation_target"] = target_val
        if stop >= PHASES.index("test"):
            retain = study.reference_logs(split, "retain", dataset.retain_model(split), judged=True)
            target = study.reference_logs(split, "target", dataset.model("target"), True)
            entry["target"] = metrics(target, retain) | {"logs_dir": str(target), "train_seconds": None}
            entry["retain"] = metrics(retain, retain) | {"logs_dir": str(retain), "train_seconds": None}
        for method in METHODS:
            if stop < PHASES.index("grid"):
                break
            points = grid_points(study, split, method)
            chosen = select(points, target_val["model_utility"], protocol["utility_floor"])
            grid = {
                "lr_grid": protocol["lr_grid"],
                "epochs": list(range(1, protocol["max_epochs"] + 1)),
                "decoding": decodings(protocol, method),
                "points": points,
            }
            entry["methods"][method] = {"grid": grid, "selected": chosen}
            if stop >= PHASES.index("test"):
                entry["methods"][method]["seeds"] = test_runs(study, split, method, chosen)
        entry["step_budget"] = step_budget(entry["methods"], protocol["max_epochs"])
        if stop >= PHASES.index("noise"):
            entry["noise"] = noise(study, split)
        result["splits"][split] = entry
        print(f"quality: {split} done up to {until}", file=sys.stderr)
    return result


def run_commits(result: dict) -> list[str]:
    """Every commit that trained a grid point or a test run in `result`."""
    found = set()
    for entry in result["splits"].values():
        for record in entry["methods"].values():
            found |= {row["commit"] for row in record["grid"]["points"] + record.get("seeds", [])}
    return sorted(found)


def commit() -> str:
    here = Path(__file__).parent
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=here)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
    )
    return done.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("minitofu", "tofu"), default="minitofu", help="default: minitofu")
    parser.add_argument("--study", default=None, help="models and data (default: out/minitofu, out/tofu-study)")
    parser.add_argument("--work", default=None, help="trained runs and eval logs (default: out/quality[-tofu])")
    parser.add_argument("--until", choices=PHASES, default=PHASES[-1], help="last phase to run (default: all)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: $ULD_DTYPE, else by CPU flags")
    parser.add_argument("--jobs", type=int, default=2, help="mini-TOFU models pretrained side by side (default 2)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    args = parser.parse_args(argv)
    quiet_vllm(args.verbose)
    if args.no_progress:  # transformers' own bars too (loading and writing every merged model)
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    dtype = resolve_dtype(args.dtype)
    default_study, default_work = DEFAULT_DIRS[args.dataset]
    dataset = datasets()[args.dataset](Path(args.study or default_study), not args.no_progress, args.jobs)
    study = Study(dataset, Path(args.work or default_work), dtype, not args.no_progress)
    result = {"commit": commit(), "title": dataset.title} | run(study, args.until)
    budget = {split: entry.pop("step_budget") for split, entry in result["splits"].items()}
    result["run_commits"] = run_commits(result)  # the commits that trained what is reported (cached runs' too)
    result["protocol"] = dataset.protocol | {"step_budget": budget}  # by split: the forget set's size sets it
    result["machine"] = machine_info(dtype)
    result["command"] = " ".join(["python bench/quality.py", *(argv if argv is not None else sys.argv[1:])])
    name = f"quality-{dataset.name}"
    result = report.finish(result, RESULTS, name)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text(report.markdown(result))
    report.plots(result, RESULTS / f"{name}.png")
    print(report.markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
