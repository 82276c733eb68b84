"""What a uld-batch job is: its options, what changes its output (the resume record), and its engine arguments."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

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
ERROR_COLUMN = "error"  # with --on-bad-row record: why a row was not generated (null for generated rows)
ROW = "_row"  # global input row index, kept in part files only: orders the final output and marks rows done
# Optional input columns that override the job's sampling values for their row (null: the job's value).
SAMPLING_COLUMNS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "max_tokens": int, "seed": int}
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
DEFAULT_CONTEXT_CAP = 8192  # KV-cache memory: a default context never asks for more than this per sequence
# The mini-TOFU bundle (a small Llama trained from scratch, uld-minitofu default-model) and its example prompts: the
# fast fixtures of the tests, and a model to try uld-batch on in seconds.
MINI_BUNDLE = Path(__file__).resolve().parent.parent / "mini-tofu"
MINI_PROMPTS = MINI_BUNDLE / "prompts.parquet"


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
    engine_args: dict[str, Any] = field(default_factory=dict)  # the user's extra vllm.LLM arguments (--engine-arg)
    ray: bool = False
    address: str | None = None  # Ray cluster address (default: start or join a local one)
    num_replicas: int = 1  # engine replicas with --ray

    def job(self, files: list[Path]) -> dict[str, Any]:
        """Everything that changes the output rows (JSON-able); call on a config whose dtype is resolved (`run`)."""
        job = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("output", "batch_size", "ray", "address", "num_replicas", "engine_args")
        }
        job["engine_args"] = {k: v for k, v in self.engine_args.items() if k not in SPEED_ONLY_ENGINE_ARGS}
        job["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        return json.loads(json.dumps(job, sort_keys=True, default=str))

    @property
    def max_prompt_len(self) -> int:
        """The longest prompt that leaves room for one generated token; set once max_model_len is resolved."""
        if self.max_model_len is None:
            raise BatchError("internal error: max_model_len is not resolved yet (context_length gives it)")
        return self.max_model_len - 1


def check_options(config: BatchConfig) -> None:
    if config.n < 1 or config.max_tokens < 1 or config.batch_size < 1 or (config.max_model_len or 2) < 2:
        raise BatchError("--n, --max-tokens, --batch-size must be >= 1 and --max-model-len >= 2")
    if config.num_replicas < 1:
        raise BatchError("--num-replicas must be >= 1")
    check_n_sampling(config.n, config.temperature)


def check_n_sampling(n: int, temperature: float) -> None:
    """The job's values, and each row's with its sampling columns (uld_vllm.batch.sampling)."""
    if n > 1 and temperature == 0.0:
        raise BatchError(f"n = {n} needs sampling (temperature > 0): greedy decoding would repeat one completion")


def default_bundle() -> Path:
    """The real-model default: the SmolLM2 TOFU study's ULD bundle, assembled from the committed adapters (once)."""
    from uld_vllm.smollm2_tofu import assemble

    return assemble(("uld",))["uld"]


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


def llm_kwargs(config: BatchConfig) -> dict[str, Any]:
    """The `make_llm` arguments of this job: context, seed, dtype, then the user's --engine-arg values."""
    kwargs: dict[str, Any] = {"max_model_len": config.max_model_len, "seed": 0 if config.seed is None else config.seed}
    if config.dtype:
        kwargs["dtype"] = config.dtype
    return kwargs | config.engine_args
