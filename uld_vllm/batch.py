"""uld-batch: prompts from parquet in, ULD generations to parquet out; resumable, loss-free, on one machine or Ray.

Flow: check the whole input (ids, prompts, lengths) -> generate chunk by chunk, each chunk committed atomically as
a part file in a work directory beside the output -> merge the parts into OUT atomically. A killed run resumes from
its parts: every input row appears in OUT exactly once, and rows already committed are never recomputed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from uld_vllm.engine import DTYPE_ENV, DTYPES, quiet_vllm
from uld_vllm.errors import UldError

OUTPUT_COLUMNS = (
    "id",
    "prompt",
    "generated_text",
    "generated_token_ids",
    "num_prompt_tokens",
    "num_generated_tokens",
    "finish_reason",
)
ROW = "_row"  # global input row index, kept in part files only: orders the final output and marks rows done
# vLLM arguments that change speed or memory but never the tokens: a resumed job may change them.
SPEED_ONLY_ENGINE_ARGS = frozenset(
    {
        "enforce_eager",
        "kv_cache_memory_bytes",
        "gpu_memory_utilization",
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_prefix_caching",
        "enable_chunked_prefill",
        "compilation_config",
    }
)
SAMPLING_COLUMNS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "max_tokens": int, "seed": int}


class BatchError(UldError):
    """Bad input or options; the message is one line naming the problem."""


@dataclass
class BatchConfig:
    """Everything a uld-batch job depends on; its `job` record guards resume against a changed job."""

    input: str  # parquet file, directory of parquet files, or glob
    output: str  # parquet file to write (atomically, at the end)
    model: str | None = None  # ULD bundle directory (None: the embedded default bundle)
    prompt_column: str = "prompt"  # text prompts; a `messages` column of chat turns is used when this one is absent
    id_column: str = "id"  # unique row ids; the global row number when the column is absent
    max_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    seed: int | None = None  # row i samples with seed + i: results do not depend on batching or resume
    n: int = 1  # samples per prompt; with n > 1 the generated_* columns hold lists
    weight: float | None = None  # ULD weight override (bundle's when None)
    filter: float | None = None  # relative-top filter override (bundle's when None)
    batch_size: int = 512  # rows per committed part: the unit of memory and of work lost to a kill
    max_model_len: int | None = None  # None: the model's own context (max_position_embeddings), at most 8192
    on_bad_row: Literal["fail", "skip", "record"] = "fail"
    dtype: str | None = None  # engine dtype; None: $ULD_DTYPE, else uld_vllm.engine.default_dtype() (by CPU flags)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # passed to vllm.LLM as is
    ray: bool = False
    address: str | None = None  # Ray cluster address (default: start or join a local one)
    num_replicas: int = 1  # engine replicas with --ray

    def job(self, files: list[Path]) -> dict[str, Any]:
        """Everything that changes the output rows (JSON-able); call on a config whose dtype is resolved (`run`)."""
        job = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("output", "batch_size", "ray", "address", "num_replicas", "engine_kwargs")
        }
        job["engine_kwargs"] = {k: v for k, v in self.engine_kwargs.items() if k not in SPEED_ONLY_ENGINE_ARGS}
        job["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        return json.loads(json.dumps(job, sort_keys=True, default=str))


@dataclass
class BatchSummary:
    rows: int  # input rows
    written: int  # rows in the output
    generated: int  # rows generated in this run (the rest were resumed or bad)
    bad: int  # rows that failed the input checks (skipped or recorded)
    prompt_tokens: int
    output_tokens: int
    seconds: float  # the whole job: checks, engine start, generation, merge
    generation_seconds: float = 0.0  # engine steps only: what tok/s is measured over

    def line(self) -> str:
        rate = self.output_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0
        return (
            f"uld-batch: {self.written}/{self.rows} rows written ({self.generated} generated now, {self.rows - self.generated - self.bad} resumed, "
            f"{self.bad} bad), {self.output_tokens} output tokens, {self.seconds:.1f} s in all, {rate:.1f} tok/s generating"
        )


# -------------------------------------------------------------------------------------------------------------- input


def resolve_inputs(spec: str) -> list[Path]:
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
    for file in files:
        try:
            pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as e:
            raise BatchError(f"input {file} is not a parquet file ({str(e).splitlines()[0]})") from None
    return files


@dataclass
class InputPlan:
    files: list[Path]
    schema: pa.Schema
    prompt_column: str  # the text column, or "messages"
    chat: bool  # prompts are chat turns rendered with the tokenizer's chat template
    has_ids: bool
    rows: int
    bad: dict[int, str]  # row -> why it cannot be generated


def _check_schema(files: list[Path], config: BatchConfig) -> tuple[pa.Schema, str, bool]:
    schema = pq.read_schema(files[0])
    for file in files[1:]:
        other = pq.read_schema(file)
        if other.names != schema.names:
            raise BatchError(
                f"input files have different columns: {files[0].name} {schema.names} vs {file.name} {other.names}"
            )
    if config.prompt_column in schema.names:
        column, chat = config.prompt_column, False
        if not pa.types.is_string(schema.field(column).type) and not pa.types.is_large_string(
            schema.field(column).type
        ):
            raise BatchError(f"prompt column {column!r} must hold strings, found {schema.field(column).type}")
    elif "messages" in schema.names:
        column, chat = "messages", True
        kind = schema.field(column).type
        if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_struct(kind.value_type):
            raise BatchError(f"messages column must hold lists of {{role, content}} structs, found {kind}")
    else:
        raise BatchError(
            f"input has no prompt column {config.prompt_column!r} (and no 'messages' column); columns: {schema.names}"
        )
    clashes = [c for c in schema.names if c in OUTPUT_COLUMNS + ("error",) and c not in (config.id_column, column)]
    if clashes:
        raise BatchError(f"input columns {clashes} clash with uld-batch output columns; rename them")
    return schema, column, chat


def _batches(files: list[Path], size: int, columns: list[str] | None = None) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first global row, record batch) over all files in order."""
    row = 0
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=size, columns=columns):
            yield row, batch
            row += batch.num_rows


