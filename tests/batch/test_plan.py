"""uld-batch's input plan: every bad input is one line and exit 2, before any engine starts (none starts here)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import refusal, write_prompts

from uld_vllm.batch import main


@pytest.fixture(scope="module")
def bundle(bundle_factory) -> Path:
    return bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)


def parquet(path: Path, **columns) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def junk(path: Path) -> Path:
    path.write_text("not parquet")
    return path


def two_schemas(directory: Path) -> Path:
    directory.mkdir()
    parquet(directory / "a.parquet", prompt=["x"])
    parquet(directory / "b.parquet", prompt=["y"], extra=[1])
    return directory


# (input written into tmp_path, extra argv, what the one line must say)
CASES: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "missing input": (lambda d: d / "missing.parquet", [], "input not found"),
    "not parquet": (lambda d: junk(d / "junk.parquet"), [], "is not a parquet file"),
    "empty directory": (lambda d: (d / "empty").mkdir() or d / "empty", [], "no .parquet files in input directory"),
    "glob matching nothing": (lambda d: d / "nothing-*.parquet", [], "matches no files"),
    "files with different columns": (lambda d: two_schemas(d / "two"), [], "input files have different columns"),
    "no rows": (lambda d: parquet(d / "none.parquet", prompt=pa.array([], pa.string())), [], "holds no rows"),
    "no prompt column": (
        lambda d: write_prompts(d / "in.parquet", 3),
        ["--prompt-column", "question"],
        "no prompt column 'question'",
    ),
    "prompt column not strings": (lambda d: parquet(d / "ints.parquet", prompt=[1, 2]), [], "must hold strings"),
    "messages not chat turns": (
        lambda d: parquet(d / "m.parquet", messages=["hi"]),
        [],
        "messages column must hold lists",
    ),
    "duplicate id": (
        lambda d: parquet(d / "dup.parquet", id=[1, 2, 1], prompt=["a b", "c d", "e f"]),
        [],
        "duplicate id 1",
    ),
    "null id": (
        lambda d: parquet(d / "nullid.parquet", id=["a", None], prompt=["a b", "c d"]),
        [],
        "has a null at row 1",
    ),
    "null and empty prompts": (
        lambda d: parquet(d / "nulls.parquet", prompt=["fine", None, ""]),
        [],
        "2 bad rows, first at row 1: null prompt",
    ),
    "empty messages": (
        lambda d: parquet(
            d / "em.parquet",
            messages=pa.array([[]], pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ),
        [],
        "1 bad rows, first at row 0: empty messages",
    ),
    "prompt over the context": (
        lambda d: parquet(d / "long.parquet", prompt=["the author " * 200]),
        ["--max-model-len", "128"],
        "over the limit of 127",
    ),
    "column clashing with the output": (
        lambda d: parquet(d / "clash.parquet", prompt=["a"], generated_text=["x"]),
        [],
        "clash with uld-batch output columns",
    ),
    "context over the model's": (
        lambda d: write_prompts(d / "in.parquet", 3),
        ["--max-model-len", "100000"],
        "--max-model-len 100000 exceeds the model's context of",
    ),
    "n > 1 greedy": (lambda d: write_prompts(d / "in.parquet", 3), ["--n", "2"], "n = 2 needs sampling"),
    "zero max tokens": (lambda d: write_prompts(d / "in.parquet", 3), ["--max-tokens", "0"], "must be >= 1"),
    "zero replicas": (
        lambda d: write_prompts(d / "in.parquet", 3),
        ["--ray", "--num-replicas", "0"],
        "--num-replicas must be >= 1",
    ),
    "engine arg without a value": (
        lambda d: write_prompts(d / "in.parquet", 3),
        ["--engine-arg", "enforce_eager"],
        "is not KEY=VALUE",
    ),
    "filter out of range": (
        lambda d: write_prompts(d / "in.parquet", 3),
        ["--filter", "1.5"],
        "ULD filter must be in [0, 1)",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_line_before_any_engine(case, bundle, tmp_path, capsys):
    make_input, extra, message = CASES[case]
    argv = ["--input", make_input(tmp_path), "--model", bundle, "--output", tmp_path / "out.parquet", *extra]
    assert message in refusal(capsys, main, *argv)
    assert not (tmp_path / ".out.parquet.uld-parts").exists(), "a refused job leaves no work directory"


@pytest.mark.parametrize(
    "output, message",
    [("no/such/dir/out.parquet", "output directory does not exist"), (".", "is a directory")],
)
def test_a_bad_output_path_is_one_line(output, message, bundle, tmp_path, capsys):
    good = write_prompts(tmp_path / "in.parquet", 3)
    assert message in refusal(capsys, main, "--input", good, "--model", bundle, "--output", tmp_path / output)


def test_a_missing_bundle_and_a_missing_default_bundle_are_one_line(tmp_path, capsys, monkeypatch):
    good = write_prompts(tmp_path / "in.parquet", 3)
    args = ["--input", good, "--output", tmp_path / "o.parquet"]
    assert "model not found" in refusal(capsys, main, *args, "--model", tmp_path / "nobundle")
    monkeypatch.setenv("ULD_CACHE", str(tmp_path / "empty-cache"))  # a machine whose setup has not fetched the base
    assert "is not fetched: run `uld-model fetch smollm2-135m-instruct`" in refusal(capsys, main, *args)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("temperature", -1.0, "temperature must be non-negative"),
        ("top_p", 0.0, "top_p must be in (0, 1]"),
        ("max_tokens", 0, "max_tokens must be at least 1"),
        ("top_k", -5, "top_k must be 0 (disable), or at least 1"),
    ],
)
def test_a_per_row_sampling_value_vllm_refuses_is_named_per_row_before_any_engine(
    bundle, tmp_path, capsys, column, value, message
):
    path = write_prompts(tmp_path / "in.parquet", 4, **{column: pa.array([None, None, value, None])})
    err = refusal(capsys, main, "--model", bundle, "--input", path, "--output", tmp_path / "out.parquet")
    assert f"1 bad rows, first at row 2: {message}" in err


def test_directory_and_glob_inputs_resolve_in_sorted_order(tmp_path):
    from uld_vllm.batch.plan import resolve_inputs

    for name in ("b.parquet", "a.parquet", "c.txt"):
        (tmp_path / name).write_bytes(b"") if name.endswith("txt") else write_prompts(tmp_path / name, 2)
    assert [p.name for p in resolve_inputs(str(tmp_path))] == ["a.parquet", "b.parquet"]
    assert [p.name for p in resolve_inputs(str(tmp_path / "*.parquet"))] == ["a.parquet", "b.parquet"]


def test_the_plan_keeps_each_chunks_pending_rows_with_their_token_ids(bundle, tmp_path):
    """Chunks are --batch-size rows within each file; resumed rows and rows skipped as bad are left out; the ids
    kept are the tokenizer's (chat renders add no second BOS)."""
    from transformers import AutoTokenizer

    from uld_vllm.batch.config import BatchConfig
    from uld_vllm.batch.plan import PROMPT_IDS, plan_input, resolve_inputs

    directory = tmp_path / "in"
    directory.mkdir()
    write_prompts(directory / "a.parquet", 7)
    table = pq.read_table(write_prompts(directory / "b.parquet", 5, seed=1))
    prompts = table.column("prompt").to_pylist()
    prompts[1] = " "
    ids = [f"r{i}" for i in range(5)]
    pq.write_table(
        table.set_column(0, "id", pa.array(ids)).set_column(1, "prompt", pa.array(prompts)), directory / "b.parquet"
    )
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    config = BatchConfig(input=str(directory), output="unused", batch_size=3, max_model_len=128, on_bad_row="skip")
    plan = plan_input(config, tokenizer, resolve_inputs(config.input), done={0, 1, 2, 4})
    assert [(c.first_row, c.num_rows, c.rows.column("_row").to_pylist()) for c in plan.chunks] == [
        (3, 3, [3, 5]),
        (6, 1, [6]),
        (7, 3, [7, 9]),  # row 8 (blank prompt) is skipped as bad
        (10, 2, [10, 11]),
    ]
    assert plan.bad == {8: "empty prompt"} and plan.rows == 12
    for chunk in plan.chunks:
        texts = chunk.rows.column("prompt").to_pylist()
        assert chunk.rows.column(PROMPT_IDS).to_pylist() == [tokenizer(t).input_ids for t in texts]
