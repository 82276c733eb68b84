"""The input plan: every input row read once, every prompt rendered and tokenized once, before any engine starts.

`plan_input` walks the input in chunks of --batch-size rows (within each file) and keeps, per chunk, the rows still
to generate with their prompt token ids: the drivers never read the input or call the tokenizer again. Everything
that can be wrong with a row (null or empty prompt, a failing chat template, a prompt over the context, a sampling
value vLLM refuses, a duplicate or null id) is found here; with --on-bad-row fail the job stops before an engine
starts. Memory: the pending rows (all their columns) plus 4 bytes per prompt token.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from uld_vllm.batch.config import ERROR_COLUMN, OUTPUT_COLUMNS, ROW, BatchConfig, BatchError
from uld_vllm.batch.sampling import override_params

PROMPT_TEXT = "_prompt"  # the rendered prompt (chat template applied)
PROMPT_IDS = "_prompt_ids"  # its token ids (null for a bad row)
ROW_ERROR = "_error"  # why the row cannot be generated (null for a good row)
INTERNAL_COLUMNS = (ROW, PROMPT_TEXT, PROMPT_IDS, ROW_ERROR)


@dataclass(frozen=True)
class InputSpec:
    """What the output schema depends on (small: travels to every Ray replica)."""

    schema: pa.Schema  # the input files' schema
    prompt_column: str  # the text column, or "messages"
    chat: bool  # prompts are chat turns rendered with the tokenizer's chat template
    has_ids: bool  # the id column exists (else ids are global row numbers)


@dataclass(frozen=True)
class InputFile:
    """An input parquet file, opened once: its footer gives the schema and the row count, and its rows are read
    through the same handle."""

    path: Path
    parquet: pq.ParquetFile

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Chunk:
    """One part's worth of input: rows [first_row, first_row + num_rows), of which `rows` holds those still to
    generate (done rows of a resumed job and rows skipped as bad are left out), input columns + INTERNAL_COLUMNS.
    `params`: each of those rows' SamplingParams where the input has sampling columns (the plan built them to check
    the values; generate uses them), else None (generate builds each row's from the job's values)."""

    first_row: int
    num_rows: int
    rows: pa.Table
    params: list | None = None

    @property
    def pending(self) -> int:
        return self.rows.num_rows


@dataclass
class InputPlan:
    spec: InputSpec
    rows: int  # input rows in all files
    bad: dict[int, str]  # global row -> why it cannot be generated
    chunks: list[Chunk]  # chunks with a row still to generate, in input order


def resolve_inputs(spec: str) -> list[InputFile]:
    """The input's parquet files, in sorted order, each opened once: a file, a directory (recursively) or a glob."""
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise BatchError(f"no .parquet files in input directory {spec}")
    elif path.is_file():
        files = [path]
    elif any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise BatchError(f"input glob {spec!r} matches no files")
    else:
        raise BatchError(f"input not found: {spec}")
    opened = []
    for file in files:
        try:
            opened.append(InputFile(file, pq.ParquetFile(file)))
        except (pa.ArrowInvalid, OSError) as e:
            raise BatchError(f"input {file} is not a parquet file ({str(e).splitlines()[0]})") from None
    return opened


def check_schema(files: list[InputFile], config: BatchConfig) -> InputSpec:
    """One schema across files, a prompt column of strings (or `messages` of chat turns), no clash with our columns."""
    schema = files[0].parquet.schema_arrow
    for file in files[1:]:
        other = file.parquet.schema_arrow
        if other.names != schema.names:
            raise BatchError(
                f"input files have different columns: {files[0].name} {schema.names} vs {file.name} {other.names}"
            )
    if config.prompt_column in schema.names:
        column, chat = config.prompt_column, False
        kind = schema.field(column).type
        if not pa.types.is_string(kind) and not pa.types.is_large_string(kind):
            raise BatchError(f"prompt column {column!r} must hold strings, found {kind}")
    elif "messages" in schema.names:
        column, chat = "messages", True
        kind = schema.field(column).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
            raise BatchError(f"messages column must hold lists of {{role, content}} structs, found {kind}")
    else:
        raise BatchError(
            f"input has no prompt column {config.prompt_column!r} (and no 'messages' column); columns: {schema.names}"
        )
    ours = OUTPUT_COLUMNS + (ERROR_COLUMN,) + INTERNAL_COLUMNS
    clashes = [c for c in schema.names if c in ours and c not in (config.id_column, column)]
    if clashes:
        raise BatchError(f"input columns {clashes} clash with uld-batch output columns; rename them")
    return InputSpec(schema, column, chat, config.id_column in schema.names)


