"""Rows of a data file (parquet or JSON lines) as dicts, with one error class for every data problem."""

from __future__ import annotations

import json
from pathlib import Path

from uld_vllm.errors import UldError


class DataError(UldError):
    """A data file is missing, unreadable or malformed; the message names the file and the row."""


def read_file(path: Path, what: str) -> list[dict]:
    """Rows of a parquet or JSON-lines file as dicts (`what` names the file in errors)."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a corrupt file; the user needs one line
            raise DataError(f"{what} {path} is not a readable parquet file ({type(e).__name__})") from None
    if path.suffix in (".json", ".jsonl"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{what} {path} line {number} is not JSON ({e.msg}); expected JSON lines") from None
            if not isinstance(row, dict):
                raise DataError(f"{what} {path} line {number} is not a JSON object")
            rows.append(row)
        return rows
    raise DataError(f"{what} {path} has unknown extension {path.suffix!r} (use .parquet, .json or .jsonl)")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Rows as JSON lines in one fixed serialisation (a file's hash is a cache key), rewritten only when it changes."""
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_bytes() != text:
        path.write_bytes(text)
    return path
