"""The work directory: a changed job is refused by name, but only when it holds committed parts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from uld_vllm.batch.config import ROW, BatchError
from uld_vllm.batch.workdir import WorkDir


def test_a_changed_job_is_refused_by_name_only_when_parts_were_committed(tmp_path):
    output = tmp_path / "out.parquet"
    job = {"dtype": "float32", "temperature": 0.0, "files": [["in.parquet", 10, 1]]}
    WorkDir(output, job).begin()
    WorkDir(output, job | {"dtype": "bfloat16"}).begin()  # nothing committed yet: a corrected rerun starts over
    work = WorkDir(output, job).begin()
    work.commit(pa.table({ROW: pa.array([0], pa.int64())}))
    WorkDir(output, job)  # the same job resumes
    with pytest.raises(BatchError, match=r"other dtype, temperature \(input or options changed\)"):
        WorkDir(output, job | {"dtype": "bfloat16", "temperature": 1.0})
    with pytest.raises(BatchError, match="other engine_args"):
        WorkDir(output, job | {"engine_args": {"quantization": "fp8"}})


def test_merge_writes_each_row_once_in_input_order_even_from_duplicate_parts(tmp_path):
    output = tmp_path / "out.parquet"
    work = WorkDir(output, {}).begin()
    for rows in ([4, 5], [0, 1, 2], [2, 3], [4, 5]):  # a retried chunk committed twice, overlapping parts
        work.commit(pa.table({"x": [f"v{r}" for r in rows], ROW: pa.array(rows, pa.int64())}))
    assert work.merge_into(output) == 6
    assert pq.read_table(output).column("x").to_pylist() == [f"v{r}" for r in range(6)]