def _render(tokenizer, value: Any, chat: bool) -> tuple[str | None, str | None]:
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
) -> tuple[list[list[int] | None], list[str | None], list[str | None]]:
    """Token ids, rendered text and error per row. Chat renders already hold the BOS token: no special tokens added."""
    texts, errors = zip(*(_render(tokenizer, v, chat) for v in values), strict=True) if values else ((), ())
    ids: list[list[int] | None] = []
    errors = list(errors)
    for i, text in enumerate(texts):
        if text is None:
            ids.append(None)
            continue
        tokens = tokenizer(text, add_special_tokens=not chat).input_ids
        if len(tokens) > max_prompt_len:
            errors[i] = f"prompt has {len(tokens)} tokens, over the limit of {max_prompt_len} (max-model-len minus 1)"
            tokens = None
        ids.append(tokens)
    return ids, list(texts), errors


def plan_input(config: BatchConfig, tokenizer) -> InputPlan:
    """One pass over the id and prompt columns: duplicate ids fail the job; bad prompts follow --on-bad-row."""
    from tqdm import tqdm

    files = resolve_inputs(config.input)
    schema, column, chat = _check_schema(files, config)
    has_ids = config.id_column in schema.names
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if total == 0:
        raise BatchError(f"input {config.input} holds no rows")
    seen: dict[Any, int] = {}
    bad: dict[int, str] = {}
    columns = [column] + ([config.id_column] if has_ids else []) + [c for c in SAMPLING_COLUMNS if c in schema.names]
    with tqdm(total=total, desc="checking input", unit="row", disable=None) as bar:
        for first, batch in _batches(files, 4096, columns):
            if has_ids:
                for offset, key in enumerate(batch.column(config.id_column).to_pylist()):
                    if key is None:
                        raise BatchError(f"id column {config.id_column!r} has a null at row {first + offset}")
                    if key in seen:
                        raise BatchError(
                            f"duplicate id {key!r} in column {config.id_column!r} (rows {seen[key]} and {first + offset})"
                        )
                    seen[key] = first + offset
            _, _, errors = tokenize_prompts(tokenizer, batch.column(column).to_pylist(), chat, config.max_model_len - 1)
            bad.update({first + i: e for i, e in enumerate(errors) if e is not None})
            bad.update({row: why for row, why in check_overrides(config, first, batch).items() if row not in bad})
            bar.update(batch.num_rows)
    if bad and config.on_bad_row == "fail":
        row, why = min(bad.items())
        raise BatchError(
            f"{len(bad)} bad rows, first at row {row}: {why} (use --on-bad-row skip or record to continue)"
        )
    return InputPlan(files, schema, column, chat, has_ids, total, bad)


