"""Bad input: one line `uld-train: error: ...` on stderr and exit status 2, before any training starts."""

from __future__ import annotations

import json
import os

import pytest
from helpers import refusal
from train_toy import FORGET, write_jsonl

from uld_train.cli import main
from uld_train.config import TrainError


def run_cli(capsys, target, forget, retain, output, *extra: str) -> str:
    """uld-train on these inputs, expecting a refusal (helpers.refusal: exit 2, one line); returns its message."""
    argv = ["--target", target, "--forget", forget, "--output", output, "--no-progress", *extra]
    return refusal(capsys, main, *argv, *(["--retain", retain] if retain is not None else []))


def test_empty_forget_set(capsys, tmp_path, train_target, retain_file):
    (tmp_path / "empty.jsonl").write_text("")
    assert "has no rows" in run_cli(capsys, train_target, tmp_path / "empty.jsonl", retain_file, tmp_path / "out")


def test_missing_column(capsys, tmp_path, train_target, retain_file):
    forget = write_jsonl(tmp_path / "f.jsonl", [{"question": "Who?"}])
    assert "lacks column(s) answer" in run_cli(capsys, train_target, forget, retain_file, tmp_path / "out")


def test_answer_that_tokenizes_to_nothing(capsys, tmp_path, train_target, retain_file):
    forget = write_jsonl(tmp_path / "f.jsonl", [FORGET[0], {"question": "Who?", "answer": ""}])
    err = run_cli(capsys, train_target, forget, retain_file, tmp_path / "out")
    assert "row 1" in err and "tokenizes to no tokens" in err


def test_assistant_deeper_than_target(capsys, tmp_path, train_target, forget_file, retain_file):
    err = run_cli(capsys, train_target, forget_file, retain_file, tmp_path / "out", "--layers", "5")
    assert "K=5 out of range" in err and "4 layers" in err


def test_unsupported_family(capsys, tmp_path, train_target, forget_file, retain_file):
    target = tmp_path / "gpt2"
    target.mkdir()
    for path in train_target.iterdir():
        os.symlink(path, target / path.name)
    config = json.loads((train_target / "config.json").read_text()) | {"model_type": "gpt2"}
    (target / "config.json").unlink()
    (target / "config.json").write_text(json.dumps(config))
    assert "family 'gpt2' is not supported" in run_cli(capsys, target, forget_file, retain_file, tmp_path / "out")


@pytest.mark.parametrize("which", ["target", "forget", "retain"])
def test_unknown_path(capsys, tmp_path, train_target, forget_file, retain_file, which):
    paths = {"target": train_target, "forget": forget_file, "retain": retain_file} | {which: tmp_path / "nope.jsonl"}
    err = run_cli(capsys, paths["target"], paths["forget"], paths["retain"], tmp_path / "out")
    assert "not found" in err and "nope.jsonl" in err


def test_other_bad_input(capsys, tmp_path, train_target, forget_file, retain_file):
    assert "needs a retain set" in run_cli(capsys, train_target, forget_file, None, tmp_path / "out")
    (tmp_path / "f.csv").write_text("question,answer\n")
    assert "unknown extension '.csv'" in run_cli(
        capsys, train_target, tmp_path / "f.csv", retain_file, tmp_path / "out"
    )
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\nnot json\n')
    assert "line 2 is not JSON" in run_cli(capsys, train_target, tmp_path / "bad.jsonl", retain_file, tmp_path / "out")
    assert "outside the target" in run_cli(capsys, train_target, forget_file, retain_file, train_target / "out")
    assert "--layers applies to method uld only" in run_cli(
        capsys, train_target, forget_file, retain_file, tmp_path / "out", "--method", "ga", "--layers", "1"
    )
    assert "filter must be in [0, 1)" in run_cli(
        capsys, train_target, forget_file, retain_file, tmp_path / "out", "--filter", "1.5"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.train").exists()


def test_train_error_is_a_value_error():
    assert issubclass(TrainError, ValueError)
