"""What the quality protocol needs from a dataset: its models, its files and the protocol's sizes for it.

The protocol (bench/quality.py) is the same on every dataset; a dataset says where its models and files are, how to
build them, and the grid it can afford (the grid may be smaller on a larger model, never different between methods).
"""

from __future__ import annotations

from pathlib import Path

VALIDATION = "_val"  # forget01_val...: other authors, as many as the test split, for selection only


class Dataset:
    """One dataset of the study; subclasses fill in the class attributes and the methods below."""

    name: str  # the results' file stem: bench/results/quality-<name>.{json,md,png}
    title: str  # the report's heading
    test_splits: tuple[str, ...]  # reported splits; each has a validation twin split + VALIDATION
    protocol: dict  # PROTOCOL's values for this dataset (recorded in the JSON)
    method_args: dict[str, dict]  # what makes a method itself here (ULD's assistant depth)
    train_args: dict  # TrainConfig fields every method shares on this dataset (the forward's dtype)
    validation_retain: str  # the retain model without any validation author
    keep_models = True  # False: a run's models are deleted once every evaluation of them is written (disk)

    def __init__(self, study: Path, progress: bool, jobs: int) -> None:
        self.study, self.progress, self.jobs = study, progress, jobs

    def build(self) -> dict:
        """Data and models, reusing finished ones; the manifest the JSON records."""
        raise NotImplementedError

    def data(self, split: str) -> Path:
        """uld-eval's data directory of a split."""
        return self.study / "data" / split

    def unlearn_files(self, split: str) -> tuple[Path, Path]:
        """(forget, retain) training files of a split's unlearning runs: no string the split's evaluation scores."""
        return self.data(split) / "unlearn_forget.jsonl", self.data(split) / "unlearn_retain.jsonl"

    def model(self, name: str) -> Path:
        return self.study / "models" / name

    def retain_model(self, split: str) -> Path:
        """The model that never saw the split's authors: Forget Quality's reference (one model without every
        validation author serves all validation splits)."""
        if split.endswith(VALIDATION):
            return self.model(self.validation_retain)
        return self.model(f"retain_{split}")

    def judge(self, split: str) -> Path:
        """The fluency judge of a split's answers."""
        raise NotImplementedError

    def noise_models(self) -> list[str]:
        """Retain models of other seeds, none of which saw any test split's authors: their pairs are the noise floor."""
        raise NotImplementedError

    def version(self, model: Path) -> str:
        """A built model's identity (a rebuilt model is evaluated again)."""
        raise NotImplementedError