# --------------------------------------------------------------------------------------------------------- work dir


class WorkDir:
    """Committed part files beside the output; what survives a kill."""

    def __init__(self, output: Path, job: dict[str, Any]) -> None:
        self.path = output.parent / f".{output.name}.uld-parts"
        record = self.path / "job.json"
        if record.exists() and self.parts():
            recorded = json.loads(record.read_text()).get("job", {})
            changed = sorted(k for k in set(recorded) | set(job) if recorded.get(k) != job.get(k))
            if changed:
                raise BatchError(
                    f"{self.path} holds parts of a job with other {', '.join(changed)} (input or options changed); "
                    "rerun with the same options to resume, or delete it to start over"
                )
        # No committed part yet (a first run, or one that failed before its first part): nothing to protect.
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(record, json.dumps({"job": job}))

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
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        _fsync(tmp)
        os.replace(tmp, path)
        return path

    def merge_into(self, output: Path) -> int:
        """Write every committed row to output in input order, atomically; returns the row count."""
        parts = sorted(self.parts(), key=lambda p: pq.read_table(p, columns=[ROW]).column(ROW)[0].as_py())
        tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
        rows = 0
        seen: set[int] = set()
        writer = None
        try:
            for part in parts:
                table = pq.read_table(part)
                row_ids = table.column(ROW).to_pylist()
                if seen.intersection(row_ids):
                    # A worker that died after committing its part has its batch retried elsewhere: both parts hold
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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------- generation


