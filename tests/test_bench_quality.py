"""bench/quality.py: the protocol's selection rule, and the whole study end to end on a tiny mini-TOFU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import quality
from bench.quality_parts.dataset import VALIDATION
from bench.quality_parts.minitofu import MiniTofu
from bench.quality_parts.tofu import Tofu

M_KEYS = ("forget_quality", "model_utility", "ks_d", "rouge_forget", "rouge_retain", "extraction_strength",
          "exact_memorization", "train_seconds", "logs", "gibberish_forget", "gibberish_retain")  # fmt: skip


def small_protocol(monkeypatch: pytest.MonkeyPatch, dataset: type) -> None:
    """One lr, two epochs, two seeds, one decoding, forget01 only, ULD and GA: every phase, in minutes."""
    small = {"lr_grid": [1e-3], "max_epochs": 2, "seeds": [0, 1], "uld_decoding": [{"weight": -0.8, "filter": 0.1}]}
    for key, value in small.items():
        monkeypatch.setitem(dataset.protocol, key, value)
    monkeypatch.setattr(dataset, "test_splits", ("forget01",))
    monkeypatch.setattr(quality, "METHODS", ("uld", "ga"))


def point(lr: float, epoch: int, fq: float, mu: float) -> dict:
    return {"lr": lr, "epoch": epoch, "forget_quality": fq, "model_utility": mu}


def test_selection_takes_the_best_forget_quality_above_the_utility_floor() -> None:
    points = [
        point(1e-3, 1, 0.9, 0.50),
        point(1e-4, 2, 0.3, 0.96),
        point(1e-4, 3, 0.2, 0.99),
        point(1e-5, 1, 0.3, 0.98),
    ]
    chosen = quality.select(points, 1.0, 0.95)
    assert (chosen["lr"], chosen["epoch"], chosen["passed_utility_floor"]) == (1e-5, 1, True)  # FQ tie: more utility
    assert quality.select(points, 0.5, 0.95)["forget_quality"] == 0.9  # 0.50 >= 0.95 x 0.5 passes too


def test_selection_without_a_passing_snapshot_says_so_and_keeps_the_most_utility() -> None:
    chosen = quality.select([point(1e-3, 1, 0.9, 0.2), point(1e-4, 1, 0.1, 0.4)], 1.0, 0.95)
    assert (chosen["lr"], chosen["passed_utility_floor"]) == (1e-4, False)


def test_the_step_budget_is_the_grid_runs_own_and_must_be_equal() -> None:
    def methods(*steps: int) -> dict:
        return {f"m{i}": {"grid": {"points": [{"epoch": 1, "steps": n // 2}, {"epoch": 2, "steps": n}]}}
                for i, n in enumerate(steps)}  # fmt: skip

    assert quality.step_budget(methods(6, 6), 2) == 6
    assert quality.step_budget({}, 2) is None
    with pytest.raises(RuntimeError, match="different optimizer steps"):
        quality.step_budget(methods(6, 8), 2)


@pytest.mark.vllm
def test_the_study_runs_every_phase_and_writes_what_tools_read(tmp_path: Path, monkeypatch) -> None:
    from uld_train.pretrain import main as minitofu_main

    tiny = ["--epochs", "1", "--layers", "3", "--hidden", "64", "--heads", "2", "--intermediate", "64"]
    assert (
        minitofu_main(["build", "--dir", str(tmp_path / "study"), *tiny, "--batch-size", "256", "--no-progress"]) == 0
    )
    small_protocol(monkeypatch, MiniTofu)
    monkeypatch.setattr(quality, "RESULTS", tmp_path / "results")
    monkeypatch.setenv("ULD_DTYPE", "float32")
    argv = ["--study", str(tmp_path / "study"), "--work", str(tmp_path / "work"), "--no-progress"]
    assert quality.main(argv) == 0

    result = json.loads((tmp_path / "results" / "quality-minitofu.json").read_text())
    assert result["protocol"]["lr_grid"] == [1e-3] and "selection" in result["protocol"]
    split = result["splits"]["forget01"]
    budget = result["protocol"]["step_budget"]["forget01"]
    assert budget > 0 and {p["steps"] for m in split["methods"].values() for p in m["grid"]["points"]} == {
        budget // 2,
        budget,
    }
    assert len(split["noise"]) == 10  # every pair of the 5 forget10 retain models
    for method in ("uld", "ga"):
        record = split["methods"][method]
        assert len(record["grid"]["points"]) == 2  # one lr, two epochs, one decoding
        assert [row["seed"] for row in record["seeds"]] == [0, 1]
        assert {row["steps"] for row in record["seeds"]} <= {budget // 2, budget}
        for row in record["seeds"] + [split["retain"]]:
            assert set(M_KEYS) <= set(row) and 0 <= row["extraction_strength"] <= 1
            logs = tmp_path / "results" / row["logs"]
            assert (logs / "eval_log_forget.json").exists() and (logs / "eval_log.json").exists()
    assert split["methods"]["uld"]["selected"]["weight"] == -0.8
    assert (tmp_path / "results" / "quality-minitofu.png").stat().st_size > 0
    markdown = (tmp_path / "results" / "quality-minitofu.md").read_text()
    assert "| ULD | lr 1e-3 (grid edge), epoch" in markdown and "Noise floor, 10 pairs" in markdown  # a 1-lr grid
    assert result["run_commits"] and all(len(c) >= 40 for c in result["run_commits"])
    assert (tmp_path / "results" / split["target"]["logs"] / "eval_log_forget.json").exists()

    def stamps() -> dict[Path, int]:  # every run's and every evaluation's
        return {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "runs").rglob("run.json")}

    trained = stamps()
    assert quality.main(argv) == 0  # a second run finds everything cached: nothing trains again
    assert stamps() == trained

    build = MiniTofu.build

    def build_then_edit(self):  # the test runs' retain set changes after the build wrote it
        built = build(self)
        retain = self.unlearn_files("forget01")[1]
        retain.write_text("".join(retain.read_text().splitlines(keepends=True)[1:]))
        return built

    monkeypatch.setattr(MiniTofu, "build", build_then_edit)
    assert quality.main(argv) == 0  # those runs train again and are evaluated again; the grid's stay
    changed = {p.relative_to(tmp_path / "work" / "runs") for p, t in stamps().items() if trained[p] != t}
    assert {p.parts[0] for p in changed} == {"forget01"} and len(
        changed
    ) == 2 * 2 * 2  # (run, its logs) x seeds x methods


def test_tofu_splits_train_on_nothing_their_evaluation_scores(tmp_path: Path) -> None:
    from uld_train.data import check_unscored, read_qa
    from uld_train.finetune import FinetuneConfig
    from uld_vllm import tofu
    from uld_vllm.eval.data import read_eval_data
    from uld_vllm.qa import read_rows

    dataset = Tofu(tmp_path, progress=False, jobs=1, base=tmp_path, recipe=FinetuneConfig())
    dataset.write_data()
    expected = {
        "forget01": (198, 199),
        "forget05": range(190, 200),
        "forget01_val": (18, 19),
        "forget05_val": range(10, 20),
    }
    for split, forgotten in expected.items():
        evaluation = read_eval_data(dataset.data(split))
        forget_file, retain_file = dataset.unlearn_files(split)
        check_unscored(read_qa(forget_file, "forget").pairs, read_qa(retain_file, "retain").pairs, evaluation)
        assert tofu.authors(read_rows(forget_file, "forget")) == list(forgotten)
        retained = range(190, 200) if split.endswith(VALIDATION) else range(10, 20)  # the other group
        assert tofu.authors(read_rows(retain_file, "retain")) == list(retained)
        assert tofu.authors(read_rows(dataset.data(split) / "retain.jsonl", "evaluated retain")) == list(range(10))
        assert [e.question for e in evaluation["forget"]] == [r["question"] for r in read_rows(forget_file, "forget")]
        assert {len(e.perturbed_answers) for e in evaluation["forget"]} == {5}  # TOFU's own, for the truth ratio


@pytest.mark.vllm
def test_the_tofu_study_runs_every_phase_on_a_tiny_base(tmp_path: Path, monkeypatch) -> None:
    """The TOFU dataset end to end: its models fine-tuned (the committed adapters are SmolLM2's, so a tiny base
    trains its own and leaves them alone), merged, unlearned, judged by the base; the runs' models deleted."""
    from bench.quality_parts import tofu
    from uld_train.finetune import FinetuneConfig
    from uld_vllm import tofu as tofu_files
    from uld_vllm.bpe_tokenizer import train_bpe_tokenizer
    from uld_vllm.fetch import MARKER
    from uld_vllm.random_models import build_target
    from uld_vllm.smollm2_tofu import ADAPTERS

    committed = sorted((p, p.stat().st_mtime_ns) for p in ADAPTERS.rglob("*") if p.is_file())
    texts = [r["question"] + " " + r["answer"] for name in ("full", "real_authors_perturbed", "world_facts_perturbed")
             for r in tofu_files.rows(name)]  # fmt: skip
    tokenizer = train_bpe_tokenizer(tmp_path / "tokenizer", texts, 1024)
    base = build_target(tmp_path / "base", layers=2, hidden=64, heads=2, kv_heads=1, tokenizer_dir=tokenizer)
    (base / MARKER).write_text(json.dumps({"model": "tiny random"}))  # its pin, as fetch writes one
    recipe = FinetuneConfig(epochs=1, batch_size=32, lora_r=4, autocast="float32")
    small_protocol(monkeypatch, Tofu)
    monkeypatch.setattr(tofu, "NOISE_SEEDS", 3)
    monkeypatch.setitem(Tofu.protocol, "max_new_tokens", 8)
    monkeypatch.setitem(Tofu.method_args, "uld", {"layers": 1})
    monkeypatch.setattr(quality, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(quality, "datasets", lambda: {"tofu": lambda *a: Tofu(*a, base=base, recipe=recipe)})
    monkeypatch.setenv("ULD_DTYPE", "float32")
    work = tmp_path / "work"
    argv = ["--dataset", "tofu", "--study", str(tmp_path / "study"), "--work", str(work), "--no-progress"]
    assert quality.main(argv) == 0

    result = json.loads((tmp_path / "results" / "quality-tofu.json").read_text())
    split = result["splits"]["forget01"]
    assert len(split["noise"]) == 3  # every pair of the 3 retain_forget05 seeds
    assert result["protocol"]["judge"].startswith("the pretrained SmolLM2")
    for method in ("uld", "ga"):
        record = split["methods"][method]
        assert len(record["grid"]["points"]) == 2 and [row["seed"] for row in record["seeds"]] == [0, 1]
        for row in record["seeds"]:
            assert set(M_KEYS) <= set(row) and row["gibberish_forget"] is not None
    assert not list((work / "runs").rglob("*.safetensors"))  # every run's models deleted once evaluated
    assert sorted((p, p.stat().st_mtime_ns) for p in ADAPTERS.rglob("*") if p.is_file()) == committed
    assert quality.main(argv) == 0  # all cached: nothing trains again though the models are gone
