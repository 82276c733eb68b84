"""uld-batch --ray: a pool of Ray engine replicas writes the single-process output, row for row, even when one dies."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import batch_config

from uld_vllm.batch import run
from uld_vllm.batch.plan import resolve_inputs
from uld_vllm.batch.workdir import WorkDir

pytestmark = pytest.mark.vllm

# The engines here (the single-process reference and the replicas, which inherit this environment through the local
# cluster) run their engine core in-process, as tests/conftest.py sets: no forking next to Ray's threads.

ROWS = 61


def write_input(directory: Path) -> Path:
    """Two files (31 + 30 rows) in row groups of 5, so chunks of 8 straddle row groups and files end mid-chunk.
    String ids, a per-row max_tokens override, a few seeded sampled rows, a passthrough column, one empty prompt."""
    words = ["the author", "was born in", "a novel", "who wrote", "the city of", "her father", "an award", "in 1984"]
    rows = []
    for i in range(ROWS):
        prompt = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 5))
        rows.append(
            {
                "id": f"q{i:03d}",
                "prompt": "" if i == 17 else prompt.capitalize(),
                "max_tokens": 3 + i % 4,
                "temperature": 1.0 if i % 10 == 3 else None,
                "topic": i % 7,
            }
        )
    directory.mkdir()
    for name, part in (("a.parquet", rows[:31]), ("b.parquet", rows[31:])):
        pq.write_table(pa.Table.from_pylist(part), directory / name, row_group_size=5)
    return directory


def config(inputs: Path, output: Path, bundle: Path, **options):
    """Chunks of 8 rows, seeded sampling for some rows, bad rows recorded; a 32 MiB KV cache per engine."""
    engine = {"enforce_eager": True, "kv_cache_memory_bytes": 32 << 20}
    settings = dict(max_tokens=4, seed=7, batch_size=8, on_bad_row="record", engine_args=engine)
    return batch_config(bundle, inputs, output, **(settings | options))


@pytest.fixture(scope="module")
def bundle(bundle_factory) -> Path:
    return bundle_factory(family="llama", assistant="lora", filter=0.1, assistant_layers=2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return write_input(tmp_path_factory.mktemp("ray-batch") / "in")


@pytest.fixture(scope="module")
def single_process_output(bundle, inputs, tmp_path_factory) -> pa.Table:
    """The reference: uld-batch without Ray (it shuts its in-process engine down before Ray starts)."""
    output = tmp_path_factory.mktemp("single") / "out.parquet"
    summary = run(config(inputs, output, bundle))
    assert summary.written == ROWS
    return pq.read_table(output)


@pytest.mark.ray
def test_ray_batch_output_equals_single_process_row_for_row(
    bundle, inputs, single_process_output, ray_cluster, tmp_path
):
    output = tmp_path / "out.parquet"
    summary = run(config(inputs, output, bundle, ray=True, num_replicas=2))

    table = pq.read_table(output)
    assert table.schema == single_process_output.schema
    assert table.to_pylist() == single_process_output.to_pylist()
    assert summary.generated == ROWS - 1  # row 17 (empty prompt) is recorded, not generated
    assert table.column("error").to_pylist()[17] == "empty prompt"
    assert not (tmp_path / ".out.parquet.uld-parts").exists()


def busy_replica_pids() -> list[int]:
    """Replica actors running a chunk now: Ray titles a worker `ray::Class.method` while it executes a task."""
    import psutil

    pids = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        title = " ".join(process.info["cmdline"] or [])
        if title.startswith("ray::") and "_Replica" in title and title.rstrip().endswith(".submit"):
            pids.append(process.info["pid"])
    return pids


@pytest.mark.ray
def test_ray_batch_resumes_and_with_a_replica_killed_mid_job_writes_every_row_exactly_once(
    bundle, inputs, single_process_output, ray_cluster, tmp_path
):
    output = tmp_path / "out.parquet"
    job = config(inputs, output, bundle, ray=True, num_replicas=2)
    # A previous run committed rows 0-10: chunk 0 whole, chunk 1 in part (its rows 8-10 travel as the chunk's skips).
    work = WorkDir(output, job.job([f.path for f in resolve_inputs(job.input)])).begin()
    for first, stop in ((0, 8), (8, 11)):
        done = single_process_output.slice(first, stop - first)
        work.commit(done.append_column("_row", pa.array(range(first, stop), pa.int64())))
    killed: list[int] = []

    def kill_a_busy_replica_after_a_new_part() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if len(work.parts()) > 2:
                pids = busy_replica_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)  # a crash mid-chunk, as the OOM killer would do it
                    killed.append(pids[0])
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_busy_replica_after_a_new_part, daemon=True)
    killer.start()
    # 7 chunks of 8 rows left, one of them partly done: the kill lands with chunks in flight and still to come.
    summary = run(job)
    killer.join(timeout=5)

    assert killed, "no replica was killed while running a chunk: the test proved nothing"
    table = pq.read_table(output)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == ROWS
    assert table.to_pylist() == single_process_output.to_pylist()
    assert summary.written == ROWS
    assert summary.generated == ROWS - 11 - 1  # resumed rows are not generated again (nor the recorded bad row 17)


def test_a_chunk_and_its_part_survive_the_trip_to_a_replica_and_back(bundle, tmp_path):
    """No engine, no Ray: what the driver sends (a planned chunk: input rows + token ids) and what comes back."""
    from transformers import AutoTokenizer

    from uld_vllm.batch.config import BatchConfig
    from uld_vllm.batch.plan import Chunk, plan_input, resolve_inputs
    from uld_vllm.batch.ray_pool import chunk_item, from_ipc, to_ipc

    messages = [[{"role": "user", "content": f"hi {i}"}] for i in range(5)]
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": messages, "k": [[i, i] for i in range(5)]}), path)
    config = BatchConfig(input=str(path), output="unused", batch_size=2, max_model_len=64)
    plan = plan_input(config, AutoTokenizer.from_pretrained(bundle), resolve_inputs(str(path)))
    for chunk in plan.chunks:
        item = chunk_item(chunk)
        back = Chunk(item["first_row"], item["num_rows"], from_ipc(item["rows"]))
        assert back.rows.equals(chunk.rows) and (back.first_row, back.num_rows) == (chunk.first_row, chunk.num_rows)
    part = pa.table({"generated_token_ids": [[[1, 2], [3]], None], "messages": messages[:2], "_row": [0, 1]})
    assert from_ipc(to_ipc(part)).equals(part)
