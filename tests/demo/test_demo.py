"""The embedded default bundle and uld-demo: what a newcomer runs first (`make demo`)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SMALL_ENGINE, refusal

from uld_vllm.batch import BatchConfig, run
from uld_vllm.batch.config import DEFAULT_BUNDLE
from uld_vllm.bundle import read_bundle
from uld_vllm.demo import EXAMPLE_PROMPTS, main


def test_the_default_bundle_ships_small_and_whole():
    bundle = read_bundle(DEFAULT_BUNDLE)
    assert bundle.settings.weight < 0 and bundle.settings.assistant_format == "lora"
    size = sum(f.stat().st_size for f in DEFAULT_BUNDLE.rglob("*") if f.is_file())
    assert size < 10e6
    assert not any(f.is_symlink() for f in DEFAULT_BUNDLE.rglob("*"))  # self-contained: the repository holds it


def test_example_prompts_mix_forget_retain_and_utility_questions():
    table = pq.read_table(EXAMPLE_PROMPTS)
    assert {"id", "messages", "question", "set"} <= set(table.column_names)
    assert set(table.column("set").to_pylist()) == {"forget", "retain", "utility"}


@pytest.mark.vllm
def test_uld_batch_without_model_uses_the_default_bundle(tmp_path):
    pq.write_table(
        pa.table({"messages": [[{"role": "user", "content": "Who is the author of The Paper Lantern?"}]]}),
        tmp_path / "in.parquet",
    )
    config = BatchConfig(
        input=str(tmp_path / "in.parquet"),
        output=str(tmp_path / "out.parquet"),
        max_tokens=4,
        dtype="float32",
        engine_args=SMALL_ENGINE,
    )
    assert run(config).written == 1


@pytest.mark.vllm
def test_demo_prints_target_and_uld_answers_side_by_side(tmp_path, capsys):
    rows = pq.read_table(EXAMPLE_PROMPTS).slice(0, 3)
    pq.write_table(rows, tmp_path / "in.parquet")
    argv = ["--input", str(tmp_path / "in.parquet"), "--output-dir", str(tmp_path), "--max-tokens", "6"]
    assert main(argv + ["--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert out.count("    target: ") == 3 and out.count("    ULD:    ") == 3
    for question in rows.column("question").to_pylist():
        assert question in out
    target = pq.read_table(tmp_path / "target.parquet").column("generated_token_ids").to_pylist()
    uld = pq.read_table(tmp_path / "uld.parquet").column("generated_token_ids").to_pylist()
    assert len(target) == len(uld) == 3


def test_demo_with_a_missing_model_is_one_line(tmp_path, capsys):
    assert "ULD bundle directory not found" in refusal(capsys, main, "--model", tmp_path / "nope")
