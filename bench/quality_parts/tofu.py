"""The real TOFU in the quality protocol: SmolLM2-135M-Instruct fine-tuned (LoRA, merged) on 30 of TOFU's authors.

It reuses the committed study (uld_vllm/smollm2-tofu: the target on authors 0-19 and 190-199, retain_forget01 and
retain_forget05) and fine-tunes what the protocol adds with the same recipe: a validation retain model and four more
retain_forget05 seeds. The target is not fine-tuned again, so the authors split three ways:
- evaluated retain set: authors 0-9 (the first 200 rows of TOFU's retain_perturbed);
- validation forget sets: authors 10-19 (forget05_val) and 18-19 (forget01_val), with retain_perturbed's paraphrased
  and perturbed answers: the same fields as the test forget sets;
- test forget sets: TOFU's forget05 (authors 190-199) and forget01 (198-199).
A run's unlearning retain set is the other group of forgotten authors (a validation run retains the test authors, a
test run the validation authors): authors the target knows and the run's evaluation never scores.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

from bench.quality_parts.dataset import VALIDATION, Dataset
from uld_train.finetune import FinetuneConfig, finetune, finished, record
from uld_train.tofu_study import write_rows
from uld_vllm import smollm2_tofu, stamps, tofu
from uld_vllm.eval.data import SPLIT_FILES
from uld_vllm.machine import cpu_dtype, cpu_flags
from uld_vllm.rows import write_jsonl

TARGET_AUTHORS = smollm2_tofu.model_authors()["target"]
EVAL_RETAIN = tuple(range(10))  # retain_perturbed's first 200 rows: what Model Utility's retain part asks
VALIDATION_AUTHORS = {"forget05": tuple(range(10, 20)), "forget01": (18, 19)}  # as many authors as the test split
TEST_AUTHORS = smollm2_tofu.FORGET_AUTHORS
NOISE_SEEDS = 5  # retain_forget05 with seeds 0..4 (seed 0 is committed): the noise floor's models
VALIDATION_RETAIN = f"retain_forget05{VALIDATION}"  # fine-tuned without any validation author


def split_authors(split: str) -> tuple[int, ...]:
    """The authors a split forgets."""
    if split.endswith(VALIDATION):
        return VALIDATION_AUTHORS[split.removesuffix(VALIDATION)]
    return TEST_AUTHORS[split]


def model_authors() -> dict[str, tuple[tuple[int, ...], int]]:
    """Model name -> (the authors it is fine-tuned on, its seed): the committed three and what the protocol adds."""
    models = {name: (authors, 0) for name, authors in smollm2_tofu.model_authors().items()}
    without_validation = tuple(a for a in TARGET_AUTHORS if a not in VALIDATION_AUTHORS["forget05"])
    models[VALIDATION_RETAIN] = (without_validation, 0)
    for seed in range(1, NOISE_SEEDS):
        models[f"retain_forget05_seed{seed}"] = (models["retain_forget05"][0], seed)
    return models


class Tofu(Dataset):
    name = "tofu"
    title = "ULD vs unlearning baselines on TOFU (SmolLM2-135M-Instruct), one protocol for all"
    test_splits = ("forget01", "forget05")
    protocol = {
        "lr_grid": [1e-5, 1e-4, 3e-4, 1e-3],  # mini-TOFU's: the floor of 4 values from 1e-5 to 1e-3
        "max_epochs": 3,  # fewer than mini-TOFU's 5 (the issue allows a smaller grid on SmolLM2), the same for all
        "batch_size": 8,
        "grad_accum": 2,
        "seeds": [0, 1, 2],
        "uld_decoding": [{"weight": w, "filter": 0.1} for w in (-0.8, -0.4)],
        "uld_settings": "assistant K 8 of 30 layers + LoRA r 16 (the paper's quarter of the depth); w -0.8 and r 0.1 "
        "are the paper's values (the committed SmolLM2 bundle's too), w -0.4 a weaker one; none tuned on this study",
        "utility_floor": 0.95,
        "selection": "on the validation authors: the highest Forget Quality among snapshots whose Model Utility is "
        "at least 0.95 x the target's; if none, the highest Model Utility (flagged)",
        "validation": "forget05_val: authors 10-19, forget01_val: authors 18-19 (retain_perturbed's rows, with their "
        "paraphrased and perturbed answers); Forget Quality against one retain model trained without authors 10-19 (it "
        "knows 20 authors, where retain_forget01 knows 28: a shared reference for both validation splits)",
        "augmentation": "none: unlearning trains on question/answer pairs only; TOFU's paraphrased and perturbed "
        "answers are evaluation-only",
        "unlearning retain set": "validation runs: the test authors 190-199; test runs: the validation authors 10-19; "
        "the evaluated retain set is authors 0-9",
        "judge": "the pretrained SmolLM2-135M-Instruct (before TOFU)",
        "max_new_tokens": 64,
    }
    # ULD's assistant: the target's first 8 of 30 layers + LoRA (about the paper's quarter); the baselines train
    # every parameter, as TOFU runs them.
    method_args = {"uld": {"layers": 8}}
    validation_retain = VALIDATION_RETAIN
    keep_models = False  # 540 MB a snapshot: a run's models are deleted once every evaluation of them is written

    def __init__(
        self,
        study: Path,
        progress: bool,
        jobs: int,
        base: Path | None = None,
        recipe: FinetuneConfig | None = None,
    ) -> None:
        super().__init__(study, progress, jobs)
        self.base = base or smollm2_tofu.base_dir()
        self.recipe = recipe or FinetuneConfig(**smollm2_tofu.study()["recipe"])  # the committed models' recipe
        self.train_args = {"autocast": cpu_dtype(cpu_flags())}

    def build(self) -> dict:
        """The evaluation and unlearning files, then every model: a committed adapter where it matches the recipe,
        data and base, else fine-tuned under the study directory; each merged with the base."""
        self.write_data()
        models = {}
        for name, (authors, seed) in model_authors().items():
            data = write_rows(self.study / "data" / "train" / f"{name}.jsonl", tofu.subset(authors))
            config = replace(self.recipe, seed=seed)
            adapter = smollm2_tofu.ADAPTERS / name
            if finished(adapter, record(self.base, data, config)) is None:
                adapter = self.study / "adapters" / name
                fit = finetune(self.base, data, adapter, config, self.progress)
                print(f"quality: {name}: {fit['rows']} QA, {fit['seconds']:.0f} s", file=sys.stderr)
            smollm2_tofu.merge_adapter(self.base, adapter, self.model(name))
            models[name] = {"authors": list(authors), "seed": seed, "adapter": str(adapter)}
        return {"base": str(self.base), "recipe": asdict(self.recipe), "models": models}

    def write_data(self) -> None:
        """Each test and validation split's files."""
        for split in self.test_splits:
            for name in (split, split + VALIDATION):
                self._write_split(name)

    def _write_split(self, split: str) -> None:
        """uld-eval's four files and the two unlearning files of a split."""
        directory = self.data(split)
        forgotten = split_authors(split)
        if split.endswith(VALIDATION):
            forget = tofu.subset(forgotten, "retain_perturbed")
            retained = TEST_AUTHORS["forget05"]
        else:
            forget = tofu.rows(f"{split}_perturbed")
            retained = VALIDATION_AUTHORS["forget05"]
        files = {
            "forget": forget,
            "retain": tofu.subset(EVAL_RETAIN, "retain_perturbed"),
            "real_authors": tofu.rows("real_authors_perturbed"),
            "world_facts": tofu.rows("world_facts_perturbed"),
        }
        for key, rows in files.items():
            write_jsonl(directory / SPLIT_FILES[key], rows)
        forget_file, retain_file = self.unlearn_files(split)
        write_rows(forget_file, tofu.subset(forgotten))
        write_rows(retain_file, tofu.subset(retained))

    def judge(self, split: str) -> Path:
        return self.base

    def noise_models(self) -> list[str]:
        return [name for name in model_authors() if name.startswith("retain_forget05") and VALIDATION not in name]

    def version(self, model: Path) -> str:
        """The merge stamp's hash (base pin and adapter hash)."""
        return stamps.sha256(model / smollm2_tofu.MERGED)[:12]
