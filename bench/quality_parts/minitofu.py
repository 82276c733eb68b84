"""mini-TOFU in the quality protocol: a 3.6M-parameter Llama pretrained from scratch on 400 fictitious authors."""

from __future__ import annotations

import json
from pathlib import Path

from bench.quality_parts.dataset import VALIDATION, Dataset
from uld_train import minitofu
from uld_train.pretrain import MARKER, PretrainConfig, build, study_models
from uld_train.tofu_study import write_rows
from uld_vllm import stamps
from uld_vllm.qa import read_rows

assert VALIDATION == minitofu.VALIDATION  # the data's validation splits are the protocol's


class MiniTofu(Dataset):
    name = "minitofu"
    title = "ULD vs unlearning baselines on mini-TOFU, one protocol for all"
    test_splits = tuple(minitofu.TEST_SPLITS)
    protocol = {
        "lr_grid": [1e-5, 1e-4, 3e-4, 1e-3],
        "max_epochs": 5,  # TOFU's unlearning length; a snapshot after every epoch
        "batch_size": 8,
        "grad_accum": 2,
        "seeds": [0, 1, 2],  # the grid trains with the first; the test repeats the selection with each
        "uld_decoding": [{"weight": w, "filter": r} for w in (-0.8, -1.0) for r in (0.1, 0.0)],
        "uld_settings": "assistant K 2 of 4 layers + LoRA r 16 (one 256-wide layer could not memorise a forget set); "
        "w -0.8 and r 0.1 are the paper's values, -1.0 and 0 (no filter) the alternatives",
        "utility_floor": 0.95,
        "selection": "on the validation authors: the highest Forget Quality among snapshots whose Model Utility is "
        "at least 0.95 x the target's; if none, the highest Model Utility (flagged)",
        "validation": "forgetNN_val: as many other authors as the test split (authors 40-79); Forget Quality against "
        "one retain model trained without all 40 validation authors (360 authors, where a test split's retain model "
        "knows 360-396: a shared reference, so validation's Forget Quality can differ slightly from a per-split one)",
        "augmentation": "forget side, every method: each question type's third phrasing and third answer template "
        "(mini-TOFU's held-out templates), which no evaluation file holds; retain side: none for any method (ULD's "
        "reference recipe adds perturbed answers as retain text: left out, so every method sees the same data); the "
        "truth ratio's paraphrased and perturbed answers are evaluation-only",
        "unlearning retain set": "authors 80-179 (unlearn_retain.jsonl); the evaluated retain set is authors 370-399",
        "judge": "the split's retain model",
        "max_new_tokens": 32,
    }
    # ULD trains a K-layer LoRA assistant (K = 2 of the target's 4: one 256-wide layer could not memorise a forget
    # set, bench/results/README.md); the baselines train every parameter, as TOFU runs them.
    method_args = {"uld": {"layers": 2}}
    validation_retain = f"retain_forget10{VALIDATION}"
    train_args: dict = {}  # float32: the tiny model trains fastest without autocast

    def build(self) -> dict:
        """uld-minitofu build (the study's recipe as its manifest records it; the default recipe for a new study),
        then each split's unlearning retain set as every method trains on it."""
        manifest = self.study / "minitofu.json"
        recipe = PretrainConfig(**json.loads(manifest.read_text())["recipe"]) if manifest.exists() else None
        built = build(self.study, recipe, progress=self.progress, jobs=self.jobs)
        for split in minitofu.SPLITS:
            rows = read_rows(self.data(split) / "unlearn_retain.jsonl", "unlearning retain set")
            write_rows(self.unlearn_files(split)[1], rows)
        return built

    def unlearn_files(self, split: str) -> tuple[Path, Path]:
        """The dataset's unlearn_forget.jsonl, and its unlearn_retain.jsonl without the perturbed answers (which
        only ULD's recipe would train on)."""
        forget, _ = super().unlearn_files(split)
        return forget, self.data(split) / "unlearn_retain_pairs.jsonl"

    def judge(self, split: str) -> Path:
        return self.retain_model(split)

    def noise_models(self) -> list[str]:
        return ["retain_forget10"] + [n for n in study_models(0) if n.startswith("retain_forget10_seed")]

    def version(self, model: Path) -> str:
        """The pretraining stamp's hash."""
        return stamps.sha256(model / MARKER)[:12]
