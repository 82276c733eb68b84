"""uld-batch on one machine: the reference's tokens, every row exactly once across a SIGKILL, input read and tokenized once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import batch_config, count_model_reads, write_prompts

from uld_vllm.batch import run
from uld_vllm.reference import ReferenceDecoder

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def bundle(bundle_factory) -> Path:
    return bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)


def test_greedy_output_is_the_reference_uld_and_bad_rows_are_recorded(bundle, tmp_path):
    from transformers import AutoTokenizer

    prompts = write_prompts(tmp_path / "in.parquet", 24)
    table = pq.read_table(prompts)
    bad = table.column("prompt").to_pylist()
    bad[3], bad[10] = None, "   "
    pq.write_table(table.set_column(1, "prompt", pa.array(bad, pa.string())), prompts)
    summary = run(batch_config(bundle, prompts, tmp_path / "out.parquet", on_bad_row="record", batch_size=7))
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

    summary = run(batch_config(bundle, prompts, output, batch_size=8))
    assert summary.generated == 240 - committed  # committed rows were not recomputed
    ids = pq.read_table(output, columns=["id"]).column("id").to_pylist()
    assert ids == [f"q{i}" for i in range(240)]
    assert not parts.exists()


def test_messages_column_renders_the_chat_template_and_n_gives_list_columns(bundle, tmp_path):
    messages = [[{"role": "user", "content": f"who wrote book {i}"}] for i in range(6)]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": messages, "top_k": [1, None, 1, None, 1, None]}), path)
    run(batch_config(bundle, path, tmp_path / "out.parquet", n=2, temperature=1.0, seed=11))
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [r["id"] for r in out] == list(range(6))  # generated ids: the global row number
    assert all(
        r["prompt"].startswith("<s><|user|>who wrote book") and r["prompt"].endswith("<|assistant|>") for r in out
    )
    assert all(len(r["generated_text"]) == 2 and len(r["generated_token_ids"]) == 2 for r in out)
    top_1 = [r for r in out if r["top_k"] == 1]  # a per-row override: top-k 1 samples the argmax every time
    assert all(r["generated_token_ids"][0] == r["generated_token_ids"][1] for r in top_1)
    assert out[0]["messages"] == messages[0]


def test_a_job_reads_every_input_row_once_and_tokenizes_every_prompt_once(bundle, tmp_path, monkeypatch):
    import uld_vllm.batch.job

    path = write_prompts(tmp_path / "in.parquet", 10)
    rows_read: Counter[str] = Counter()
    texts_tokenized: list[str] = []

    def counted(read):
        """A ParquetFile reading method that counts the rows it returns, per file."""

        def wrapper(self, *args, **kwargs):
            result = read(self, *args, **kwargs)
            if isinstance(result, pa.Table):
                rows_read[self.uld_source] += result.num_rows
                return result

            def batches():
                for batch in result:
                    rows_read[self.uld_source] += batch.num_rows
                    yield batch

            return batches()

        return wrapper

    init = pq.ParquetFile.__init__

    def remember_source(self, source, *args, **kwargs):
        init(self, source, *args, **kwargs)
        self.uld_source = str(source)

    monkeypatch.setattr(pq.ParquetFile, "__init__", remember_source)
    for method in ("iter_batches", "read", "read_row_group", "read_row_groups"):
        monkeypatch.setattr(pq.ParquetFile, method, counted(getattr(pq.ParquetFile, method)))
    monkeypatch.setattr(pq, "read_table", counted_read_table(pq.read_table, rows_read))
    load = uld_vllm.batch.job.load_tokenizer

    def counting_tokenizer(bundle):
        tokenizer = load(bundle)
        encode = type(tokenizer).__call__

        def call(self, text, *args, **kwargs):
            texts_tokenized.extend([text] if isinstance(text, str) else text)
            return encode(self, text, *args, **kwargs)

        tokenizer.__class__ = type("CountingTokenizer", (type(tokenizer),), {"__call__": call})
        return tokenizer

    monkeypatch.setattr(uld_vllm.batch.job, "load_tokenizer", counting_tokenizer)
    summary = run(batch_config(bundle, path, tmp_path / "out.parquet", batch_size=4, max_tokens=2))
    assert summary.written == 10
    assert rows_read[str(path)] == 10, f"input rows read {rows_read[str(path)]} times for 10 rows"
    assert sorted(texts_tokenized) == sorted(pq.read_table(path).column("prompt").to_pylist())


def counted_read_table(read_table, rows_read: Counter[str]):
    def wrapper(source, *args, **kwargs):
        table = read_table(source, *args, **kwargs)
        rows_read[str(source)] += table.num_rows
        return table

    return wrapper


def test_a_job_reads_its_model_and_input_files_once_and_builds_each_rows_sampling_params_once(
    bundle, tmp_path, monkeypatch
):
    """uld's own reads in one job (vLLM parses the config itself, once, to build its engine): the bundle's config
    and its adapter once, each input file's footer once; with sampling columns, each row's SamplingParams once."""
    import uld_vllm.batch.generate
    import uld_vllm.batch.sampling

    rows = 10
    path = write_prompts(tmp_path / "in.parquet", rows, top_k=[1 + i % 3 for i in range(rows)])
    reads = count_model_reads(monkeypatch, bundle)
    footers: Counter[str] = Counter()
    params_rows: Counter[int] = Counter()

    init, read_schema, read_metadata = pq.ParquetFile.__init__, pq.read_schema, pq.read_metadata

    def counted_init(self, source, *args, **kwargs):
        footers[str(source)] += 1
        init(self, source, *args, **kwargs)

    def counted_footer(read):
        def wrapper(source, *args, **kwargs):
            footers[str(source)] += 1
            return read(source, *args, **kwargs)

        return wrapper

    params_for = uld_vllm.batch.sampling.sampling_params_for

    def counted_params(config, row, overrides):
        params_rows[row] += 1
        return params_for(config, row, overrides)

    monkeypatch.setattr(pq.ParquetFile, "__init__", counted_init)
    monkeypatch.setattr(pq, "read_schema", counted_footer(read_schema))
    monkeypatch.setattr(pq, "read_metadata", counted_footer(read_metadata))
    monkeypatch.setattr(uld_vllm.batch.sampling, "sampling_params_for", counted_params)
    monkeypatch.setattr(uld_vllm.batch.generate, "sampling_params_for", counted_params)

    summary = run(batch_config(bundle, path, tmp_path / "out.parquet", batch_size=4, max_tokens=2))
    assert summary.written == rows
    assert reads == {"config": 1, "adapter": 1}, reads
    assert footers == {str(path): 1}, footers
    assert params_rows == dict.fromkeys(range(rows), 1), params_rows