def sampling_params_for(config: BatchConfig, row: int, overrides: dict[str, Any]):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMError

    values = {
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "min_p": config.min_p,
        "max_tokens": config.max_tokens,
        "seed": None if config.seed is None else config.seed + row,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if config.n > 1 and values["temperature"] == 0.0:
        raise BatchError(f"row {row}: temperature 0 with --n {config.n} (greedy decoding would repeat one completion)")
    if values["top_k"] == 0:
        values["top_k"] = -1
    try:
        return SamplingParams(n=config.n, **values)
    except (ValueError, TypeError, VLLMError) as e:  # vLLM's own validation of one row's values
        raise BatchError(f"row {row}: {str(e).strip().splitlines()[0]}") from None


def row_overrides(batch: pa.RecordBatch, index: int) -> dict[str, Any]:
    """Per-row sampling values from the input's optional SAMPLING_COLUMNS (None: the job's value)."""
    return {k: batch.column(k)[index].as_py() for k in SAMPLING_COLUMNS if k in batch.schema.names}


def check_overrides(config: BatchConfig, first_row: int, batch: pa.RecordBatch) -> dict[int, str]:
    """Rows whose sampling values vLLM (or uld-batch) refuses, with why: found in the input plan, before any engine."""
    if not any(k in batch.schema.names for k in SAMPLING_COLUMNS):
        return {}
    bad = {}
    for i in range(batch.num_rows):
        try:
            sampling_params_for(config, first_row + i, row_overrides(batch, i))
        except BatchError as e:
            bad[first_row + i] = str(e).partition(": ")[2]
    return bad


def generate_table(
    llm, tokenizer, config: BatchConfig, plan: InputPlan, first_row: int, batch: pa.RecordBatch, skip: set[int]
) -> pa.Table | None:
    """Generate the rows of one input batch not in `skip`; returns the part table (None when nothing to write)."""
    rows = [first_row + i for i in range(batch.num_rows)]
    keep = [
        i for i, row in enumerate(rows) if row not in skip and not (row in plan.bad and config.on_bad_row == "skip")
    ]
    if not keep:
        return None
    batch = batch.take(pa.array(keep, type=pa.int64()))
    rows = [rows[i] for i in keep]
    values = batch.column(plan.prompt_column).to_pylist()
    token_ids, texts, errors = tokenize_prompts(tokenizer, values, plan.chat, config.max_model_len - 1)
    overrides = [row_overrides(batch, i) for i in range(batch.num_rows)]
    errors = [e or plan.bad.get(row) for e, row in zip(errors, rows, strict=True)]  # bad sampling values too
    todo = [i for i, e in enumerate(errors) if e is None]
    outputs = {}
    if todo:
        results = llm.generate(
            [{"prompt_token_ids": token_ids[i]} for i in todo],
            [sampling_params_for(config, rows[i], overrides[i]) for i in todo],
            use_tqdm=False,
        )
        outputs = dict(zip(todo, results, strict=True))

    def per_sample(i: int, value: Callable[[Any], Any]) -> Any:
        """value of each completion of row i: a scalar for n = 1, a list for n > 1, None for an ungenerated row."""
        if i not in outputs:
            return None
        values = [value(completion) for completion in outputs[i].outputs]
        return values[0] if config.n == 1 else values

    indices = range(len(rows))
    columns: dict[str, Any] = {
        "id": batch.column(config.id_column) if plan.has_ids else pa.array(rows, type=pa.int64()),
        "prompt": pa.array(texts, type=pa.string()),
        "generated_text": [per_sample(i, lambda c: c.text) for i in indices],
        "generated_token_ids": [per_sample(i, lambda c: list(c.token_ids)) for i in indices],
        "num_prompt_tokens": pa.array([len(t) if t is not None else None for t in token_ids], type=pa.int32()),
        "num_generated_tokens": [per_sample(i, lambda c: len(c.token_ids)) for i in indices],
        "finish_reason": [per_sample(i, lambda c: c.finish_reason) for i in indices],
    }
    columns |= {name: batch.column(name) for name in _passthrough(batch.schema.names, config, plan)}
    table = pa.table(columns).cast(_output_schema(batch.schema, config, plan))
    if config.on_bad_row == "record":
        table = table.append_column("error", pa.array(errors, type=pa.string()))
    return table.append_column(ROW, pa.array(rows, type=pa.int64()))


def _passthrough(names: list[str], config: BatchConfig, plan: InputPlan) -> list[str]:
    """Input columns copied to the output: all but the id and the text prompt, which are output as id and prompt
    (chat `messages` stay: the prompt column then holds their rendering)."""
    dropped = {config.id_column} | (set() if plan.chat else {plan.prompt_column})
    return [name for name in names if name not in dropped]


def _output_schema(input_schema: pa.Schema, config: BatchConfig, plan: InputPlan) -> pa.Schema:
    def maybe_list(kind: pa.DataType) -> pa.DataType:
        return kind if config.n == 1 else pa.list_(kind)

    fields = [
        pa.field("id", input_schema.field(config.id_column).type if plan.has_ids else pa.int64()),
        pa.field("prompt", pa.string()),
        pa.field("generated_text", maybe_list(pa.string())),
        pa.field("generated_token_ids", maybe_list(pa.list_(pa.int32()))),
        pa.field("num_prompt_tokens", pa.int32()),
        pa.field("num_generated_tokens", maybe_list(pa.int32())),
        pa.field("finish_reason", maybe_list(pa.string())),
    ]
    return pa.schema(fields + [input_schema.field(name) for name in _passthrough(input_schema.names, config, plan)])


# -------------------------------------------------------------------------------------------------------------- run


DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_model"


def default_bundle() -> Path:
    """The embedded mini-TOFU bundle (a target and a ULD assistant that forgets the forget10 authors)."""
    if not (DEFAULT_BUNDLE / "config.json").is_file():
        raise BatchError(
            f"no --model given and the embedded default bundle is missing at {DEFAULT_BUNDLE} "
            "(rebuild it: make default-model); pass --model BUNDLE_DIR"
        )
    return DEFAULT_BUNDLE


def check_output(output: Path) -> None:
    if output.exists() and output.is_dir():
        raise BatchError(f"output {output} is a directory; give a .parquet file path")
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise BatchError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise BatchError(f"output directory is not writable: {parent}")


def load_tokenizer(bundle: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bundle)


def engine_kwargs(config: BatchConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"max_model_len": config.max_model_len, "seed": 0 if config.seed is None else config.seed}
    if config.dtype:
        kwargs["dtype"] = config.dtype
    return kwargs | config.engine_kwargs


DEFAULT_CONTEXT_CAP = 8192  # KV-cache memory: a default context never asks for more than this per sequence


def context_length(model_config: dict[str, Any], config: BatchConfig) -> int:
    """--max-model-len, checked against the model's own context; by default that context (capped)."""
    context = model_config.get("max_position_embeddings")
    if config.max_model_len is None:
        return min(context or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP)
    if context is not None and config.max_model_len > context:
        raise BatchError(
            f"--max-model-len {config.max_model_len} exceeds the model's context of {context} tokens "
            "(max_position_embeddings); pass --max-model-len <= that or leave it out"
        )
    return config.max_model_len


def run(config: BatchConfig | None = None, **options: Any) -> BatchSummary:
    """Python API mirroring the CLI: run(input=..., output=..., model=..., ...) or run(BatchConfig(...))."""
    config = config or BatchConfig(**options)
    started = time.monotonic()
    output = Path(config.output)
    check_output(output)
    if config.n < 1 or config.max_tokens < 1 or config.batch_size < 1 or (config.max_model_len or 2) < 2:
        raise BatchError("--n, --max-tokens, --batch-size must be >= 1 and --max-model-len >= 2")
    if config.n > 1 and config.temperature == 0.0:
        raise BatchError("--n > 1 needs sampling (--temperature > 0): greedy decoding would repeat one completion")
    bundle = Path(config.model) if config.model else default_bundle()
    from uld_vllm.engine import preflight, resolve_dtype

    config = replace(config, dtype=resolve_dtype(config.dtype))  # the resume record holds the dtype that ran

    config = replace(
        config, max_model_len=context_length(preflight(bundle, config.weight, config.filter).config, config)
    )
    tokenizer = load_tokenizer(bundle)
    plan = plan_input(config, tokenizer)
    work = WorkDir(output, config.job(plan.files))
    if config.ray:
        from uld_vllm.ray_batch import generate_with_ray

        ray_started = time.monotonic()  # replicas start inside: their start-up counts as generation time here
        generated, prompt_tokens, output_tokens = generate_with_ray(config, plan, work, bundle)
        generation_seconds = time.monotonic() - ray_started
    else:
        generated, prompt_tokens, output_tokens, generation_seconds = _generate_locally(
            config, plan, work, bundle, tokenizer
        )
    written = work.merge_into(output)
    work.remove()
    bad = len(plan.bad)
    expected = plan.rows - (bad if config.on_bad_row == "skip" else 0)
    if written != expected:
        raise BatchError(f"internal error: wrote {written} rows, expected {expected}; parts kept for inspection")
    return BatchSummary(
        plan.rows, written, generated, bad, prompt_tokens, output_tokens, time.monotonic() - started, generation_seconds
    )


def _generate_locally(
    config: BatchConfig, plan: InputPlan, work: WorkDir, bundle: Path, tokenizer
) -> tuple[int, int, int]:
    from tqdm import tqdm

    from uld_vllm.engine import make_llm, shutdown_llm

    done = work.done_rows()
    if len(done) == plan.rows - (len(plan.bad) if config.on_bad_row == "skip" else 0):
        return 0, 0, 0, 0.0
    llm = make_llm(bundle, config.weight, config.filter, check=False, **engine_kwargs(config))
    generated = prompt_tokens = output_tokens = 0
    started = time.monotonic()
    try:
        with tqdm(total=plan.rows, initial=len(done), desc="uld-batch", unit="row", disable=None) as bar:
            for first, batch in _batches(plan.files, config.batch_size):
                table = generate_table(llm, tokenizer, config, plan, first, batch, done)
                if table is not None:
                    work.commit(table)
                    rows, prompt, out = part_stats(table)
                    generated, prompt_tokens, output_tokens = (
                        generated + rows,
                        prompt_tokens + prompt,
                        output_tokens + out,
                    )
                bar.update(sum(1 for r in range(first, first + batch.num_rows) if r not in done))
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.set_postfix(tok_s=f"{output_tokens / elapsed:.1f}", rows_s=f"{generated / elapsed:.2f}")
    finally:
        shutdown_llm(llm)
    return generated, prompt_tokens, output_tokens, time.monotonic() - started


def part_stats(table: pa.Table) -> tuple[int, int, int]:
    """(rows generated, prompt tokens, output tokens) of a part; recorded bad rows count for nothing."""
    fresh = table.filter(pc.is_valid(table.column("num_prompt_tokens")))
    output = fresh.column("num_generated_tokens")
    if pa.types.is_list(output.type):
        output = pc.list_flatten(output)
    return fresh.num_rows, pc.sum(fresh.column("num_prompt_tokens")).as_py() or 0, pc.sum(output).as_py() or 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uld-batch", description="ULD generation over parquet prompts (vLLM engine).")
    p.add_argument("--input", required=True, help="parquet file, directory of parquet files, or glob")
    p.add_argument("--output", required=True, help="output parquet file (written atomically when the job is done)")
    p.add_argument("--model", default=None, help="ULD bundle directory (default: the embedded mini-TOFU bundle)")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--id-column", default="id")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n", type=int, default=1)
    p.add_argument("--weight", type=float, default=None, help="ULD weight override")
    p.add_argument("--filter", type=float, default=None, help="relative-top filter override")
    p.add_argument("--batch-size", type=int, default=512, help="rows per committed part")
    p.add_argument(
        "--max-model-len", type=int, default=None, help="context length (default: the model's own, at most 8192)"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help=f"engine dtype (default: ${DTYPE_ENV}, else bfloat16 on CPUs with avx512_bf16/amx, float32 on other CPUs, "
        "the checkpoint's on CUDA)",
    )
    p.add_argument("--on-bad-row", choices=["fail", "skip", "record"], default="fail")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=JSON", help="extra vllm.LLM argument")
    p.add_argument("--ray", action="store_true", help="shard across Ray engine replicas")
    p.add_argument("--address", default=None, help="Ray cluster address")
    p.add_argument("--num-replicas", type=int, default=1)
    p.add_argument("--show", type=int, default=0, metavar="N", help="print the first N output rows when done")
    p.add_argument("--verbose", action="store_true", help="show vLLM's own logs")
    return p


def _engine_args(pairs: list[str]) -> dict[str, Any]:
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BatchError(f"--engine-arg {pair!r} is not KEY=VALUE")
        try:
            parsed[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.replace("-", "_")] = value
    return parsed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_vllm(args.verbose)
    try:
        options = {k: v for k, v in vars(args).items() if k not in ("engine_arg", "show", "verbose")}
        summary = run(BatchConfig(**options, engine_kwargs=_engine_args(args.engine_arg)))
    except UldError as e:
        print(f"uld-batch: error: {e}", file=sys.stderr)
        return 2
    if args.show > 0:
        show_rows(Path(args.output), args.show)
    print(summary.line())
    return 0


def show_rows(output: Path, count: int) -> None:
    rows = pq.ParquetFile(output).iter_batches(batch_size=count, columns=["id", "prompt", "generated_text"])
    for row in next(rows).to_pylist():
        print(f"[{row['id']}] {row['prompt']!r}\n    -> {row['generated_text']!r}")


if __name__ == "__main__":
    sys.exit(main())
