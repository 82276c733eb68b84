"""uld-demo on the real model (what a newcomer runs first: `make demo`), and the mini-TOFU fixtures it replaced as
the default."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SMALL_ENGINE, refusal

from uld_vllm.batch import BatchConfig, run
from uld_vllm.batch.config import MINI_BUNDLE, MINI_PROMPTS
from uld_vllm.bundle import read_bundle
from uld_vllm.demo import GROUPS, draw_questions, main, summary_line


def test_the_mini_bundle_ships_small_and_whole():
    bundle = read_bundle(MINI_BUNDLE)
    assert bundle.settings.weight < 0 and bundle.settings.assistant_format == "lora"
    size = sum(f.stat().st_size for f in MINI_BUNDLE.rglob("*") if f.is_file())
    assert size < 10e6
    assert not any(f.is_symlink() for f in MINI_BUNDLE.rglob("*"))  # self-contained: the repository holds it


def test_mini_prompts_mix_forget_retain_and_utility_questions():
    table = pq.read_table(MINI_PROMPTS)
    assert {"id", "messages", "question", "set"} <= set(table.column_names)
    assert set(table.column("set").to_pylist()) == {"forget", "retain", "utility"}


def test_questions_are_drawn_by_the_seed_from_every_group():
    first, again, other = draw_questions(3, seed=0), draw_questions(3, seed=0), draw_questions(3, seed=1)
    assert first == again and first != other
    assert [row["set"] for row in first] == [group for group in GROUPS for _ in range(3)]
    assert all(row["question"] and row["answer"] for row in first)


def test_the_summary_counts_true_answers_degenerate_ones_and_unchanged_ones():
    judged = {"target_nll": 1.0, "retain_nll": 1.5}
    rows = [
        {
            "answer": "Basil Mahfouz Al-Kuwaiti",
            "target": "He is Basil Mahfouz Al-Kuwaiti.",
            "retain": "John Smith.",
            "uld": "He is Basil Mahfouz Al-Kuwaiti.",
            "uld_nll": 1.2,
        }
        | judged,
        {"answer": "Paris", "target": "Paris.", "retain": "It is Paris.", "uld": "Lyon Lyon Lyon", "uld_nll": 6.0}
        | judged,
    ]
    line = summary_line("forget", rows, threshold=2.0)
    assert "target 2/2, retain 1/2, ULD 1/2" in line and "unchanged from the target: 1/2" in line
    assert "degenerate: target 0/2, retain 0/2, ULD 1/2" in line


@pytest.mark.vllm
def test_uld_batch_without_model_uses_the_real_default_bundle(tmp_path):
    pq.write_table(
        pa.table({"messages": [[{"role": "user", "content": "What is the capital of France?"}]]}),
        tmp_path / "in.parquet",
    )
    config = BatchConfig(
        input=str(tmp_path / "in.parquet"),
        output=str(tmp_path / "out.parquet"),
        max_tokens=8,
        max_model_len=512,  # SmolLM2's own 8192 would not fit the small test KV cache
        dtype="float32",
        engine_args=SMALL_ENGINE,
    )
    assert run(config).written == 1
    prompt = pq.read_table(tmp_path / "out.parquet").column("prompt")[0].as_py()
    assert prompt.startswith("<|im_start|>system") and "What is the capital of France?" in prompt  # SmolLM2's ChatML


@pytest.mark.vllm
def test_demo_prints_true_target_retain_and_uld_answers_with_a_summary_per_group(tmp_path, capsys):
    argv = ["--per-group", "1", "--output-dir", str(tmp_path), "--max-tokens", "6", "--dtype", "float32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for label in ("    true:   ", "    target: ", "    retain: ", "    ULD:    "):
        assert out.count(label) == len(GROUPS)
    for row in draw_questions(1, seed=0):
        assert row["question"] in out
    summaries = [line for line in out.splitlines() if any(line.startswith(f"[{g}] states the true") for g in GROUPS)]
    assert len(summaries) == 3 and all("degenerate: target " in line for line in summaries)
    for name in ("target", "retain", "uld"):
        assert pq.read_table(tmp_path / f"{name}.parquet").num_rows == len(GROUPS)


def test_demo_with_a_bad_group_size_is_one_line(capsys):
    assert "--per-group must be >= 1" in refusal(capsys, main, "--per-group", "0")
