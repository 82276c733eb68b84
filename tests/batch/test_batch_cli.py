"""uld-batch on one machine: correct tokens, every row exactly once across a SIGKILL, clear errors for bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from batch_inputs import SMALL_ENGINE, write_prompts

from uld_vllm.batch import BatchConfig, main, run
from uld_vllm.reference import ReferenceDecoder


@pytest.fixture(scope="module")
def bundle(bundle_factory) -> Path:
    return bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)


def config(bundle: Path, input: Path, output: Path, **options) -> BatchConfig:
    return BatchConfig(
        input=str(input),
        output=str(output),
        model=str(bundle),
        max_tokens=8,
        max_model_len=128,
        dtype="float32",  # the reference decodes in float32; the default dtype depends on the CPU's flags
        engine_kwargs=SMALL_ENGINE,
        **options,
    )


def test_greedy_output_is_the_reference_uld_and_bad_rows_are_recorded(bundle, tmp_path):
    from transformers import AutoTokenizer

    prompts = write_prompts(tmp_path / "in.parquet", 24)
    table = pq.read_table(prompts)
    bad = table.column("prompt").to_pylist()
    bad[3], bad[10] = None, "   "
    pq.write_table(table.set_column(1, "prompt", pa.array(bad, pa.string())), prompts)
    summary = run(config(bundle, prompts, tmp_path / "out.parquet", on_bad_row="record", batch_size=7))
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in out] == [f"q{i}" for i in range(24)]
    assert (summary.rows, summary.written, summary.bad, summary.generated) == (24, 24, 2, 22)
    assert out[3]["error"] == "null prompt" and out[10]["error"] == "empty prompt" and out[3]["generated_text"] is None
    assert all(r["topic"] == f"t{i % 3}" for i, r in enumerate(out))
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    good = [r for r in out if r["error"] is None]
    reference = ReferenceDecoder.from_bundle(bundle)
    want = reference.generate([tokenizer(r["prompt"]).input_ids for r in good], 8, eos_token_id=tokenizer.eos_token_id)
    assert [r["generated_token_ids"] for r in good] == want
    assert all(r["num_generated_tokens"] == len(r["generated_token_ids"]) for r in good)


def test_sigkill_mid_job_then_rerun_writes_every_row_exactly_once_without_recomputing(bundle, tmp_path):
    prompts = write_prompts(tmp_path / "in.parquet", 240, seed=1)
    output = tmp_path / "out.parquet"
    command = [
        sys.executable,
        "-m",
        "uld_vllm.batch",
        "--input",
        str(prompts),
        "--output",
        str(output),
        "--model",
        str(bundle),
        "--max-tokens",
        "8",
        "--max-model-len",
        "128",
        "--dtype",
        "float32",
        "--batch-size",
        "8",
        "--engine-arg",
        "enforce_eager=true",
        "--engine-arg",
        f"kv_cache_memory_bytes={64 << 20}",
    ]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = output.parent / f".{output.name}.uld-parts"
    deadline = time.monotonic() + 300
    while len(list(parts.glob("part-*.parquet"))) < 3 and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not output.exists(), "the job was killed before finishing: no output may be visible yet"
    committed = sum(pq.read_metadata(p).num_rows for p in parts.glob("part-*.parquet"))
    assert 0 < committed < 240

    summary = run(config(bundle, prompts, output, batch_size=8))
    assert summary.generated == 240 - committed  # committed rows were not recomputed
    ids = pq.read_table(output, columns=["id"]).column("id").to_pylist()
    assert ids == [f"q{i}" for i in range(240)]
    assert not parts.exists()


def test_messages_column_renders_the_chat_template_and_n_gives_list_columns(bundle, tmp_path):
    messages = [[{"role": "user", "content": f"who wrote book {i}"}] for i in range(6)]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": messages, "top_k": [1, None, 1, None, 1, None]}), path)
    run(config(bundle, path, tmp_path / "out.parquet", n=2, temperature=1.0, seed=11))
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in out] == list(range(6))  # generated ids: the global row number
    assert all(
        r["prompt"].startswith("<s><|user|>who wrote book") and r["prompt"].endswith("<|assistant|>") for r in out
    )
    assert all(len(r["generated_text"]) == 2 and len(r["generated_token_ids"]) == 2 for r in out)
    top_1 = [r for r in out if r["top_k"] == 1]  # a per-row override: top-k 1 samples the argmax every time
    assert all(r["generated_token_ids"][0] == r["generated_token_ids"][1] for r in top_1)
    assert out[0]["messages"] == messages[0]


def run_cli(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("uld-batch: error: ") and "\n" not in err
    return err


def test_bad_inputs_fail_with_one_line_before_any_engine_starts(bundle, tmp_path, capsys, monkeypatch):
    good = write_prompts(tmp_path / "in.parquet", 5)
    args = ["--model", str(bundle), "--output", str(tmp_path / "out.parquet")]
    assert "input not found" in run_cli(capsys, "--input", str(tmp_path / "missing.parquet"), *args)
    (tmp_path / "junk.parquet").write_text("not parquet")
    assert "not a parquet file" in run_cli(capsys, "--input", str(tmp_path / "junk.parquet"), *args)
    assert "no prompt column 'question'" in run_cli(capsys, "--input", str(good), "--prompt-column", "question", *args)
    pq.write_table(pa.table({"id": [1, 2, 1], "prompt": ["a b", "c d", "e f"]}), tmp_path / "dup.parquet")
    assert "duplicate id 1" in run_cli(capsys, "--input", str(tmp_path / "dup.parquet"), *args)
    pq.write_table(pa.table({"prompt": [1, 2]}), tmp_path / "ints.parquet")
    assert "must hold strings" in run_cli(capsys, "--input", str(tmp_path / "ints.parquet"), *args)
    pq.write_table(pa.table({"prompt": ["fine", None, ""]}), tmp_path / "nulls.parquet")
    assert "2 bad rows, first at row 1: null prompt" in run_cli(
        capsys, "--input", str(tmp_path / "nulls.parquet"), *args
    )
    pq.write_table(pa.table({"prompt": ["the author " * 200]}), tmp_path / "long.parquet")
    assert "over the limit of 127" in run_cli(
        capsys, "--input", str(tmp_path / "long.parquet"), "--max-model-len", "128", *args
    )
    assert "output directory does not exist" in run_cli(
        capsys, "--input", str(good), "--model", str(bundle), "--output", str(tmp_path / "no" / "o.parquet")
    )
    assert "ULD bundle directory not found" in run_cli(
        capsys, "--input", str(good), "--model", str(tmp_path / "nobundle"), "--output", str(tmp_path / "o.parquet")
    )
    import uld_vllm.batch

    monkeypatch.setattr(uld_vllm.batch, "DEFAULT_BUNDLE", tmp_path / "no-default")  # a checkout without it
    no_model = run_cli(capsys, "--input", str(good), "--output", str(tmp_path / "o.parquet"))
    assert "no --model given and the embedded default bundle is missing" in no_model
    pq.write_table(pa.table({"prompt": ["a"], "generated_text": ["x"]}), tmp_path / "clash.parquet")
    assert "clash" in run_cli(capsys, "--input", str(tmp_path / "clash.parquet"), *args)


def test_directory_and_glob_inputs_resolve_in_sorted_order(tmp_path):
    from uld_vllm.batch import resolve_inputs

    for name in ("b.parquet", "a.parquet", "c.txt"):
        (tmp_path / name).write_bytes(b"") if name.endswith("txt") else write_prompts(tmp_path / name, 2)
    assert [p.name for p in resolve_inputs(str(tmp_path))] == ["a.parquet", "b.parquet"]
    assert [p.name for p in resolve_inputs(str(tmp_path / "*.parquet"))] == ["a.parquet", "b.parquet"]


def test_a_changed_job_is_refused_by_name_only_when_parts_were_committed(tmp_path):
    from uld_vllm.batch import ROW, BatchError, WorkDir

    output = tmp_path / "out.parquet"
    job = {"dtype": "float32", "temperature": 0.0, "files": [["in.parquet", 10, 1]]}
    WorkDir(output, job)
    WorkDir(output, job | {"dtype": "bfloat16"})  # nothing committed yet: a corrected rerun starts over
    work = WorkDir(output, job)
    work.commit(pa.table({ROW: pa.array([0], pa.int64())}))
    WorkDir(output, job)  # the same job resumes
    with pytest.raises(BatchError, match=r"other dtype, temperature \(input or options changed\)"):
        WorkDir(output, job | {"dtype": "bfloat16", "temperature": 1.0})
    with pytest.raises(BatchError, match="other engine_kwargs"):
        WorkDir(output, job | {"engine_kwargs": {"quantization": "fp8"}})


def test_a_context_longer_than_the_models_is_one_line_naming_the_setting(bundle, tmp_path, capsys):
    good = write_prompts(tmp_path / "in.parquet", 3)
    args = ["--model", str(bundle), "--input", str(good), "--output", str(tmp_path / "out.parquet")]
    err = run_cli(capsys, *args, "--max-model-len", "100000")
    assert "--max-model-len 100000 exceeds the model's context of" in err and "max_position_embeddings" in err


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
    args = ["--model", str(bundle), "--input", str(path), "--output", str(tmp_path / "out.parquet")]
    err = run_cli(capsys, *args)
    assert f"1 bad rows, first at row 2: {message}" in err
