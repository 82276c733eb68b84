"""bench/quality.py: the protocol's selection rule, and the whole study end to end on a tiny mini-TOFU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quality

M_KEYS = ("forget_quality", "model_utility", "ks_d", "rouge_forget", "rouge_retain", "extraction_strength",
          "exact_memorization", "train_seconds", "logs", "gibberish_forget", "gibberish_retain")  # fmt: skip


def point(lr: float, epoch: int, fq: float, mu: float) -> dict:
    return {"lr": lr, "epoch": epoch, "forget_quality": fq, "model_utility": mu}


def test_selection_takes_the_best_forget_quality_above_the_utility_floor() -> None:
    points = [
        point(1e-3, 1, 0.9, 0.50),
        point(1e-4, 2, 0.3, 0.96),
        point(1e-4, 3, 0.2, 0.99),
        point(1e-5, 1, 0.3, 0.98),
    ]
    chosen = quality.select(points, target_utility=1.0)
    assert (chosen["lr"], chosen["epoch"], chosen["passed_utility_floor"]) == (1e-5, 1, True)  # FQ tie: more utility
    assert quality.select(points, target_utility=0.5)["forget_quality"] == 0.9  # 0.50 >= 0.95 x 0.5 passes too


def test_selection_without_a_passing_snapshot_says_so_and_keeps_the_most_utility() -> None:
    chosen = quality.select([point(1e-3, 1, 0.9, 0.2), point(1e-4, 1, 0.1, 0.4)], target_utility=1.0)
    assert (chosen["lr"], chosen["passed_utility_floor"]) == (1e-4, False)


@pytest.mark.vllm
def test_the_study_runs_every_phase_and_writes_what_tools_read(tmp_path: Path, monkeypatch) -> None:
    from uld_train.pretrain import main as minitofu_main

    tiny = ["--epochs", "1", "--layers", "3", "--hidden", "64", "--heads", "2", "--intermediate", "64"]
    assert (
        minitofu_main(["build", "--dir", str(tmp_path / "study"), *tiny, "--batch-size", "256", "--no-progress"]) == 0
    )
    monkeypatch.setitem(quality.PROTOCOL, "lr_grid", [1e-3])
    monkeypatch.setitem(quality.PROTOCOL, "max_epochs", 2)
    monkeypatch.setitem(quality.PROTOCOL, "seeds", [0, 1])
    monkeypatch.setitem(quality.PROTOCOL, "uld_decoding", [{"weight": -0.8, "filter": 0.1}])
    monkeypatch.setattr(quality, "TEST_SPLITS", ("forget01",))
    monkeypatch.setattr(quality, "METHODS", ("uld", "ga"))
    monkeypatch.setattr(quality, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("ULD_DTYPE", "float32")
    argv = ["--study", str(tmp_path / "study"), "--work", str(tmp_path / "work"), "--no-progress"]
    assert quality.main(argv) == 0

    result = json.loads((tmp_path / "results" / "quality-minitofu.json").read_text())
    assert result["protocol"]["lr_grid"] == [1e-3] and "selection" in result["protocol"]
    split = result["splits"]["forget01"]
    assert len(split["noise"]) == 10  # every pair of the 5 forget10 retain models
    for method in ("uld", "ga"):
        record = split["methods"][method]
        assert len(record["grid"]["points"]) == 2  # one lr, two epochs, one decoding
        assert [row["seed"] for row in record["seeds"]] == [0, 1]
        for row in record["seeds"] + [split["retain"]]:
            assert set(M_KEYS) <= set(row) and 0 <= row["extraction_strength"] <= 1
            logs = tmp_path / "results" / row["logs"]
            assert (logs / "eval_log_forget.json").exists() and (logs / "eval_log.json").exists()
    assert split["methods"]["uld"]["selected"]["weight"] == -0.8
    assert (tmp_path / "results" / "quality-minitofu.png").stat().st_size > 0
    markdown = (tmp_path / "results" / "quality-minitofu.md").read_text()
    assert "| ULD | lr 1e-3, epoch" in markdown and "Noise floor, 10 pairs" in markdown

    trained = sorted(p.stat().st_mtime_ns for p in (tmp_path / "work" / "runs").rglob("run.json"))
    assert quality.main(argv) == 0  # a second run finds everything cached: nothing trains again
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "work" / "runs").rglob("run.json")) == trained