def read_chunks(files: list[InputFile], size: int) -> Iterator[tuple[int, pa.Table]]:
    """(first global row, rows) over all files in order, `size` rows at a time within each file: the one reader."""
    row = 0
    for file in files:
        for batch in file.parquet.iter_batches(batch_size=size):
            yield row, pa.Table.from_batches([batch])
            row += batch.num_rows


def render(tokenizer, value: Any, chat: bool) -> tuple[str | None, str | None]:
    """(prompt text, None) or (None, why the row is bad)."""
    if value is None:
        return None, "null prompt"
    if chat:
        if not value:
            return None, "empty messages"
        try:
            return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True), None
        except Exception as e:  # noqa: BLE001 - a template error is this row's problem, reported per row
            return None, f"chat template failed: {str(e).splitlines()[0]}"
    if not value.strip():
        return None, "empty prompt"
    return value, None


def tokenize_prompts(
    tokenizer, values: list[Any], chat: bool, max_prompt_len: int
) -> tuple[list[str | None], list[list[int] | None], list[str | None]]:
    """Rendered text, token ids and error per row, with one batched tokenizer call. Chat renders already hold the
    BOS token: no special tokens are added to them."""
    rendered = [render(tokenizer, value, chat) for value in values]
    texts = [text for text, _ in rendered]
    errors = [error for _, error in rendered]
    good = [i for i, text in enumerate(texts) if text is not None]
    ids: list[list[int] | None] = [None] * len(values)
    if good:
        encoded = tokenizer([texts[i] for i in good], add_special_tokens=not chat).input_ids
        for i, tokens in zip(good, encoded, strict=True):
            if len(tokens) > max_prompt_len:
                errors[i] = (
                    f"prompt has {len(tokens)} tokens, over the limit of {max_prompt_len} (max-model-len minus 1)"
                )
            else:
                ids[i] = tokens
    return texts, ids, errors


def plan_input(config: BatchConfig, tokenizer, files: list[InputFile], done: set[int] | None = None) -> InputPlan:
    """Read, check and tokenize the whole input once. Duplicate or null ids fail the job; bad rows follow
    --on-bad-row; rows in `done` (committed by an earlier run of this job) are checked but not kept."""
    from tqdm import tqdm

    done = done or set()
    spec = check_schema(files, config)
    total = sum(f.parquet.metadata.num_rows for f in files)
    if total == 0:
        raise BatchError(f"input {config.input} holds no rows")
    seen: dict[Any, int] = {}
    bad: dict[int, str] = {}
    chunks: list[Chunk] = []
    with tqdm(total=total, desc="reading input", unit="row", disable=None) as bar:
        for first, table in read_chunks(files, config.batch_size):
            rows = list(range(first, first + table.num_rows))
            if spec.has_ids:
                for row, key in zip(rows, table.column(config.id_column).to_pylist(), strict=True):
                    if key is None:
                        raise BatchError(f"id column {config.id_column!r} has a null at row {row}")
                    if key in seen:
                        raise BatchError(
                            f"duplicate id {key!r} in column {config.id_column!r} (rows {seen[key]} and {row})"
                        )
                    seen[key] = row
            texts, ids, errors = tokenize_prompts(
                tokenizer, table.column(spec.prompt_column).to_pylist(), spec.chat, config.max_prompt_len
            )
            params, refused = override_params(config, first, table)
            for row, why in refused.items():
                errors[row - first] = errors[row - first] or why
            bad.update({row: e for row, e in zip(rows, errors, strict=True) if e is not None})
            keep = [
                i
                for i, row in enumerate(rows)
                if row not in done and not (errors[i] is not None and config.on_bad_row == "skip")
            ]
            if keep:
                prepared = table.append_column(ROW, pa.array(rows, pa.int64()))
                prepared = prepared.append_column(PROMPT_TEXT, pa.array(texts, pa.string()))
                prepared = prepared.append_column(PROMPT_IDS, pa.array(ids, pa.list_(pa.int32())))
                prepared = prepared.append_column(ROW_ERROR, pa.array(errors, pa.string()))
                kept = None if params is None else [params[i] for i in keep]
                chunks.append(Chunk(first, table.num_rows, prepared.take(pa.array(keep, pa.int64())), kept))
            bar.update(table.num_rows)
    if bad and config.on_bad_row == "fail":
        row, why = min(bad.items())
        raise BatchError(
            f"{len(bad)} bad rows, first at row {row}: {why} (use --on-bad-row skip or record to continue)"
        )
    return InputPlan(spec, total, bad, chunks)
