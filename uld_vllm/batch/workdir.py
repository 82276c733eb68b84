"""The work directory beside the output: committed part files (atomic), what resume reads, the final merge."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from uld_vllm.batch.config import ROW, BatchError
from uld_vllm.staging import staged_file, write_text_atomic


class WorkDir:
    """Committed part files beside the output; what survives a kill.

    Opening one only checks: parts committed by a different job (input or output-changing options) are refused by
    name; a directory holding no committed part (a first run, or one that failed before its first part) never
    blocks. `begin` creates it and records the job.
    """

    def __init__(self, output: Path, job: dict[str, Any]) -> None:
        self.path = output.parent / f".{output.name}.uld-parts"
        self.job = job
        record = self.path / "job.json"
        if record.exists() and self.parts():
            recorded = json.loads(record.read_text()).get("job", {})
            changed = sorted(k for k in set(recorded) | set(job) if recorded.get(k) != job.get(k))
            if changed:
                raise BatchError(
                    f"{self.path} holds parts of a job with other {', '.join(changed)} (input or options changed); "
                    "rerun with the same options to resume, or delete it to start over"
                )

    def begin(self) -> WorkDir:
        self.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path / "job.json", json.dumps({"job": self.job}))
        return self

    def parts(self) -> list[Path]:
        return sorted(self.path.glob("part-*.parquet"))

    def done_rows(self) -> set[int]:
        done: set[int] = set()
        for part in self.parts():
            done.update(pq.read_table(part, columns=[ROW]).column(ROW).to_pylist())
        return done

    def commit(self, table: pa.Table) -> Path:
        first = table.column(ROW)[0].as_py()
        path = self.path / f"part-{first:012d}-{os.getpid()}-{time.monotonic_ns()}.parquet"

        def write(partial: Path) -> None:
            pq.write_table(table, partial)
            _fsync(partial)  # a committed part survives a power cut, not only a kill

        return staged_file(path, write)

    def merge_into(self, output: Path) -> int:
        """Write every committed row to output in input order, atomically; returns the row count."""
        parts = self.parts()  # in input order: a part's name starts with its first row, zero-padded
        tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
        rows = 0
        seen: set[int] = set()
        writer = None
        try:
            for part in parts:
                table = pq.read_table(part)
                row_ids = table.column(ROW).to_pylist()
                if seen.intersection(row_ids):
                    # A worker that died after committing its part has its chunk retried elsewhere: both parts hold
                    # complete results for those rows. Keep the first, so each row is written exactly once.
                    fresh = [r not in seen for r in row_ids]
                    table = table.filter(pa.array(fresh))
                    row_ids = [r for r, f in zip(row_ids, fresh, strict=True) if f]
                seen.update(row_ids)
                table = table.drop_columns([ROW])
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise BatchError("nothing to write: every input row was skipped as bad")
        _fsync(tmp)
        os.replace(tmp, output)
        return rows

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
